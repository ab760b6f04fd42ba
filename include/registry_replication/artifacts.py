"""A run's artifacts (snapshots, differences, plan batches) as Parquet files in one folder.

The folder is any path-like object with ``/``, ``open`` and ``mkdir``: a ``pathlib.Path``, or
Airflow's ``ObjectStoragePath`` for ``file://``, ``s3://`` or ``gs://`` (the DAGs pass that), so
tasks hand each other a reference and small counts instead of the data itself.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

import numpy as np
import pandas as pd

from registry_replication.snapshot import COLUMNS, Snapshot


class Folder(Protocol):
    """What the helpers need of a path: ``pathlib.Path`` and ``ObjectStoragePath`` both fit."""

    def __truediv__(self, name: str) -> Folder: ...
    def open(self, mode: str = ...) -> Any: ...
    def mkdir(self, *args: Any, **kwargs: Any) -> None: ...


def write_frame(path: Folder, frame: pd.DataFrame) -> int:
    """Write ``frame`` as Parquet; returns the bytes written."""
    with path.open("wb") as out:
        frame.to_parquet(out, index=False)
        return out.tell()


def read_frame(path: Folder) -> pd.DataFrame:
    with path.open("rb") as source:
        return pd.read_parquet(source)


def write_snapshot(folder: Folder, name: str, snapshot: Snapshot) -> dict[str, Any]:
    """``<name>.parquet`` (the tags) and ``<name>.json`` (registry, errors, problems); returns
    the counts and bytes for XCom."""
    folder.mkdir(parents=True, exist_ok=True)
    size = write_frame(folder / f"{name}.parquet", snapshot.tags[COLUMNS].astype(str))
    header = json.dumps({"registry": snapshot.registry, "errors": snapshot.errors,
                         "problems": snapshot.problems}).encode()
    with (folder / f"{name}.json").open("wb") as out:
        out.write(header)
    return {"name": name, "tags": len(snapshot.tags), "errors": len(snapshot.errors),
            "problems": len(snapshot.problems), "bytes": size + len(header)}


def read_snapshot(folder: Folder, name: str) -> Snapshot:
    with (folder / f"{name}.json").open("rb") as source:
        header = json.loads(source.read())
    tags = read_frame(folder / f"{name}.parquet")
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
