"""The floor of a sync: the least any tool must do, for the benchmarks.

Full sync: every unique blob once, ``curl GET | curl -X PUT -T -`` (``sync_vs_skopeo.py``), or
by a bare ``http.client`` each repository's blobs once, then a manifest ``GET`` from the primary
and a ``PUT`` to the secondary per tag (``scale.py``); no-op: every tag list, then a ``HEAD`` of
every tag's manifest, on both registries by curl (``sync_vs_skopeo.py``), or on the primary
alone by a bare ``http.client``, as a cheap run asks it (``scale.py``).
"""

from __future__ import annotations

import http.client
import json
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import requests

from registry_replication.transport import mediatypes as mt
from replication_harness.measure import Run, measured, read_usage, run_child
from replication_harness.registry import LocalRegistry
from replication_harness.synthetic import Corpus


def floor_sync(
    primary: LocalRegistry,
    secondary: LocalRegistry,
    corpus: Corpus,
    parallelism: int,
    workdir: Path,
) -> Run:
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
            measured(
                ["sh", "-c", script, "sh", f"{primary.url}/v2/{repo}/blobs/{digest}", put_url],
                rss_path,
            ),
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


def floor_noop(
    primary: LocalRegistry,
    secondary: LocalRegistry,
    corpus: Corpus,
    parallelism: int,
    workdir: Path,
) -> Run:
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
            child = run_child(
                ["curl", "-sS", "-K", str(config)], workdir / f"{name}-{k}.log", Run()
            )
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
        curl_parallel(
            [
                f'url = "{registry.url}/v2/{repo}/tags/list"\noutput = "{out / repo}.json"'
                for repo in corpus.repositories
            ],
            f"{name}-lists",
        )
        return out

    def heads(registry: LocalRegistry, name: str, tags: list[tuple[str, str]]) -> None:
        curl_parallel(
            [
                f'url = "{registry.url}/v2/{repo}/manifests/{tag}"\nhead\n'
                f'header = "Accept: {mt.MANIFEST_ACCEPT}"\noutput = "/dev/null"'
                for repo, tag in tags
            ],
            f"{name}-heads",
        )

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
        list(
            pool.map(
                lambda side: heads(*side, tags),
                [(primary, "noop-primary"), (secondary, "noop-secondary")],
            )
        )
    run.seconds = time.perf_counter() - started
    run.rc = 1 if run.error else 0
    run.note = f"{len(tags)} tags: tag lists + HEAD of every tag, both sides, {parallelism} curls"
    return run


class _Bare:
    """One keep-alive ``http.client`` connection per thread to one registry, nothing parsed."""

    def __init__(self, url: str) -> None:
        self.host, port = url.removeprefix("http://").split(":")
        self.port = int(port)
        self.local = threading.local()

    def ask(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
    ) -> tuple[int, bytes, http.client.HTTPResponse]:
        if not hasattr(self.local, "connection"):
            self.local.connection = http.client.HTTPConnection(self.host, self.port, timeout=60)
        self.local.connection.request(method, path, body=body, headers=headers or {})
        response = self.local.connection.getresponse()
        return response.status, response.read(), response


