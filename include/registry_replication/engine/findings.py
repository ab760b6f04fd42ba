"""What a deep verification found: each blob or manifest that was not as its descriptor says
(``Finding``, with its data file on the secondary's storage) and the run's ``DeepReport``."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from registry_replication.engine.copy import BlobResult, ImageResult
from registry_replication.outcomes import CheckOutcome, VerifyLevel, human_size

DATA_PATH = "docker/registry/v2/blobs/{algorithm}/{prefix}/{hex}/data"


def data_path(digest: str) -> str:
    """Where distribution's storage keeps a blob's (or manifest's) bytes, under its root."""
    algorithm, hex_ = digest.split(":", 1)
    return DATA_PATH.format(algorithm=algorithm, prefix=hex_[:2], hex=hex_)


@dataclass
class Finding:
    """One blob or manifest of a deep verification that was not as its descriptor says."""

    repository: str
    digest: str
    kind: str  # blob | manifest
    outcome: CheckOutcome
    expected: str
    found: str
    level: VerifyLevel
    error: str | None = None

    @property
    def data_path(self) -> str:
        return data_path(self.digest)

    def line(self) -> str:
        where = f"{self.kind} {self.repository}@{self.digest}"
        if self.outcome == CheckOutcome.DAMAGED:
            return (
                f"{where} is damaged on the secondary: expected {self.expected}, found "
                f"{self.found}; its data file is {self.data_path} under the registry's "
                "storage root. The registry never overwrites an existing data file, so no "
                "copy can repair it. What to do: remove that data file on the secondary, "
                "then run registry_reconcile with verify=blobs, which copies it again"
            )
        if self.outcome == CheckOutcome.REPAIRED:
            return f"{where} was missing on the secondary ({self.found}); copied again"
        return f"{where}: {self.found}" + (f" ({self.error})" if self.error else "")


@dataclass
class DeepReport:
    """What a ``blobs`` or ``content`` verification looked at and found."""

    level: VerifyLevel
    repositories: list[str]
    findings: list[Finding] = field(default_factory=list)
    manifests_checked: int = 0
    blobs_checked: int = 0  # (repository, blob) HEADs
    blobs_read: int = 0  # distinct digests read back (content)
    bytes_read: int = 0
    blobs: list[BlobResult] = field(default_factory=list)  # the repair's copies
    images: list[ImageResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def problems(self) -> list[Finding]:
        return [f for f in self.findings if f.outcome != CheckOutcome.REPAIRED]

    @property
    def failed(self) -> bool:
        return bool(self.problems)

    def damaged(self) -> dict[str, list[Finding]]:
        found: dict[str, list[Finding]] = defaultdict(list)
        for f in self.findings:
            if f.outcome == CheckOutcome.DAMAGED:
                found[f.repository].append(f)
        return dict(found)

    def line(self) -> str:
        repaired = sum(f.outcome == CheckOutcome.REPAIRED for f in self.findings)
        content = (
            f", {self.blobs_read} blobs read back ({human_size(self.bytes_read)})"
            if self.level == VerifyLevel.CONTENT
            else ""
        )
        return (
            f"{self.level} verification of {len(self.repositories)} repositories: "
            f"{self.manifests_checked} manifests fetched, {self.blobs_checked} blobs "
            f"checked{content}; {repaired} repaired, {len(self.problems)} problems"
        )
