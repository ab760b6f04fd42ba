"""ARCHITECTURE.md's layers, read from its table and checked against the source: every module is
in the table, and each imports only the layers its row allows."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "include" / "registry_replication"
ARCHITECTURE = ROOT / "ARCHITECTURE.md"
SECTION = "## Layers and what each may import"


def table() -> tuple[dict[str, str], dict[str, set[str]]]:
    """({module path under the package: layer}, {layer: the layers it may import}) as
    ARCHITECTURE.md's layer table says. A path is a backquoted ``x.py`` (a module) or ``x/``
    naming a folder of the package with no ``__init__.py`` (data files Alembic loads by path)."""
    text = ARCHITECTURE.read_text()
    rows = [
        line
        for line in text[text.index(SECTION) :].split("\n## ", 1)[0].splitlines()
        if line.startswith("| ") and not line.startswith(("| layer ", "|---"))
    ]
    cells = [[cell.strip() for cell in row.strip().strip("|").split("|")] for row in rows]
    layers = [row[0].split()[0] for row in cells]
    modules: dict[str, str] = {}
    allowed: dict[str, set[str]] = {}
    for layer, (_, where, may) in zip(layers, cells):
        allowed[layer] = {word for word in re.findall(r"[A-Za-z_]+", may) if word in layers}
        for path in re.findall(r"`([\w/]+(?:\.py|/))`", where):
            if path.endswith("/") and (
                not (PACKAGE / path).is_dir() or (PACKAGE / path / "__init__.py").exists()
            ):
                continue  # dags/, plugins/, the harness: not modules of the package
            assert path not in modules, f"ARCHITECTURE.md lists {path} twice"
            modules[path] = layer
    return modules, allowed


def package_marker(path: Path) -> bool:
    """An ``__init__.py`` holding only its docstring: the folder's, not a module of its own."""
    body = ast.parse(path.read_text()).body
    return path.name == "__init__.py" and all(
        isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) for node in body
    )


def layer_of(path: Path, modules: dict[str, str]) -> str | None:
    relative = path.relative_to(PACKAGE).as_posix()
    if relative in modules:
        return modules[relative]
    for listed, layer in modules.items():
        if listed.endswith("/") and relative.startswith(listed):
            return layer
    if package_marker(path):
        siblings = {
            layer
            for listed, layer in modules.items()
            if "/" in listed and listed.rsplit("/", 1)[0] == Path(relative).parent.as_posix()
        }
        if len(siblings) == 1:
            return siblings.pop()
    return None


def resolve(dotted: str) -> Path | None:
    """The file of ``registry_replication.a.b``: a module, or a package's ``__init__.py``."""
    parts = dotted.split(".")[1:]
    base = PACKAGE.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def imports(path: Path) -> tuple[set[Path], set[str]]:
    """(the package's files this module imports, every other top-level module it imports)."""
    own: set[Path] = set()
    others: set[str] = set()
    package = ".".join(("registry_replication", *path.relative_to(PACKAGE).parent.parts))
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative: from the module's own package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, module] if module else base)
            # ``from pkg import module`` imports that module; ``from module import name``, the module.
            names = (
                [
                    f"{module}.{alias.name}" if resolve(f"{module}.{alias.name}") else module
                    for alias in node.names
                ]
                if module.startswith("registry_replication")
                else [module]
            )
        else:
            continue
        for name in names:
            if name == "registry_replication" or name.startswith("registry_replication."):
                found = resolve(name)
                assert found is not None, f"{path} imports {name}, which is not in the package"
                own.add(found)
            else:
                others.add(name.split(".")[0])
    return own, others


def sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_the_table_names_every_module_and_nothing_else():
    modules, _ = table()
    missing = [p.relative_to(PACKAGE).as_posix() for p in sources() if layer_of(p, modules) is None]
    assert missing == [], f"modules missing from ARCHITECTURE.md's layer table: {missing}"
    gone = [m for m in modules if not (PACKAGE / m).exists()]
    assert gone == [], f"ARCHITECTURE.md's layer table names modules that do not exist: {gone}"


def test_each_layer_imports_only_what_it_may():
    modules, allowed = table()
    assert allowed["outcomes"] == set(), "outcomes is the ground: it imports nothing"
    cycles = [(a, b) for a, below in allowed.items() for b in below if a in allowed.get(b, ())]
    assert cycles == [], f"layers the table lets import each other: {cycles}"
    offenders = []
    for path in sources():
        layer = layer_of(path, modules)
        if layer is None:
            continue  # the test above names it
        own, others = imports(path)
        name = path.relative_to(PACKAGE).as_posix()
        if "airflow" in others and layer != "airflow":
            offenders.append(f"{name} ({layer}) imports Airflow")
        for target in sorted(own):
            theirs = layer_of(target, modules)
            if theirs != layer and theirs not in allowed[layer]:
                offenders.append(
                    f"{name} ({layer}) imports {target.relative_to(PACKAGE).as_posix()} ({theirs})"
                )
    assert offenders == []


def test_the_harness_is_not_in_the_package():
    assert not (PACKAGE / "local").exists()
    assert sources() and not [p for p in sources() if "replication_harness" in imports(p)[1]]


MAX_MODULE_LINES = 450
MAX_CLASS_LINES = 300


def test_modules_and_classes_stay_small_enough_to_read():
    """A module over 450 lines or a class over 300 has more than one reason to change: split it
    by concern (ARCHITECTURE.md's table says where each part goes)."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = path.read_text()
        where = path.relative_to(PACKAGE)
        if (lines := len(source.splitlines())) > MAX_MODULE_LINES:
            offenders.append(f"{where}: {lines} lines")
        offenders += [
            f"{where}: class {node.name}: {node.end_lineno - node.lineno + 1} lines"
            for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.ClassDef)
            and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES
        ]
    assert offenders == []


def test_test_modules_have_names_of_their_own():
    """pytest imports test modules by their file name (the test folders are not packages): two
    of one name stop the whole suite at collection."""
    seen: dict[str, list[str]] = {}
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        seen.setdefault(path.name, []).append(str(path.relative_to(ROOT)))
    assert {name: paths for name, paths in seen.items() if len(paths) > 1} == {}
