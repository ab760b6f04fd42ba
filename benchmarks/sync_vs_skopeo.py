#!/usr/bin/env python
"""Benchmark: this engine's sync against ``skopeo sync`` and a raw ``curl`` floor.

Everything runs on loopback against real ``docker-registry`` (distribution 2.8) processes
without auth, under a temporary directory:

1. A primary is started and filled with a synthetic corpus: ``--repos`` repositories holding
   ``--tags`` tags in total (round-robin), about ``--unique-mib`` MiB of unique random layer
   bytes. A few base layer sets are shared across repositories (so cross-repository mounts
   matter), every tenth image is a multi-arch index (amd64 + arm64), and half of the
   repositories use Docker v2 media types, the other half OCI.
2. Each tool syncs the primary into its own fresh, empty secondary (timed):

   * engine: ``registry-replication sync --json --no-prune`` as a child process;
   * skopeo: ``skopeo sync --all --preserve-digests --src yaml --dest docker`` with a YAML
     source listing every repository (``[]`` = all tags), TLS verification off;
   * floor: every unique blob once, ``curl GET`` from the primary piped into a monolithic
     ``curl -X PUT -T -`` on the secondary (upload URL from ``POST /v2/<repo>/blobs/uploads/``),
     ``--parallelism`` pipelines at once (default 8, the engine's default ``--parallelism``).
     The floor copies no manifests and mounts nothing: it is the cost of moving the bytes.

3. Each tool then re-syncs against its already-synced secondary (the no-op, timed). The floor's
   no-op is the least a correct no-op must do: GET every repository's tag list and HEAD every
   tag's manifest on both registries (8 keep-alive curl processes per registry and pass).
4. A table compares wall time, bytes read from the primary, peak RSS and CPU time (GNU
   ``time``'s ``%M``, ``%U`` and ``%S`` of the child), the targets are checked, and the secondaries are verified with
   ``registry-replication verify`` (per-repository checksums of every tag's HEAD digest).

Bytes the primary *sent* are measured for every tool the same way: the growth of the primary
registry process's ``wchar`` (``/proc/<pid>/io``) minus the growth of its log file, i.e. the
bytes it wrote to sockets (HTTP headers included).

    /tmp/venv/bin/python benchmarks/sync_vs_skopeo.py               # 40 repos, 120 tags, 600 MiB
    /tmp/venv/bin/python benchmarks/sync_vs_skopeo.py --repos 40 --tags 1200 --unique-mib 100
    /tmp/venv/bin/python benchmarks/sync_vs_skopeo.py --quick       # smoke run, seconds

Exit status: 0 when every tool ran without error and every secondary verified in sync
(targets that were missed are reported, not failed); 1 otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from urllib.parse import quote

import requests

from registry_replication import mediatypes as mt
from registry_replication.client import RegistryClient
from replication_harness.images import Blob, Image, image, index
from replication_harness.registry import LocalRegistry

MiB = 1 << 20
VENV_BIN = Path(sys.executable).parent
ENGINE = shutil.which("registry-replication", path=str(VENV_BIN)) or "registry-replication"
BASE_LAYER_SHARES = (0.6, 0.3, 0.1)  # a base set: a big OS layer, a runtime, a small tweak
BASE_FRACTION = 0.25  # of the unique bytes, in the shared base sets
TOP_LAYERS = 2  # unique layers per image (per platform)
TARGET_FLOOR_RATIO = 1.2
TARGET_NOOP_RATIO = 0.1
TARGET_NOOP_MIN_TAGS = 1000
TARGET_BYTES_RATIO = 1.05


# -- corpus ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Blob(Blob):
    """A Blob whose digest is hashed once (the base class rehashes on every access)."""

    @cached_property
    def digest(self) -> str:  # type: ignore[override]
        return "sha256:" + hashlib.sha256(self.data).hexdigest()


@dataclass
class TagSpec:
    repository: str
    tag: str
    docker: bool
    base: int  # which base layer set
    platforms: list[tuple[str, list[int]]]  # (architecture, unique top layer sizes)


@dataclass
class Corpus:
    repositories: list[str]
    specs: list[TagSpec]
    base_sets: list[list[bytes]] = field(default_factory=list)
    blobs: dict[str, tuple[int, str]] = field(default_factory=dict)  # digest -> (size, a repo)
    repo_blobs: set[tuple[str, str]] = field(default_factory=set)
    manifests: int = 0
    manifest_bytes: int = 0
    seconds: float = 0.0

    @property
    def tags(self) -> int:
        return len(self.specs)

    @property
    def indexes(self) -> int:
        return sum(1 for s in self.specs if len(s.platforms) > 1)

    @property
    def unique_bytes(self) -> int:
        return sum(size for size, _ in self.blobs.values())

    @property
    def logical_bytes(self) -> int:
        """Blob bytes counted once per repository holding them (what no dedup would move)."""
        return sum(self.blobs[d][0] for _, d in self.repo_blobs)


def plan_corpus(repos: int, tags: int, unique_mib: float, base_sets: int, seed: int) -> Corpus:
    rng = random.Random(seed)
    width = max(2, len(str(repos - 1)))
    names = [f"app-{i:0{width}d}" for i in range(repos)]
    budget = int(unique_mib * MiB)
    base_budget = int(budget * BASE_FRACTION) // base_sets
    corpus = Corpus(names, [])
    corpus.base_sets = [
        [os.urandom(max(1024, int(base_budget * share))) for share in BASE_LAYER_SHARES]
        for _ in range(base_sets)
    ]
    per_repo: dict[str, int] = {}
    for i in range(tags):
        repo = names[i % repos]
        n = per_repo[repo] = per_repo.get(repo, -1) + 1
        archs = ["amd64", "arm64"] if i % 10 == 9 else ["amd64"]
        corpus.specs.append(
            TagSpec(repo, f"v{n}.0", docker=(i % repos) % 2 == 1, base=(i % repos) % base_sets,
                    platforms=[(arch, []) for arch in archs])
        )
    # Top layer sizes: log-normal (a few big layers, many small ones), scaled to the budget.
    slots = [sizes for spec in corpus.specs for _, sizes in spec.platforms for _ in range(TOP_LAYERS)]
    weights = [rng.lognormvariate(0, 1) for _ in slots]
    top_budget = max(0, budget - sum(len(b) for s in corpus.base_sets for b in s))
    scale = top_budget / sum(weights)
    for sizes, weight in zip(slots, weights):
        sizes.append(max(256, int(weight * scale)))
    return corpus


def _image_of(spec: TagSpec, corpus: Corpus) -> Image:
    layer_type = mt.DOCKER_LAYER if spec.docker else mt.OCI_LAYER
    base = [_Blob(data, layer_type) for data in corpus.base_sets[spec.base]]
    children = []
    for arch, sizes in spec.platforms:
        top = [_Blob(os.urandom(size), layer_type) for size in sizes]
        children.append(image([*base, *top], docker=spec.docker, architecture=arch,
                              label=f"{spec.repository}:{spec.tag}"))
    return children[0] if len(children) == 1 else index(children, docker=spec.docker)


def generate(primary: LocalRegistry, corpus: Corpus, threads: int) -> None:
    """Build every image (random bytes) and push it, ``threads`` images at a time."""
    started = time.monotonic()
    lock = threading.Lock()
    holders: dict[str, str] = {}  # digest -> a repository on the primary holding it

    def push(client: RegistryClient, repo: str, img: Image, tags: Sequence[str]) -> None:
        for blob in img.blobs:
            digest = blob.digest
            with lock:
                corpus.blobs.setdefault(digest, (blob.size, repo))
                corpus.repo_blobs.add((repo, digest))
                holder = holders.get(digest)
            if client.blob_size(repo, digest) is not None:
                continue
            if holder and holder != repo and client.mount_blob(repo, digest, holder):
                continue
            client.push_blob(repo, digest, blob.data, blob.size)
            with lock:
                holders.setdefault(digest, repo)
        for child in img.children:
            push(client, repo, child, ())
        with lock:
            corpus.manifests += 1
            corpus.manifest_bytes += len(img.raw)
        for ref in list(tags) or [img.digest]:
            client.put_manifest(repo, ref, img.raw, img.media_type)

    with RegistryClient(primary.client_config(), writable=True) as client:
        # Base sets first (one repository each) so that every other repository mounts them.
        firsts: dict[int, TagSpec] = {}
        for spec in corpus.specs:
            firsts.setdefault(spec.base, spec)
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda s: push(client, s.repository, _image_of(s, corpus), [s.tag]),
                          firsts.values()))
            rest = [s for s in corpus.specs if firsts[s.base] is not s]
            list(pool.map(lambda s: push(client, s.repository, _image_of(s, corpus), [s.tag]), rest))
    corpus.seconds = time.monotonic() - started


# -- measuring ------------------------------------------------------------------------------------


@dataclass
class Run:
    seconds: float = math.nan
    rc: int | None = None
    max_rss_kib: int | None = None
    cpu_seconds: float | None = None  # user + system of the tool's processes
    primary_sent: int | None = None  # bytes the primary wrote to sockets during the run
    bytes_read: int | None = None  # as the tool itself reports (or by construction)
    stdout: str = ""
    stderr_path: Path | None = None
    error: str | None = None
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.rc == 0 and self.error is None


class PrimaryMeter:
    """Bytes the primary registry wrote to sockets: its ``wchar`` minus its log file's growth."""

    def __init__(self, registry: LocalRegistry) -> None:
        self.registry = registry

    def sample(self) -> tuple[int, int] | None:
        try:
            io = Path(f"/proc/{self.registry.process.pid}/io").read_text()
        except (OSError, AttributeError):
            return None
        wchar = next(int(line.split()[1]) for line in io.splitlines() if line.startswith("wchar:"))
        return wchar, self.registry.log_path.stat().st_size

    @staticmethod
    def delta(before: tuple[int, int] | None, after: tuple[int, int] | None) -> int | None:
        if before is None or after is None:
            return None
        return (after[0] - before[0]) - (after[1] - before[1])


