"""Typed registry errors whose messages tell an operator what failed and what to do.

Every error carries the registry, the operation, the repository and tag or digest, the HTTP
status and the registry's error code (``BLOB_UNKNOWN``, ``DENIED``, ...). Credentials and
tokens are never part of a message.
"""

from __future__ import annotations

from dataclasses import dataclass

# The answers worth another try, from a registry or a token service: a rate limit, and a
# failure of the registry or of a proxy in front of it that may pass.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})

# What an operator can do about each registry error code (distribution spec error codes).
ADVICE = {
    "UNAUTHORIZED": "check the connection's credentials or signing key: the registry's "
    "auth.token.rootcertbundle must hold this key's certificate, and issuer/service must match its config",
    "DENIED": "the credentials are valid but not allowed this action: the primary needs pull, "
    "the secondary pull and push",
    "BLOB_UNKNOWN": "the blob is missing from that repository; if this is the primary, the image is "
    "incomplete there and must be re-pushed",
    "BLOB_UPLOAD_UNKNOWN": "the upload session expired or was cancelled; rerun the sync, it resumes",
    "BLOB_UPLOAD_INVALID": "the registry rejected the upload; rerun the sync, it starts the blob over",
    "DIGEST_INVALID": "the bytes do not match their digest: the blob is corrupt at the source and "
    "must be re-pushed there",
    "SIZE_INVALID": "the blob's length does not match its descriptor: re-push the image at the source",
    "MANIFEST_UNKNOWN": "the tag or digest does not exist (it may have been deleted since it was "
    "listed); the next reconcile catches up",
    "MANIFEST_BLOB_UNKNOWN": "a blob or child manifest the manifest references is not on the registry "
    "yet; rerun the sync, which copies blobs before manifests",
    "MANIFEST_INVALID": "the registry rejected the manifest; check that the manifest type is "
    "supported by the registry's version",
    "MANIFEST_UNVERIFIED": "schema 1 signed manifests are not supported; rebuild the image with a "
    "current client",
    "NAME_INVALID": "the repository name is not valid for this registry",
    "NAME_UNKNOWN": "the repository does not exist on the registry",
    "TAG_INVALID": "the tag is not valid for this registry",
    "UNSUPPORTED": "the registry does not allow this operation (deleting needs "
    "storage.delete.enabled: true)",
    "TOOMANYREQUESTS": "the registry is rate limiting: lower max_connections / parallelism, or "
    "raise the registry's limit",
    "PAGINATION_NUMBER_INVALID": "lower the catalog page size to the registry's catalog.maxentries",
}


def where(
    registry: str, operation: str, repository: str | None = None, reference: str | None = None
) -> dict[str, str]:
    """What an error names of where it happened: the registry, the operation, and the
    repository and reference it was about when given (``RegistryError``'s fields of the same
    names; one left out can be given on its own)."""
    named = {"repository": repository, "reference": reference}
    return {
        "registry": registry,
        "operation": operation,
        **{field: value for field, value in named.items() if value is not None},
    }


@dataclass(eq=False)
class RegistryError(Exception):
    """A registry request that failed for good (after any retries)."""

    message: str
    registry: str = ""
    operation: str = ""
    repository: str | None = None
    reference: str | None = None
    status: int | None = None
    code: str | None = None
    detail: str | None = None
    advice: str | None = None

    def __post_init__(self) -> None:
        super().__init__(self.message)
        if self.advice is None:
            self.advice = ADVICE.get(self.code or "") or _advice_for_status(self.status)

    @property
    def target(self) -> str:
        if not self.repository:
            return ""
        if not self.reference:
            return self.repository
        sep = "@" if ":" in self.reference else ":"
        return f"{self.repository}{sep}{self.reference}"

    def __str__(self) -> str:
        text = self.without_advice
        if self.advice:
            text += f". What to do: {self.advice}"
        return text

    @property
    def without_advice(self) -> str:
        """The message without its "What to do" part (for reports that show advice apart)."""
        where = " ".join(p for p in (self.operation, self.target) if p)
        head = f"{where} on {self.registry}" if self.registry else where
        status = " ".join(
            p for p in (f"HTTP {self.status}" if self.status else "", self.code or "") if p
        )
        text = f"{head}: " if head else ""
        text += f"{status}: {self.message}" if status else self.message
        if self.detail:
            text += f" ({self.detail})"
        return text


class RegistryAuthError(RegistryError):
    """The registry refused our credentials or token (401/403)."""


class NotFoundError(RegistryError):
    """The repository, manifest or blob does not exist (404)."""


@dataclass(eq=False)
class RegistryUnavailableError(RegistryError):
    """Connection failures, timeouts, 5xx and 429: retried by the client, raised once they
    outlast its retries."""

    retry_after: float | None = None  # seconds the registry asked us to wait (Retry-After)


class DigestMismatchError(RegistryError):
    """Bytes that do not hash to the digest they were fetched or pushed under."""


@dataclass(eq=False)
class LimitExceeded(RegistryError):
    """Something a registry sent is larger, deeper or slower than a bound allows.

    ``setting`` names the bound (a connection extra of the registry that sent it); a real
    registry never comes near the defaults, so the object is broken or hostile.
    """

    setting: str = ""
    limit: float | int | None = None

    def __post_init__(self) -> None:
        self.message = f"{self.message} (bound: {self.setting} = {self.limit})"
        if self.advice is None:
            self.advice = (
                f"a well-formed image never comes near this bound ({self.setting} = "
                f"{self.limit}): delete or re-push the object on the registry; if it is "
                f"legitimate, raise {self.setting} in the registry connection's extra. Other "
                "images and repositories are not held back"
            )
        super().__post_init__()


def _advice_for_status(status: int | None) -> str | None:
    if status is None:
        return "check that the registry URL in the connection is right and the registry is running"
    if status >= 500:
        return "the registry failed internally; check its logs and storage backend, then rerun"
    if status == 429:
        return ADVICE["TOOMANYREQUESTS"]
    if status in (401, 403):
        return ADVICE["UNAUTHORIZED" if status == 401 else "DENIED"]
    return None
