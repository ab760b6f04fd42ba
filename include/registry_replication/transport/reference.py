"""Repository names, tags and digests: typed values, validated against the distribution grammar
once, where the text enters (a catalog or tag list, a manifest's descriptors, a notification,
a DAG run's or the CLI's arguments).

Each type is a ``str`` whose construction is its validation (``Tag("v1")``; ``InvalidReference``
otherwise), so pandas, JSON, SQL and logs take them as they are. ``of()`` returns a value that
is already of the type unchanged and validates anything else: every door of the client calls it,
so everything that goes into a URL has passed the grammar, and a typed value costs nothing.
A hostile or broken name (``../``, ``?``, an over-long tag) is rejected before any request.
Grammar: https://github.com/distribution/reference/blob/main/reference.go
"""

from __future__ import annotations

import re
from typing import Self

_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
REPOSITORY_RE = re.compile(rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*")
TAG_RE = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
# Only the algorithms registries actually use; the hex length is fixed per algorithm.
DIGEST_RE = re.compile(r"(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})")
REPOSITORY_MAX_LENGTH = 255


class InvalidReference(ValueError):
    """A repository name, tag or digest that the distribution grammar does not allow."""


class _Name(str):
    """A string that passed its grammar (a subclass's ``pattern``, at most ``max_length``
    characters); ``of`` wraps a plain one (validating it) and returns one of the type as it is.
    ``InvalidReference`` otherwise: the value (``shown``) and what the grammar expects."""

    __slots__ = ()
    pattern: re.Pattern[str]
    max_length: int | None = None
    kind: str
    expected: str

    def __new__(cls, value: object) -> Self:
        if (
            not isinstance(value, str)
            or (cls.max_length is not None and len(value) > cls.max_length)
            or not cls.pattern.fullmatch(value)
        ):
            raise InvalidReference(f"invalid {cls.kind} {cls.shown(value)}: {cls.expected}")
        return str.__new__(cls, value)

    @classmethod
    def shown(cls, value: object) -> str:
        """The rejected value, as the error names it."""
        return repr(value)

    @classmethod
    def of(cls, value: str) -> Self:
        return value if type(value) is cls else cls(value)


class Repository(_Name):
    """A repository name: lowercase path components joined by ``/``, at most 255 characters."""

    __slots__ = ()
    pattern = REPOSITORY_RE
    max_length = REPOSITORY_MAX_LENGTH
    kind = "repository name"
    expected = (
        "lowercase path components [a-z0-9] joined by '.', '_', '__' or '-', separated by "
        "'/', at most 255 characters"
    )


class Tag(_Name):
    """A tag: 1-128 characters of ``[A-Za-z0-9_.-]``, not starting with ``.`` or ``-``."""

    __slots__ = ()
    pattern = TAG_RE
    kind = "tag"
    expected = "1-128 characters of [A-Za-z0-9_.-], not starting with '.' or '-'"


class Digest(_Name):
    """A content digest: ``sha256:`` and 64 lowercase hex digits, or ``sha512:`` and 128."""

    __slots__ = ()
    pattern = DIGEST_RE
    kind = "digest"
    expected = "expected sha256:<64 lowercase hex> or sha512:<128 lowercase hex>"

    @classmethod
    def shown(cls, value: object) -> str:
        """At most its first 100 characters: a hostile digest may be long."""
        return repr(str(value)[:100])

    @property
    def algorithm(self) -> str:
        """``sha256`` or ``sha512``, as ``hashlib`` names it."""
        return self[: self.index(":")]


# A manifest reference: a tag or a digest.
Reference = Tag | Digest


def reference_of(text: str) -> Reference:
    """A manifest reference (a digest if it holds ``:``, else a tag); a typed one as it is."""
    if type(text) is Tag or type(text) is Digest:
        return text
    return Digest(text) if isinstance(text, str) and ":" in text else Tag(text)