TIME = "/usr/bin/time"  # GNU time: reports the peak RSS of a process it forked itself


def measured(argv: Sequence[str], rss_path: Path) -> list[str]:
    """``argv`` under GNU time, which writes the command's peak RSS (KiB) to ``rss_path``.

    ``ru_maxrss`` from our own ``wait4`` would be wrong: a child forked from this (large)
    Python process starts with the parent's RSS as its high-water mark, and exec keeps it.
    """
    return [TIME, "-f", "%M %U %S", "-o", str(rss_path), *argv]


def read_usage(rss_path: Path) -> tuple[int | None, float | None]:
    """(peak RSS KiB, user + system CPU seconds) as GNU time wrote them."""
    try:  # "Command exited with non-zero status N" may come first
        rss, user, system = rss_path.read_text().splitlines()[-1].split()
        return int(rss), float(user) + float(system)
    except (OSError, ValueError, IndexError):
        return None, None


def run_child(argv: Sequence[str], log_path: Path, run: Run) -> Run:
    """Run one child process: its wall time and peak RSS (of its whole tree's largest process)."""
    rss_path = log_path.with_suffix(".rss")
    with log_path.open("wb") as stderr:
        started = time.perf_counter()
        proc = subprocess.Popen(measured(argv, rss_path), stdout=subprocess.PIPE, stderr=stderr,
                                start_new_session=True)
        try:
            out, _ = proc.communicate()
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        run.seconds = time.perf_counter() - started
    run.rc = proc.returncode
    run.max_rss_kib, run.cpu_seconds = read_usage(rss_path)
    run.stdout = out.decode(errors="replace")
    run.stderr_path = log_path
    if run.rc != 0:
        run.error = f"exit {run.rc}: " + _tail(log_path)
    return run


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def timed(meter: PrimaryMeter, fn, *args) -> Run:
    before = meter.sample()
    run = fn(*args)
    run.primary_sent = PrimaryMeter.delta(before, meter.sample())
    return run


