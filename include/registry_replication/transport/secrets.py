"""Keep credentials and tokens out of logs.

The core cannot import Airflow, so it reports its long-lived secrets (passwords, private keys)
here; inside Airflow, ``registry_replication.airflow`` registers Airflow's secret masker, which
then redacts those values from every task log line. Short-lived bearer tokens are not reported
(there is one per repository scope); they never leave the Authorization header.
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
