"""A run's artifacts (snapshots, differences, plan batches, copy results) in one folder.

The folder is any path-like object with ``/``, ``open`` and ``mkdir``: a ``pathlib.Path``, or
Airflow's ``ObjectStoragePath`` for ``file://``, ``s3://`` or ``gs://`` (the DAGs pass that), so
tasks hand each other a reference and small counts instead of the data itself. Tables are
Parquet; a snapshot is written batch by batch as it is listed (``SnapshotWriter``), so a
registry of any size is never held in memory whole; copy results, which nest, are JSON Lines.

On a local filesystem the folders this module creates are 0700 and its files 0600: they hold
the registries' repository names, digests and error texts (object storage has its own ACLs).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path, PurePath
from typing import IO, Any, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from registry_replication.client import Manifest
from registry_replication.snapshot import COLUMNS, Listing, Row, Snapshot

log = logging.getLogger(__name__)

SNAPSHOT_SCHEMA = pa.schema([(column, pa.string()) for column in COLUMNS])


class Folder(Protocol):
    """What the helpers need of a path: ``pathlib.Path`` and ``ObjectStoragePath`` both fit."""

    def __truediv__(self, name: str) -> Folder: ...
    def open(self, mode: str = ...) -> Any: ...
    def mkdir(self, *args: Any, **kwargs: Any) -> None: ...


def _local(path: Folder) -> Path | None:
    """``path`` on this machine's filesystem (a ``Path`` or a ``file://`` storage path), else
    None (object storage)."""
    if isinstance(path, PurePath):
        return Path(path)
    if getattr(path, "protocol", None) in ("file", "local"):
        return Path(path.path)  # type: ignore[attr-defined]
    return None


def make_folder(folder: Folder) -> None:
    """Create ``folder`` and its missing parents: 0700 each, on a local filesystem."""
    local = _local(folder)
    if local is None:
        folder.mkdir(parents=True, exist_ok=True)
        return
    missing = [p for p in (local, *local.parents) if not p.exists()]
    for created in reversed(missing):
        try:
            created.mkdir(mode=0o700)
        except FileExistsError:  # another task made it meanwhile
            pass


def create(path: Folder) -> IO[bytes]:
    """Open ``path`` to be written anew (its folder made if missing): 0600 on a local
    filesystem."""
    local = _local(path)
    if local is None:
        return path.open("wb")
    make_folder(local.parent)
    fd = os.open(local, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # a file written again keeps no older, wider mode
    return os.fdopen(fd, "wb")


def write_frame(path: Folder, frame: pd.DataFrame) -> int:
    """Write ``frame`` as Parquet; returns the bytes written."""
    with create(path) as out:
        frame.to_parquet(out, index=False)
        return out.tell()


def read_frame(path: Folder) -> pd.DataFrame:
    with path.open("rb") as source:
        return pd.read_parquet(source)


class SnapshotWriter:
    """``<name>.parquet``, one row group per batch of listed rows, then ``<name>.json`` (the
    registry, errors and problems) once the listing is done."""

    def __init__(self, folder: Folder, name: str) -> None:
        make_folder(folder)
        self.folder, self.name = folder, name
        self._file = create(folder / f"{name}.parquet")
        self._writer = pq.ParquetWriter(self._file, SNAPSHOT_SCHEMA)

    def write(self, rows: list[Row]) -> None:
        if rows:
            columns = list(zip(*rows))
            self._writer.write_table(pa.table(
                {name: pa.array(values, pa.string()) for name, values in zip(COLUMNS, columns)},
                schema=SNAPSHOT_SCHEMA))

    def finish(self, listing: Listing) -> dict[str, Any]:
        """Close the table, write the header; returns the counts and bytes for XCom."""
        self._writer.close()
        size = self._file.tell()
        self._file.close()
        header = json.dumps({"registry": listing.registry, "errors": listing.errors,
                             "problems": listing.problems}).encode()
        with create(self.folder / f"{self.name}.json") as out:
            out.write(header)
        return {"name": self.name, "tags": listing.tags, "errors": len(listing.errors),
                "problems": len(listing.problems), "bytes": size + len(header)}

    def __enter__(self) -> SnapshotWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._file.closed:  # an unfinished listing: leave no header, close the file
            self._writer.close()
            self._file.close()


def write_snapshot(folder: Folder, name: str, snapshot: Snapshot) -> dict[str, Any]:
    """An in-memory snapshot, as ``SnapshotWriter`` writes a streamed one."""
    with SnapshotWriter(folder, name) as writer:
        writer.write(list(snapshot.tags[COLUMNS].astype(str).itertuples(index=False, name=None)))
        return writer.finish(Listing(snapshot.registry, len(snapshot.tags), snapshot.errors,
                                     snapshot.problems))


def read_snapshot(folder: Folder, name: str) -> Snapshot:
    with (folder / f"{name}.json").open("rb") as source:
        header = json.loads(source.read())
    tags = read_frame(folder / f"{name}.parquet")
    if tags.empty:  # a table of no batches reads as columns of no chunks, which pandas cannot join
        tags = pd.DataFrame(columns=COLUMNS, dtype=str)
    return Snapshot(header["registry"], tags.reindex(columns=COLUMNS).astype(str),
                    list(header["errors"]), list(header["problems"] or []))


def write_records(path: Folder, records: list[dict[str, Any]]) -> int:
    """Write dataclass records (lists of strings allowed) as Parquet; returns the bytes."""
    return write_frame(path, pd.DataFrame.from_records(records))


def read_records(path: Folder) -> list[dict[str, Any]]:
    """The records ``write_records`` wrote, with lists as lists and nulls as None."""
    frame = read_frame(path)
    return [{k: _plain(v) for k, v in row.items()} for row in frame.to_dict(orient="records")]


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and np.isnan(value):
        return None
    return value


def write_json_lines(path: Folder, records: list[dict[str, Any]]) -> int:
    """One JSON object per line (records with nested values: copy results); returns bytes."""
    data = "".join(json.dumps(record, default=str) + "\n" for record in records).encode()
    with create(path) as out:
        out.write(data)
    return len(data)


def read_json_lines(path: Folder) -> list[dict[str, Any]]:
    with path.open("rb") as source:
        return [json.loads(line) for line in source.read().splitlines() if line.strip()]


def write_manifests(path: Folder, manifests: list[tuple[str, Manifest]]) -> int:
    """(repository, manifest) pairs: the exact bytes, media types and digests, as Parquet;
    returns the bytes written."""
    table = pa.table({
        "repository": pa.array([r for r, _ in manifests], pa.string()),
        "digest": pa.array([m.digest for _, m in manifests], pa.string()),
        "media_type": pa.array([m.media_type for _, m in manifests], pa.string()),
        "raw": pa.array([m.raw for _, m in manifests], pa.binary()),
    })
    with create(path) as out:
        pq.write_table(table, out)
        return out.tell()


def read_manifests(path: Folder) -> dict[tuple[str, str], Manifest]:
    """``write_manifests``' manifests by (repository, digest); a missing file reads as none.

    Each is hashed against its digest: the folder may be a shared bucket, and whoever can write
    there must not choose what gets tagged. One that does not match is left out (with a
    warning), so the push reads it again from the primary, verified.
    """
    try:
        with path.open("rb") as source:
            table = pq.read_table(source)
    except FileNotFoundError:
        return {}
    columns = (table.column(c).to_pylist() for c in ("repository", "digest", "media_type", "raw"))
    manifests = {}
    for repository, digest, media_type, raw in zip(*columns):
        found = _digest_of(raw, digest)
        if found != digest:
            log.warning("the run's saved manifest %s@%s hashes to %s, not to its digest (in %s): "
                        "not used; it is read again from the primary", repository, digest,
                        found, path)
            continue
        manifests[(repository, digest)] = Manifest(raw, media_type, digest)
    return manifests


def _digest_of(raw: Any, digest: Any) -> str:
    """``raw``'s digest with ``digest``'s algorithm ("unverifiable" if either is not usable)."""
    algorithm = digest.partition(":")[0] if isinstance(digest, str) else ""
    if not isinstance(raw, bytes) or algorithm not in ("sha256", "sha512"):
        return "unverifiable"
    return f"{algorithm}:{hashlib.new(algorithm, raw).hexdigest()}"