# -- the tools ------------------------------------------------------------------------------------


def engine_sync(primary: LocalRegistry, secondary: LocalRegistry, log_path: Path) -> Run:
    run = run_child(
        [ENGINE, "sync", "--primary", json.dumps(primary.connection()),
         "--secondary", json.dumps(secondary.connection()), "--json", "--no-prune"],
        log_path, Run(),
    )
    if run.rc is not None and run.stdout.strip():
        try:
            report = json.loads(run.stdout)
            run.bytes_read = report["bytes_read_from_primary"]
            run.note = json.dumps(report["counts"], separators=(",", ":"))
        except (ValueError, KeyError) as exc:
            run.error = run.error or f"unreadable --json output: {exc}"
    return run


def skopeo_sync(source_yaml: Path, secondary: LocalRegistry, log_path: Path) -> Run:
    dest = secondary.url.removeprefix("http://")
    return run_child(
        ["skopeo", "sync", "--all", "--preserve-digests", "--src", "yaml", "--dest", "docker",
         "--src-tls-verify=false", "--dest-tls-verify=false", str(source_yaml), dest],
        log_path, Run(),
    )


def write_skopeo_yaml(primary: LocalRegistry, corpus: Corpus, path: Path) -> None:
    # skopeo sync without --scoped names the destination after the source's last path
    # component: the corpus's repositories are one component deep, so names are kept.
    source = {
        primary.url.removeprefix("http://"): {
            "tls-verify": False,
            "images": {repo: [] for repo in corpus.repositories},  # [] = every tag
        }
    }
    path.write_text(json.dumps(source, indent=2))  # YAML is a JSON superset


