"""``Settings``: one source, the older variables as second spellings, values checked once; and
the README's settings table is the one ``Settings`` gives."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from registry_replication import settings
from registry_replication.settings import SECONDARY_ID, Settings, SettingsError

README = Path(__file__).resolve().parents[1] / "README.md"
HEADER = "| setting | default | what |\n|---|---|---|\n"


def table() -> str:
    """The README's settings table, as ``Settings`` describes each field."""
    rows = []
    for spec in dataclasses.fields(Settings):
        meta = spec.metadata
        default = spec.default
        shown = meta["shown"] or (
            f"`{default}`" if isinstance(default, (str, bool)) else f"{default:g}"
        )
        name = f"`{spec.name}`" + (f" (or `{meta['env']}`)" if meta["env"] else "")
        rows.append(f"| {name} | {shown} | {meta['about']} |\n")
    return HEADER + "".join(rows)


def test_readme_table_is_the_settings():
    """Every field documented with its default; nothing documented that does not exist. On a
    difference, paste the table this prints into README.md ("Production controls")."""
    expected = table()
    assert expected in README.read_text(), f"README.md's settings table should be:\n{expected}"


def test_readme_names_no_setting_that_does_not_exist():
    text = README.read_text()
    names = {spec.name for spec in dataclasses.fields(Settings)}
    older = {spec.metadata["env"] for spec in dataclasses.fields(Settings)} - {None}
    mentioned = set(re.findall(r"\[registry_replication\]\s+`?(\w+)", text))
    mentioned |= {
        name.lower() for name in re.findall(r"AIRFLOW__REGISTRY_REPLICATION__(\w+)", text)
    }
    assert mentioned - names == set()
    assert set(re.findall(r"\bREGISTRY_(?:REPLICATION|NOTIFICATION)_[A-Z_]+", text)) <= older


def test_source_then_older_variable_then_default(monkeypatch):
    monkeypatch.setenv("REGISTRY_REPLICATION_LEASE_SECONDS", "5")
    monkeypatch.setenv("REGISTRY_REPLICATION_DEEP_VERIFY_DAYS", "3")
    given = {
        "deep_verify_days": "2",
        "artifacts_path_shared": "true",
        "notifier_kwargs": '{"to": "oncall@example.com"}',
        "reconcile_schedule": "",
    }
    loaded = Settings.load(given.get)
    assert loaded.lease_seconds == 5.0  # the older spelling, the source being silent
    assert loaded.deep_verify_days == 2.0  # the source first
    assert loaded.artifacts_path_shared is True
    assert loaded.notifier_kwargs == {"to": "oncall@example.com"}
    assert loaded.reconcile_schedule == ""  # a text setting may be empty ("none")
    assert loaded.task_retries == Settings.task_retries == 3


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        (
            "task_retries",
            "three",
            "is not a whole number: set it like task_retries = 3 "
            "(environment: AIRFLOW__REGISTRY_REPLICATION__TASK_RETRIES=3)",
        ),
        (
            "full_verify_hours",
            "a day",
            "is not a number: set it like full_verify_hours = 168 "
            "(environment: REGISTRY_REPLICATION_FULL_VERIFY_HOURS=168)",
        ),
        ("artifacts_path_shared", "yes please", "is not True or False"),
        ("notifier_kwargs", "[1]", "is not a JSON object"),
    ],
)
def test_a_value_not_of_its_type_names_the_setting_and_an_example(name, value, message):
    with pytest.raises(
        SettingsError, match=re.escape(f"[registry_replication] {name} = {value!r} {message}")
    ):
        Settings.load({name: value}.get)


def test_current_is_loaded_once_and_again_when_the_environment_changes(monkeypatch):
    monkeypatch.delenv("AIRFLOW__REGISTRY_REPLICATION__TASK_RETRIES", raising=False)
    first = settings.current()
    assert settings.current() is first
    monkeypatch.setenv("AIRFLOW__REGISTRY_REPLICATION__TASK_RETRIES", "7")
    assert settings.current().task_retries == 7


def test_the_secondaries_are_the_list_else_the_one_secondary():
    assert Settings.load({}.get).secondaries == ("registry_secondary",)
    assert Settings.load({"secondary_conn_id": "geo"}.get).secondaries == ("geo",)
    listed = Settings.load(
        {"secondary_conn_ids": " registry_eu, ,registry_ap,", "secondary_conn_id": "geo"}.get
    )
    assert listed.secondaries == ("registry_eu", "registry_ap")  # in order, blanks dropped
    assert Settings.load({"secondary_conn_ids": " , "}.get).secondaries == ("registry_secondary",)


ID_CHARACTERS = "abcXYZ019_-"
secondary_ids = st.text(alphabet=ID_CHARACTERS, min_size=1, max_size=100)


@given(st.lists(secondary_ids, min_size=1, max_size=5, unique=True))
def test_any_distinct_ids_of_the_grammar_are_secondaries(ids):
    given_ = {"secondary_conn_ids": ",".join(ids), "primary_conn_id": "the/primary"}
    assert Settings.load(given_.get).secondaries == tuple(ids)


@given(
    st.lists(secondary_ids, max_size=3, unique=True),
    st.one_of(
        st.text(min_size=1, max_size=100).filter(
            lambda t: "," not in t and t.strip() and not SECONDARY_ID.fullmatch(t.strip())
        ),
        st.text(alphabet=ID_CHARACTERS, min_size=101, max_size=140),
    ),
)
def test_an_id_out_of_the_grammar_is_refused_by_name(ids, odd):
    """A dot, a space, a slash, a non-ASCII letter or 101 characters: not a task group's id."""
    with pytest.raises(SettingsError, match=re.escape(f"names {odd.strip()!r}, not a secondary")):
        Settings.load({"secondary_conn_ids": ",".join([*ids, odd])}.get)


def test_an_odd_single_secondary_is_refused_too():
    with pytest.raises(
        SettingsError,
        match=re.escape(
            "[registry_replication] secondary_conn_id = 'geo.secondary' names 'geo.secondary', "
            "not a secondary's id"
        ),
    ):
        Settings.load({"secondary_conn_id": "geo.secondary"}.get)


@pytest.mark.parametrize(
    ("given_", "message"),
    [
        ({"secondary_conn_ids": "eu,ap,eu,ap,us"}, "names ap, eu more than once"),
        (
            {"secondary_conn_ids": "eu,registry_primary"},
            "names the primary's connection 'registry_primary'",
        ),
        ({"secondary_conn_id": "geo", "primary_conn_id": "geo"}, "names the primary's"),
    ],
)
def test_secondaries_that_cannot_be_told_apart_are_refused(given_, message):
    name = next(iter(n for n in given_ if n.startswith("secondary")))
    with pytest.raises(
        SettingsError,
        match=rf"\[registry_replication\] {name} = .* {re.escape(message)}.*"
        r"environment: AIRFLOW__REGISTRY_REPLICATION__",
    ):
        Settings.load(given_.get)
