"""Compare two snapshots with pandas: what is missing, outdated, extra or in sync."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from registry_replication.engine.plan import WantedTag
from registry_replication.outcomes import Snapshot
from registry_replication.transport.reference import Digest, Repository, Tag

MISSING = "missing"  # on the primary only
OUTDATED = "outdated"  # the tag points to different digests
EXTRA = "extra"  # on the secondary only
IN_SYNC = "in_sync"
STATUSES = [MISSING, OUTDATED, EXTRA, IN_SYNC]
COLUMNS = ["repository", "tag", "status", "digest_primary", "digest_secondary", "media_type"]


def diff(primary: Snapshot, secondary: Snapshot) -> pd.DataFrame:
    """One row per (repository, tag) on either side, with both digests and a ``status``."""
    merged = pd.merge(
        primary.tags,
        secondary.tags,
        on=["repository", "tag"],
        how="outer",
        suffixes=("_primary", "_secondary"),
    )
    on_primary = merged["digest_primary"].notna()
    on_secondary = merged["digest_secondary"].notna()
    merged["status"] = np.select(
        [
            on_primary & ~on_secondary,
            ~on_primary & on_secondary,
            merged["digest_primary"] != merged["digest_secondary"],
        ],
        [MISSING, EXTRA, OUTDATED],
        default=IN_SYNC,
    )
    merged["media_type"] = merged["media_type_primary"].fillna(merged["media_type_secondary"])
    return merged[COLUMNS].sort_values(["repository", "tag"], ignore_index=True)


def wanted(differences: pd.DataFrame) -> list[WantedTag]:
    """The ``missing`` and ``outdated`` tags, as the plan takes them: typed again (a
    DataFrame holds plain strings), each name validated once for the plan and the copy."""
    rows = differences[differences["status"].isin([MISSING, OUTDATED])]
    return [
        WantedTag(Repository.of(r.repository), Tag.of(r.tag), Digest.of(r.digest_primary))
        for r in rows[["repository", "tag", "digest_primary"]].itertuples(index=False)
    ]


def summary(differences: pd.DataFrame) -> pd.DataFrame:
    """Per repository: how many tags are in each status."""
    counts = pd.crosstab(differences["repository"], differences["status"])
    return counts.reindex(columns=STATUSES, fill_value=0)


def checksums(snapshot: Snapshot) -> pd.Series:
    """Per repository, SHA-256 over its sorted ``tag digest`` lines (Geo's verification)."""
    tags = snapshot.tags.sort_values(["repository", "tag"])
    lines = tags["tag"] + " " + tags["digest"] + "\n"
    return lines.groupby(tags["repository"]).agg(
        lambda group: hashlib.sha256("".join(group).encode()).hexdigest()
    )


def verify(primary: Snapshot, secondary: Snapshot) -> pd.DataFrame:
    """Both sides' checksum per repository, and whether they match."""
    report = pd.DataFrame({"primary": checksums(primary), "secondary": checksums(secondary)})
    report.index.name = "repository"
    report["in_sync"] = report["primary"] == report["secondary"]
    return report.reset_index()