def floor_sync(primary: LocalRegistry, secondary: LocalRegistry, corpus: Corpus,
               parallelism: int, workdir: Path) -> Run:
    """Each unique blob once: ``curl GET | curl -X PUT -T -``, ``parallelism`` at a time."""
    script = (
        'curl -sSf "$1" | curl -sSf -X PUT -T - -H "Content-Type: application/octet-stream" '
        '-o /dev/null "$2"'
    )
    session = requests.Session()
    run = Run(bytes_read=corpus.unique_bytes, max_rss_kib=0, cpu_seconds=0.0)
    errors: list[str] = []
    lock = threading.Lock()

    def copy(item: tuple[str, tuple[int, str]]) -> None:
        digest, (_, repo) = item
        response = session.post(f"{secondary.url}/v2/{repo}/blobs/uploads/", timeout=60)
        if response.status_code != 202:
            errors.append(f"POST {repo}: HTTP {response.status_code}")
            return
        location = response.headers["Location"]
        if location.startswith("/"):
            location = secondary.url + location
        put_url = f"{location}{'&' if '?' in location else '?'}digest={quote(digest, safe='')}"
        rss_path = workdir / f"floor-{digest[7:23]}.rss"
        proc = subprocess.run(
            measured(["sh", "-c", script, "sh", f"{primary.url}/v2/{repo}/blobs/{digest}",
                      put_url], rss_path),
            stderr=subprocess.PIPE,
        )
        err = proc.stderr
        with lock:
            rss, cpu = read_usage(rss_path)
            run.max_rss_kib = max(run.max_rss_kib, rss or 0)
            run.cpu_seconds += cpu or 0.0
            if proc.returncode:
                errors.append(f"{repo}@{digest}: exit {proc.returncode} {err.decode()[:200]}")

    started = time.perf_counter()
    with ThreadPoolExecutor(parallelism) as pool:
        list(pool.map(copy, corpus.blobs.items()))
    run.seconds = time.perf_counter() - started
    run.rc = 1 if errors else 0
    if errors:
        run.error = f"{len(errors)} blob copies failed, first: {errors[0]}"
    run.note = f"{len(corpus.blobs)} blobs, {parallelism} curl pipelines"
    return run


