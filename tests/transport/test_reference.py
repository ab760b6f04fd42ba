"""Typed references: construction is validation, ``of`` validates only plain text, and the
client validates plain text once. The other doors where names enter (a notification, a
listing) are ``web/test_notifications.py``'s and ``engine/test_snapshot.py``'s."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from registry_replication.transport import reference
from registry_replication.transport.reference import (
    DIGEST_RE,
    REPOSITORY_RE,
    TAG_RE,
    Digest,
    InvalidReference,
    Repository,
    Tag,
    reference_of,
)

DIGEST = "sha256:" + "a" * 64
TYPES = (Repository, Tag, Digest)
# Any text, and text near each grammar (so that both answers are drawn often).
TEXT = st.one_of(
    st.text(max_size=300),
    st.from_regex(REPOSITORY_RE, fullmatch=True),
    st.from_regex(TAG_RE, fullmatch=True),
    st.from_regex(DIGEST_RE, fullmatch=True),
    st.from_regex(r"(sha256|sha512|md5):[a-fA-F0-9]{60,130}", fullmatch=True),
)


@given(TEXT, st.sampled_from(TYPES))
def test_any_text_is_a_typed_value_equal_to_itself_or_refused(text, kind):
    try:
        typed = kind(text)
    except InvalidReference as exc:
        assert isinstance(exc, ValueError) and str(exc).startswith("invalid ")
        with pytest.raises(InvalidReference):
            kind.of(text)
        return
    assert type(typed) is kind and typed == text and hash(typed) == hash(text)
    assert str(typed) == text and kind.of(typed) is typed and kind.of(text) == text


@given(TEXT)
def test_a_reference_is_a_digest_with_a_colon_else_a_tag(text):
    try:
        typed = reference_of(text)
    except InvalidReference:
        with pytest.raises(InvalidReference):
            (Digest if ":" in text else Tag)(text)
        return
    assert typed == text and type(typed) is (Digest if ":" in text else Tag)
    assert reference_of(typed) is typed


@pytest.mark.parametrize("value", [None, 12, b"app", ["app"], {"a": 1}])
def test_what_is_not_text_is_refused_by_each_type(value):
    for kind in TYPES:
        with pytest.raises(InvalidReference):
            kind(value)
    with pytest.raises(InvalidReference):
        reference_of(value)


def test_the_messages_name_the_value_and_the_grammar():
    with pytest.raises(InvalidReference, match=r"invalid repository name 'Foo/app': lowercase"):
        Repository("Foo/app")
    with pytest.raises(InvalidReference, match=r"invalid tag '\.hidden': 1-128 characters"):
        Tag(".hidden")
    with pytest.raises(InvalidReference, match=r"invalid digest 'None': expected sha256:"):
        Digest(None)
    with pytest.raises(InvalidReference) as huge:
        Digest("sha256:" + "z" * 10_000)
    assert len(str(huge.value)) < 300  # a huge digest is clipped in the message


class CountingPattern:
    """A grammar's pattern that counts its matches."""

    def __init__(self, pattern):
        self.pattern, self.calls = pattern, 0

    def fullmatch(self, text):
        self.calls += 1
        return self.pattern.fullmatch(text)


@pytest.fixture
def matches(monkeypatch):
    counting = {
        kind: CountingPattern(kind.pattern)
        for kind in (reference.Repository, reference.Tag, reference.Digest)
    }
    for kind, pattern in counting.items():
        monkeypatch.setattr(kind, "pattern", pattern)
    return lambda: sum(p.calls for p in counting.values())


def test_of_a_typed_value_does_not_validate_again(matches):
    repository, tag, digest = Repository("group/app"), Tag("1.0"), Digest(DIGEST)
    assert matches() == 3
    for _ in range(100):
        assert Repository.of(repository) is repository and Tag.of(tag) is tag
        assert Digest.of(digest) is digest
        assert reference_of(tag) is tag and reference_of(digest) is digest
    assert matches() == 3
    assert Tag.of("1.0") == "1.0" and matches() == 4  # plain text: validated, once
    assert (
        Digest(DIGEST).algorithm == "sha256" and Digest("sha512:" + "b" * 128).algorithm == "sha512"
    )


def test_a_tag_of_a_repositorys_text_is_validated_as_a_tag(matches):
    """``of`` trusts only its own type: a Repository is not taken for a Tag."""
    with pytest.raises(InvalidReference):
        Tag.of(Repository("group/app"))
    assert type(Tag.of(Repository("app"))) is Tag


# -- the client's door ---------------------------------------------------------------------------


def test_the_client_validates_plain_text_once_and_typed_values_never(primary_reader, matches):
    repository, tag, digest = Repository("app"), Tag("v1"), Digest(DIGEST)
    start = matches()
    assert primary_reader.tags(repository) == []
    assert primary_reader.head_manifest(repository, tag) is None  # and its confirming GET
    assert primary_reader.blob_size(repository, digest) is None
    assert matches() == start
    assert primary_reader.head_manifest("app", "v1") is None
    assert matches() == start + 2  # each name once, not again for the confirming GET