def floor_primary_noop(
    primary: LocalRegistry,
    corpus: Corpus,
    parallelism: int,
    known: dict[tuple[str, str], str] | None = None,
) -> Run:
    """The least a correct no-op must ask of the primary: its tag lists, then a ``HEAD`` of
    every tag (a tag can move with no notification reaching us), conditional on ``known``
    digests when given; sent by the barest client there is (``http.client``, one keep-alive
    connection per thread, nothing parsed), so that what is left is the primary's own cost.
    (curl was tried first: its per-URL set-up cost more than this whole engine's client.)"""
    bare = _Bare(primary.url)
    run = Run(max_rss_kib=0, cpu_seconds=0.0)

    def tag_list(repo: str) -> list[tuple[str, str]]:
        status, body, _ = bare.ask("GET", f"/v2/{repo}/tags/list")
        if status != 200:
            raise RuntimeError(f"tag list of {repo}: HTTP {status}")
        return [(repo, tag) for tag in json.loads(body).get("tags") or []]

    def head(pair: tuple[str, str]) -> None:
        headers = {"Accept": mt.MANIFEST_ACCEPT}
        if known and pair in known:
            headers["If-None-Match"] = f'"{known[pair]}"'
        status, _, _ = bare.ask("HEAD", f"/v2/{pair[0]}/manifests/{pair[1]}", headers)
        if status not in (200, 304):
            raise RuntimeError(f"HEAD {pair[0]}:{pair[1]}: HTTP {status}")

    started = time.perf_counter()
    try:
        with ThreadPoolExecutor(parallelism) as pool:
            tags = [pair for found in pool.map(tag_list, corpus.repositories) for pair in found]
            list(pool.map(head, tags))
        run.rc = 0
    except (OSError, RuntimeError, ValueError) as exc:
        run.rc, run.error, tags = 1, str(exc), []
    run.seconds = time.perf_counter() - started
    run.note = (
        f"{len(tags)} tags: tag lists + {'conditional ' if known else ''}HEAD of every "
        f"tag, primary only, bare http.client x{parallelism}"
    )
    return run


def floor_full_copy(
    primary: LocalRegistry, secondary: LocalRegistry, corpus: Corpus, parallelism: int
) -> Run:
    """The least a full copy must do, by the barest client (``http.client``, one keep-alive
    connection per thread on each side): each repository's blobs uploaded once (``GET`` from
    the primary, ``POST`` + ``PUT`` to the secondary), then per tag one manifest ``GET`` from
    the primary and one ``PUT`` to the secondary (an index's children, by digest, first)."""
    source, target = _Bare(primary.url), _Bare(secondary.url)
    run = Run(max_rss_kib=0, cpu_seconds=0.0)

    def expect(status: int, wanted: tuple[int, ...], what: str) -> None:
        if status not in wanted:
            raise RuntimeError(f"{what}: HTTP {status}")

    def blob(pair: tuple[str, str]) -> None:
        repo, digest = pair
        status, data, _ = source.ask("GET", f"/v2/{repo}/blobs/{digest}")
        expect(status, (200,), f"GET blob {repo}@{digest}")
        status, _, response = target.ask("POST", f"/v2/{repo}/blobs/uploads/")
        expect(status, (202,), f"POST upload {repo}")
        location = response.getheader("Location", "").removeprefix(secondary.url)
        status, _, _ = target.ask(
            "PUT",
            f"{location}{'&' if '?' in location else '?'}digest={quote(digest, safe='')}",
            {"Content-Type": "application/octet-stream"},
            data,
        )
        expect(status, (201,), f"PUT blob {repo}@{digest}")

    def manifest(repo: str, reference: str) -> None:
        status, raw, response = source.ask(
            "GET", f"/v2/{repo}/manifests/{reference}", {"Accept": mt.MANIFEST_ACCEPT}
        )
        expect(status, (200,), f"GET manifest {repo}:{reference}")
        media_type = response.getheader("Content-Type", "")
        if media_type in mt.INDEXES:
            for child in json.loads(raw)["manifests"]:
                manifest(repo, child["digest"])
        status, _, _ = target.ask(
            "PUT", f"/v2/{repo}/manifests/{reference}", {"Content-Type": media_type}, raw
        )
        expect(status, (201,), f"PUT manifest {repo}:{reference}")

    started = time.perf_counter()
    try:
        with ThreadPoolExecutor(parallelism) as pool:
            list(pool.map(blob, sorted(corpus.repo_blobs)))
            list(pool.map(lambda spec: manifest(spec.repository, spec.tag), corpus.specs))
        run.rc = 0
    except (OSError, RuntimeError, ValueError, KeyError) as exc:
        run.rc, run.error = 1, str(exc)
    run.seconds = time.perf_counter() - started
    run.note = (
        f"{len(corpus.repo_blobs)} blob uploads, {corpus.tags} tags: manifest GET + PUT "
        f"each (an index's children first), bare http.client x{parallelism}"
    )
    return run


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
