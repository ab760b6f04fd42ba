"""A run's artifacts (snapshots, differences, plan batches, copy results) in one folder.

The folder is any path-like object with ``/``, ``open`` and ``mkdir``: a ``pathlib.Path``, or a
``RunFolder`` (the DAGs pass that): its files are at a path (Airflow's ``ObjectStoragePath`` for
``file://``, ``s3://`` or ``gs://``) or in the replication store itself, and each write is
recorded in the store with the host that made it, so that a file another task cannot read says
where it was written. Tasks hand each other a reference and small counts instead of the data.
Tables are Parquet; a snapshot is written batch by batch as it is listed (``SnapshotWriter``), so a
registry of any size is never held in memory whole; copy results, which nest, are JSON Lines.

On a local filesystem the folders this module creates are 0700 and its files 0600: they hold
the registries' repository names, digests and error texts (object storage has its own ACLs).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import logging
import os
import sys
from pathlib import Path, PurePath
from typing import IO, Any, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from registry_replication.engine.snapshot import COLUMNS, Listing, ReadManifests, Row
from registry_replication.outcomes import Snapshot
from registry_replication.store.artifacts import ArtifactRecords
from registry_replication.transport.client import Manifest

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


class ArtifactUnreadable(FileNotFoundError):
    """A run's file that this task cannot read; the message says where it was written and what
    to change. Retrying cannot help: the tasks fail at once."""


class RunFolder:
    """One run's folder: its files under ``files`` (a path), or in the store when None.

    ``key`` is ``<dag_id>/<run due time>_<run_id>``, ``run_at`` the run's due time (retention),
    ``host`` the name of this machine as Airflow records it for task instances.
    """

    def __init__(
        self,
        records: ArtifactRecords,
        key: str,
        run_at: dt.datetime,
        *,
        host: str,
        files: Folder | None,
        name: str = "",
    ) -> None:
        self.records, self.key, self.run_at, self.host = records, key, run_at, host
        self.files, self.name = files, name

    def __truediv__(self, name: str) -> RunFolder:
        return RunFolder(
            self.records,
            self.key,
            self.run_at,
            host=self.host,
            files=None if self.files is None else self.files / name,
            name=name,
        )

    def __str__(self) -> str:
        if self.files is not None:
            return str(self.files)
        database = self.records.engine.url.render_as_string(hide_password=True)
        return f"{database} table rr_run_artifacts: {self.key}/{self.name}".rstrip("/")

    def mkdir(self, *args: Any, **kwargs: Any) -> None:
        if self.files is not None:
            make_folder(self.files)

    def open(self, mode: str = "rb") -> Any:
        if "w" in mode:
            if self.files is None:
                return _StoredFile(self)
            self._record(None)  # before the bytes: a reader that misses them learns the writer
            return create(self.files)
        if self.files is not None:
            try:
                return self.files.open(mode)
            except FileNotFoundError:
                raise self._unreadable() from None
        found = self.records.find(self.key, self.name)
        if found is None or found["data"] is None:
            raise self._unreadable()
        return io.BytesIO(found["data"])

    def _record(self, data: bytes | None) -> None:
        self.records.record(self.key, self.name, run_at=self.run_at, host=self.host, data=data)

    def _unreadable(self) -> ArtifactUnreadable:
        found = self.records.find(self.key, self.name)
        if found is None:
            return ArtifactUnreadable(
                f"cannot read the run's file {self}: no task of this run recorded writing it "
                f"(this host: {self.host}). Run folders older than [registry_replication] "
                f"artifacts_retention_days (e.g. 7) are removed: if this run is older, start a "
                f"new run; otherwise clear this run from its first task"
            )
        return ArtifactUnreadable(
            f"cannot read the run's file {self}: written by {found['host']} at "
            f"{found['written_at']:%Y-%m-%d %H:%M:%S} UTC, but this host ({self.host}) does not "
            f"see it. What to do: every worker must reach [registry_replication] artifacts_path: "
            f"unset it (AIRFLOW__REGISTRY_REPLICATION__ARTIFACTS_PATH) to keep the runs' "
            f"artifacts in the replication store, or set it to object storage, e.g. "
            f"s3://my-bucket/registry-replication"
        )


class _StoredFile(io.BytesIO):
    """A file written to the store when it is closed (not when left by an exception)."""

    def __init__(self, folder: RunFolder) -> None:
        super().__init__()
        self.folder, self._failed = folder, False

    def __exit__(self, kind: Any, *rest: Any) -> None:
        self._failed = kind is not None
        super().__exit__(kind, *rest)

    def close(self) -> None:
        if not self.closed:
            data = self.getvalue()
            super().close()
            if not self._failed:
                self.folder._record(data)


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

    def __init__(self, folder: Folder, name: str, *, keep_manifests: bool = False) -> None:
        make_folder(folder)
        self.folder, self.name = folder, name
        self._file = create(folder / f"{name}.parquet")
        self._writer = pq.ParquetWriter(self._file, SNAPSHOT_SCHEMA)
        # The manifests the listing read whole (``stream_snapshot(manifests=...)``), written
        # batch by batch beside the rows, for the plan: one request per tag, across tasks.
        self.manifests: ReadManifests | None = {} if keep_manifests else None
        self._kept = _ManifestTable(folder / manifests_file(name)) if keep_manifests else None

    def write(self, rows: list[Row]) -> None:
        if rows:
            columns = list(zip(*rows))
            self._writer.write_table(
                pa.table(
                    {name: pa.array(values, pa.string()) for name, values in zip(COLUMNS, columns)},
                    schema=SNAPSHOT_SCHEMA,
                )
            )
        if self._kept is not None and self.manifests:
            self._kept.write([(repository, m) for (repository, _), m in self.manifests.items()])
            self.manifests.clear()

    def finish(self, listing: Listing) -> dict[str, Any]:
        """Close the table, write the header; returns the counts and bytes for XCom."""
        self._writer.close()
        size = self._file.tell()
        self._file.close()
        header = json.dumps(
            {"registry": listing.registry, "errors": listing.errors, "problems": listing.problems}
        ).encode()
        with create(self.folder / f"{self.name}.json") as out:
            out.write(header)
        ref = {
            "name": self.name,
            "tags": listing.tags,
            "errors": len(listing.errors),
            "problems": len(listing.problems),
            "bytes": size + len(header),
        }
        if self._kept is not None:
            ref["manifests"], ref["manifests_read"] = manifests_file(self.name), self._kept.close()
        return ref

    def __enter__(self) -> SnapshotWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._file.closed:  # an unfinished listing: leave no header, close the file
            self._writer.close()
            self._file.close()
        if self._kept is not None:
            self._kept.close()


def manifests_file(name: str) -> str:
    """The manifests kept beside ``<name>.parquet`` (a snapshot or an image batch)."""
    return name.removesuffix(".parquet") + ".manifests.parquet"


def write_snapshot(folder: Folder, name: str, snapshot: Snapshot) -> dict[str, Any]:
    """An in-memory snapshot, as ``SnapshotWriter`` writes a streamed one."""
    with SnapshotWriter(folder, name) as writer:
        writer.write(list(snapshot.tags[COLUMNS].astype(str).itertuples(index=False, name=None)))
        return writer.finish(
            Listing(snapshot.registry, len(snapshot.tags), snapshot.errors, snapshot.problems)
        )


def read_snapshot(folder: Folder, name: str) -> Snapshot:
    with (folder / f"{name}.json").open("rb") as source:
        header = json.loads(source.read())
    tags = read_frame(folder / f"{name}.parquet")
    if tags.empty:  # a table of no batches reads as columns of no chunks, which pandas cannot join
        tags = pd.DataFrame(columns=COLUMNS, dtype=str)
    return Snapshot(
        header["registry"],
        tags.reindex(columns=COLUMNS).astype(str),
        list(header["errors"]),
        list(header["problems"] or []),
    )


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


MANIFEST_READ_BATCH = 4096  # manifests converted to Python objects at a time
MANIFEST_SCHEMA = pa.schema(
    [
        ("repository", pa.string()),
        ("digest", pa.string()),
        ("media_type", pa.string()),
        ("raw", pa.binary()),
    ]
)


class _ManifestTable:
    """(repository, manifest) pairs, the exact bytes, media types and digests, as Parquet, one
    row group per ``write``."""

    def __init__(self, path: Folder) -> None:
        self._file = create(path)
        self._writer = pq.ParquetWriter(self._file, MANIFEST_SCHEMA)
        self.rows = self.bytes = 0

    def write(self, manifests: list[tuple[str, Manifest]]) -> None:
        self._writer.write_table(
            pa.table(
                {
                    "repository": pa.array([r for r, _ in manifests], pa.string()),
                    "digest": pa.array([m.digest for _, m in manifests], pa.string()),
                    "media_type": pa.array([m.media_type for _, m in manifests], pa.string()),
                    "raw": pa.array([m.raw for _, m in manifests], pa.binary()),
                },
                schema=MANIFEST_SCHEMA,
            )
        )
        self.rows += len(manifests)

    def close(self) -> int:
        """Close the table (once; again is a no-op); returns the rows written."""
        if not self._file.closed:
            self._writer.close()
            self.bytes = self._file.tell()
            self._file.close()
        return self.rows


def write_manifests(path: Folder, manifests: list[tuple[str, Manifest]]) -> int:
    """(repository, manifest) pairs as Parquet (``read_manifests`` reads them); returns the
    bytes written."""
    table = _ManifestTable(path)
    table.write(manifests)
    table.close()
    return table.bytes


def read_manifests(path: Folder) -> dict[tuple[str, str], Manifest]:
    """``write_manifests``' manifests by (repository, digest); a missing file reads as none.

    Each is hashed against its digest: the folder may be a shared bucket, and whoever can write
    there must not choose what gets tagged. One that does not match is left out (with a
    warning), so the push reads it again from the primary, verified.
    """
    try:
        source = path.open("rb")
    except FileNotFoundError:
        return {}
    manifests = {}
    with source:
        # Batch by batch: the plan of 100,000 tags holds the manifests, not the table too.
        for batch in pq.ParquetFile(source).iter_batches(batch_size=MANIFEST_READ_BATCH):
            columns = (
                batch.column(c).to_pylist() for c in ("repository", "digest", "media_type", "raw")
            )
            for repository, digest, media_type, raw in zip(*columns):
                found = _digest_of(raw, digest)
                if found != digest:
                    log.warning(
                        "the run's saved manifest %s@%s hashes to %s, not to its digest "
                        "(in %s): not used; it is read again from the primary",
                        repository,
                        digest,
                        found,
                        path,
                    )
                    continue
                # Interned: 100,000 manifests share a few repositories and media types.
                manifests[(sys.intern(repository), digest)] = Manifest(
                    raw, sys.intern(media_type), digest
                )
    return manifests


def _digest_of(raw: Any, digest: Any) -> str:
    """``raw``'s digest with ``digest``'s algorithm ("unverifiable" if either is not usable)."""
    algorithm = digest.partition(":")[0] if isinstance(digest, str) else ""
    if not isinstance(raw, bytes) or algorithm not in ("sha256", "sha512"):
        return "unverifiable"
    return f"{algorithm}:{hashlib.new(algorithm, raw).hexdigest()}"