def floor_noop(primary: LocalRegistry, secondary: LocalRegistry, corpus: Corpus,
               parallelism: int, workdir: Path) -> Run:
    """The least a no-op must do: every tag list, then HEAD of every tag, on both sides.

    The floor's secondary holds blobs only, so its answers are 404s: the same requests, the
    same round trips. The tags HEADed on both sides are the primary's.
    """
    run = Run(max_rss_kib=0, cpu_seconds=0.0)
    lock = threading.Lock()
    started = time.perf_counter()

    def curl_parallel(config_lines: list[str], name: str) -> None:
        """``parallelism`` curl processes at once, each over its slice of the URLs on one
        keep-alive connection. (One ``curl --parallel`` over every URL was tried first: on a
        loaded 2-core machine it used ~18 s of CPU for ~2,500 requests, competing with the
        registries it measured.)"""
        def one(k: int) -> None:
            config = workdir / f"{name}-{k}.curlrc"
            config.write_text("\n".join(config_lines[k::parallelism]) + "\n")
            child = run_child(["curl", "-sS", "-K", str(config)], workdir / f"{name}-{k}.log", Run())
            with lock:
                run.max_rss_kib = max(run.max_rss_kib, child.max_rss_kib or 0)
                run.cpu_seconds += child.cpu_seconds or 0.0
                if child.rc:
                    run.error = run.error or f"{name}: {child.error}"

        with ThreadPoolExecutor(parallelism) as slices:
            list(slices.map(one, range(min(parallelism, len(config_lines)))))

    def lists(registry: LocalRegistry, name: str) -> Path:
        out = workdir / f"{name}-tags"
        out.mkdir(exist_ok=True)
        curl_parallel([f'url = "{registry.url}/v2/{repo}/tags/list"\noutput = "{out / repo}.json"'
                       for repo in corpus.repositories], f"{name}-lists")
        return out

    def heads(registry: LocalRegistry, name: str, tags: list[tuple[str, str]]) -> None:
        curl_parallel([f'url = "{registry.url}/v2/{repo}/manifests/{tag}"\nhead\n'
                       f'header = "Accept: {mt.MANIFEST_ACCEPT}"\noutput = "/dev/null"'
                       for repo, tag in tags], f"{name}-heads")

    with ThreadPoolExecutor(2) as pool:
        listed = pool.submit(lists, primary, "noop-primary")
        pool.submit(lists, secondary, "noop-secondary").result()
        tags = []
        for repo in corpus.repositories:
            try:
                body = json.loads((listed.result() / f"{repo}.json").read_text())
                tags += [(repo, tag) for tag in body.get("tags") or []]
            except (OSError, ValueError) as exc:
                run.error = run.error or f"tag list of {repo}: {exc}"
        list(pool.map(lambda side: heads(*side, tags),
                      [(primary, "noop-primary"), (secondary, "noop-secondary")]))
    run.seconds = time.perf_counter() - started
    run.rc = 1 if run.error else 0
    run.note = f"{len(tags)} tags: tag lists + HEAD of every tag, both sides, {parallelism} curls"
    return run


# -- verification ---------------------------------------------------------------------------------


def verify(primary: LocalRegistry, secondary: LocalRegistry, log_path: Path) -> tuple[bool, str]:
    run = run_child(
        [ENGINE, "verify", "--primary", json.dumps(primary.connection()),
         "--secondary", json.dumps(secondary.connection()), "--json"],
        log_path, Run(),
    )
    try:
        records = json.loads(run.stdout)
    except ValueError:
        return False, f"verify failed: {run.error or 'no output'}"
    in_sync = sum(1 for r in records if r.get("in_sync"))
    ok = run.rc == 0 and in_sync == len(records) and bool(records)
    return ok, f"{'in sync' if ok else 'NOT in sync'} ({in_sync}/{len(records)} repositories)"


