"""ARCHITECTURE.md's layers: what each part of the package may import (read from the source)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "include" / "registry_replication"

TRANSPORT = {"client", "auth", "errors", "reference", "mediatypes", "bandwidth", "secrets", "config"}
ENGINE = {"snapshot", "diff", "plan", "copy", "prune", "leases", "sync", "realtime"}
# What each layer may import from the package (besides itself).
ALLOWED = {
    "outcomes": set(),
    "transport": TRANSPORT,
    "store": {"outcomes"},
    "engine": TRANSPORT | ENGINE | {"store", "outcomes"},
}


def imports(path: Path) -> set[str]:
    """Top-level names this module imports: ``registry_replication.x`` as ``x``, others as is."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "registry_replication":
                names |= {alias.name for alias in node.names}
            else:
                names.add(node.module)
    return {n.removeprefix("registry_replication.").split(".")[0] if n.startswith(
        "registry_replication.") else n for n in names}


def layer(module: str) -> str | None:
    if module == "outcomes" or module == "store":
        return module
    return "transport" if module in TRANSPORT else "engine" if module in ENGINE else None


def test_each_layer_imports_only_what_it_may():
    offenders = []
    for path in sorted([*PACKAGE.glob("*.py"), *PACKAGE.glob("store/**/*.py")]):
        module = path.stem if path.parent == PACKAGE else "store"  # store/ is one layer
        found = imports(path)
        if any(n == "airflow" or n.startswith("airflow.") for n in found):
            offenders.append(f"{module} imports Airflow")
        if (kind := layer(module)) is not None:
            own = {n for n in found if n in TRANSPORT | ENGINE | {"store", "outcomes", "airflow",
                                                                   "webhook", "status", "metrics",
                                                                   "notifications", "cli", "sync"}}
            offenders += [f"{module} ({kind}) imports {n}"
                          for n in sorted(own - ALLOWED[kind] - {module})]
    assert offenders == []


def test_the_harness_is_not_in_the_package():
    assert not (PACKAGE / "local").exists()
    sources = [p for p in PACKAGE.rglob("*.py")]
    assert sources and not [p for p in sources if "replication_harness" in imports(p)]
