"""Keep credentials and tokens out of logs.

The core cannot import Airflow, so it reports every secret it handles (passwords, private keys,
minted tokens) here; inside Airflow, ``registry_replication.airflow`` registers Airflow's secret
masker, which then redacts those values from every task log line.
"""

from __future__ import annotations

from collections.abc import Callable

_maskers: list[Callable[[str], None]] = []


def register_masker(masker: Callable[[str], None]) -> None:
    if masker not in _maskers:
        _maskers.append(masker)


def mask(secret: str | bytes | None) -> None:
    if not secret:
        return
    value = secret.decode() if isinstance(secret, bytes) else secret
    for masker in _maskers:
        masker(value)
