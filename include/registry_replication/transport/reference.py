"""Repository names, tags and digests, validated against the distribution grammar.

Everything that goes into a URL passes through here first, so a hostile or broken name
(``../``, ``?``, an over-long tag) is rejected before any request is made.
Grammar: https://github.com/distribution/reference/blob/main/reference.go
"""

from __future__ import annotations

import re

_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
REPOSITORY_RE = re.compile(rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*")
TAG_RE = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
# Only the algorithms registries actually use; the hex length is fixed per algorithm.
DIGEST_RE = re.compile(r"(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})")
REPOSITORY_MAX_LENGTH = 255


class InvalidReference(ValueError):
    """A repository name, tag or digest that the distribution grammar does not allow."""


def validate_repository(name: str) -> str:
    if (
        not isinstance(name, str)
        or len(name) > REPOSITORY_MAX_LENGTH
        or not REPOSITORY_RE.fullmatch(name)
    ):
        raise InvalidReference(
            f"invalid repository name {name!r}: lowercase path components "
            "[a-z0-9] joined by '.', '_', '__' or '-', separated by '/', at most 255 characters"
        )
    return name


def validate_tag(tag: str) -> str:
    if not isinstance(tag, str) or not TAG_RE.fullmatch(tag):
        raise InvalidReference(
            f"invalid tag {tag!r}: 1-128 characters of [A-Za-z0-9_.-], not starting with '.' or '-'"
        )
    return tag


def validate_digest(digest: str) -> str:
    if not isinstance(digest, str) or not DIGEST_RE.fullmatch(digest):
        raise InvalidReference(
            f"invalid digest {str(digest)[:100]!r}: expected sha256:<64 lowercase hex> or sha512:<128 lowercase hex>"
        )
    return digest


def validate_reference(reference: str) -> str:
    """A manifest reference: a tag or a digest."""
    if isinstance(reference, str) and ":" in reference:
        return validate_digest(reference)
    return validate_tag(reference)