def verify_blobs(secondary: LocalRegistry, corpus: Corpus) -> tuple[bool, str]:
    session = requests.Session()

    def present(item: tuple[str, tuple[int, str]]) -> bool:
        digest, (size, repo) = item
        r = session.head(f"{secondary.url}/v2/{repo}/blobs/{digest}", timeout=60)
        return r.status_code == 200 and int(r.headers.get("Content-Length", -1)) == size

    with ThreadPoolExecutor(8) as pool:
        found = sum(pool.map(present, corpus.blobs.items()))
    ok = found == len(corpus.blobs)
    return ok, f"{'blobs present' if ok else 'BLOBS MISSING'} ({found}/{len(corpus.blobs)} blobs)"


# -- report ---------------------------------------------------------------------------------------


def _s(seconds: float | None) -> str:
    return "n/a" if seconds is None or math.isnan(seconds) else f"{seconds:.2f}s"


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or math.isnan(a) or math.isnan(b) or b <= 0:
        return "n/a"
    return f"{a / b:.2f}x"


def _mib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / MiB:.1f} MiB"


def _rss(kib: int | None) -> str:
    return "n/a" if not kib else f"{kib / 1024:.0f} MiB"


def _cpu(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds:.1f}s"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])


def report(corpus: Corpus, full: dict[str, Run], noop: dict[str, Run],
           verified: dict[str, tuple[bool, str]], parallelism: int) -> None:
    print("\n== results ==")
    header = ["tool", "full sync", "/skopeo", "/floor", "no-op", "/skopeo no-op",
              "read from primary", "primary sent", "no-op primary sent", "peak RSS",
              "no-op peak RSS", "CPU", "no-op CPU", "verified"]
    rows = []
    for tool in ("engine", "skopeo", "floor"):
        f, n = full.get(tool, Run()), noop.get(tool, Run())
        rows.append([
            tool,
            _s(f.seconds) + ("" if f.ok else " (FAILED)"),
            _ratio(f.seconds, full.get("skopeo", Run()).seconds),
            _ratio(f.seconds, full.get("floor", Run()).seconds),
            _s(n.seconds) + ("" if n.ok or n.rc is None else " (FAILED)"),
            _ratio(n.seconds, noop.get("skopeo", Run()).seconds),
            _mib(f.bytes_read),
            _mib(f.primary_sent),
            _mib(n.primary_sent),
            _rss(f.max_rss_kib),
            _rss(n.max_rss_kib),
            _cpu(f.cpu_seconds),
            _cpu(n.cpu_seconds),
            verified.get(tool, (False, "not run"))[1],
        ])
    print(_table(header, rows))
    print(
        "\nread from primary: engine = its --json bytes_read_from_primary (blobs + manifests); "
        "floor = the unique blob bytes, by construction;\n  skopeo = n/a (it does not report it; "
        "see 'primary sent', measured for every tool from the primary's socket writes, headers "
        "included)."
    )
    print(f"floor: {parallelism} concurrent curl GET | curl PUT pipelines, the engine's default "
          "--parallelism (8 blob transfers in flight); blobs only, no manifests, no mounts, one "
          "process pipeline per blob.")
    print("floor no-op: GET every tag list, then HEAD every tag's manifest, on both registries "
          f"at once ({parallelism} keep-alive curl processes per registry, each over a slice).")
    print("peak RSS: GNU time's %M (peak RSS of the largest process in the child's tree): "
          "engine = the CLI process, skopeo = skopeo, floor = the largest curl of any pipeline "
          "(8 pipelines x 2 curls run at once).\nCPU: user + system seconds of the tool's own "
          "processes (GNU time; floor: all its curl and sh processes), registries not included.")
    for tool in ("engine", "skopeo", "floor"):
        for label, run in (("full", full.get(tool)), ("no-op", noop.get(tool))):
            if run and run.error:
                print(f"\n{tool} {label} FAILED: {run.error}")
    for label, runs in (("full", full), ("no-op", noop)):
        if runs.get("engine") and runs["engine"].note:
            print(f"engine {label} counts: {runs['engine'].note}")

    print("\n== targets ==")
    e, s, fl = full.get("engine", Run()), full.get("skopeo", Run()), full.get("floor", Run())
    en, sn = noop.get("engine", Run()), noop.get("skopeo", Run())

    def verdict(value: float | None, limit: float, applicable: bool = True) -> str:
        if value is None or math.isnan(value):
            return "not measured"
        met = "MET" if value <= limit else "NOT MET"
        return met if applicable else f"{met} (not applicable: needs >= {TARGET_NOOP_MIN_TAGS} tags)"

    floor_ratio = e.seconds / fl.seconds if fl.seconds and not math.isnan(fl.seconds) else None
    noop_ratio = en.seconds / sn.seconds if sn.seconds and not math.isnan(sn.seconds) else None
    bytes_ratio = e.bytes_read / corpus.unique_bytes if e.bytes_read is not None else None
    print(f"full sync within {TARGET_FLOOR_RATIO}x of the floor: "
          f"{_ratio(e.seconds, fl.seconds)} -> {verdict(floor_ratio, TARGET_FLOOR_RATIO)}")
    print(f"no-op re-sync <= {TARGET_NOOP_RATIO}x skopeo's at >= {TARGET_NOOP_MIN_TAGS} tags "
          f"({corpus.tags} tags): {_ratio(en.seconds, sn.seconds)} -> "
          f"{verdict(noop_ratio, TARGET_NOOP_RATIO, corpus.tags >= TARGET_NOOP_MIN_TAGS)}")
    print(f"bytes read <= {TARGET_BYTES_RATIO}x unique missing bytes: "
          f"{_mib(e.bytes_read)} / {_mib(corpus.unique_bytes)} = "
          f"{_ratio(e.bytes_read, corpus.unique_bytes)} -> {verdict(bytes_ratio, TARGET_BYTES_RATIO)}"
          f" (manifests add {corpus.manifest_bytes / 1024:.0f} KiB)")


# -- main -----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repos", type=int, default=40)
    parser.add_argument("--tags", type=int, default=120, help="tags in total, round-robin")
    parser.add_argument("--unique-mib", type=float, default=600.0)
    parser.add_argument("--base-sets", type=int, default=0,
                        help="shared base layer sets (default: repos // 3, between 1 and 4)")
    parser.add_argument("--parallelism", type=int, default=8,
                        help="floor pipelines in flight (default 8 = the engine's default)")
    parser.add_argument("--threads", type=int, default=8, help="threads pushing the corpus")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 3 repos, 6 tags, 4 MiB (overrides the sizes)")
    parser.add_argument("--workdir", type=Path, help="keep registries' storage here (default: temp)")
    parser.add_argument("--keep", action="store_true", help="do not delete the work directory")
    args = parser.parse_args(argv)
    if args.quick:
        args.repos, args.tags, args.unique_mib = 3, 6, 4.0
    if args.repos < 1 or args.tags < args.repos:
        parser.error("need --repos >= 1 and --tags >= --repos")
    args.base_sets = args.base_sets or max(1, min(4, args.repos // 3))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that `finally` stops registries
    for tool in ("skopeo", "curl", "docker-registry"):
        if not shutil.which(tool):
            print(f"{tool} is not installed", file=sys.stderr)
            return 2
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="sync-vs-skopeo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    # The CLI's own replication store (leases, the record of the secondary's tags): a store
    # left by an earlier run must not describe this run's fresh secondaries.
    os.environ["REGISTRY_REPLICATION_DB_URL"] = f"sqlite:///{workdir / 'replication-cli.db'}"
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    registries: list[LocalRegistry] = []

    def start(name: str) -> LocalRegistry:
        registry = LocalRegistry(workdir / name, name=name)
        registries.append(registry)
        return registry.start()

    full: dict[str, Run] = {}
    noop: dict[str, Run] = {}
    verified: dict[str, tuple[bool, str]] = {}
    try:
        primary = start("primary")
        print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} on "
              f"{os.cpu_count()} CPUs; work directory {workdir}; engine {ENGINE}; "
              f"{subprocess.run(['skopeo', '--version'], capture_output=True, text=True).stdout.strip()}")
        corpus = plan_corpus(args.repos, args.tags, args.unique_mib, args.base_sets, args.seed)
        generate(primary, corpus, args.threads)
        print(
            f"corpus: {len(corpus.repositories)} repositories, {corpus.tags} tags "
            f"({corpus.indexes} multi-arch indexes), {corpus.manifests} manifests "
            f"({corpus.manifest_bytes / 1024:.0f} KiB), {args.base_sets} shared base layer sets\n"
            f"corpus: {len(corpus.blobs)} unique blobs, {_mib(corpus.unique_bytes)} unique bytes "
            f"({_mib(corpus.logical_bytes)} counting each repository's copy, "
            f"{len(corpus.repo_blobs)} repository-blob pairs); pushed in {corpus.seconds:.1f}s"
        )
        meter = PrimaryMeter(primary)
        skopeo_yaml = workdir / "skopeo-source.yaml"
        write_skopeo_yaml(primary, corpus, skopeo_yaml)

        for tool in ("engine", "skopeo", "floor"):
            secondary = start(f"secondary-{tool}")
            print(f"\n[{tool}] full sync into an empty secondary at {secondary.url} ...", flush=True)
            if tool == "engine":
                go = lambda: engine_sync(primary, secondary, logs / "engine-full.log")
                again = lambda: engine_sync(primary, secondary, logs / "engine-noop.log")
            elif tool == "skopeo":
                go = lambda: skopeo_sync(skopeo_yaml, secondary, logs / "skopeo-full.log")
                again = lambda: skopeo_sync(skopeo_yaml, secondary, logs / "skopeo-noop.log")
            else:
                go = lambda: floor_sync(primary, secondary, corpus, args.parallelism, logs)
                again = lambda: floor_noop(primary, secondary, corpus, args.parallelism, logs)
            full[tool] = timed(meter, go)
            print(f"[{tool}] full sync: {_s(full[tool].seconds)}"
                  + (f" FAILED: {full[tool].error}" if full[tool].error else ""), flush=True)
            if tool == "floor":
                verified[tool] = verify_blobs(secondary, corpus)
            else:
                verified[tool] = verify(primary, secondary, logs / f"{tool}-verify.log")
            print(f"[{tool}] verify: {verified[tool][1]}", flush=True)
            noop[tool] = timed(meter, again)
            print(f"[{tool}] no-op re-sync: {_s(noop[tool].seconds)}"
                  + (f" FAILED: {noop[tool].error}" if noop[tool].error else ""), flush=True)
            secondary.stop()  # frees its memory and CPU for the next tool

        report(corpus, full, noop, verified, args.parallelism)
        ok = all(r.ok for r in [*full.values(), *noop.values()]) and all(
            v[0] for v in verified.values())
        print("\nload average (1/5/15 min) at the end: "
              + " ".join(f"{x:.2f}" for x in os.getloadavg()) + f" on {os.cpu_count()} CPUs")
        print(f"\nresult: {'OK' if ok else 'FAILED'}; every secondary verified: "
              f"{'yes' if all(v[0] for v in verified.values()) else 'NO'}")
        return 0 if ok else 1
    finally:
        for registry in registries:
            registry.stop()
        if not args.keep and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
