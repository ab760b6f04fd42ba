"""Smoke test of benchmarks/secondaries.py: a --quick run completes and reports every row.

No timing assertions: the script runs end to end (the CLI to one and to three secondaries,
skopeo once per secondary, ``airflow dags test registry_reconcile`` to three), every secondary
verifies in sync, and the primary's blob bytes are what each tool's design reads.
"""

from __future__ import annotations

import re


def test_quick_run_reports_every_row(run_benchmark) -> None:
    stdout = run_benchmark("secondaries.py", "--quick")
    table = stdout.split("== full sync: one primary, fresh secondaries ==", 1)[1]
    lines = table.strip().split("\n\n", 1)[0].splitlines()
    header = re.split(r"\s{2,}", lines[0])
    rows = {
        cells[0]: dict(zip(header, cells))
        for cells in (re.split(r"\s{2,}", line.strip()) for line in lines[2:])
    }
    assert set(rows) == {
        "engine, 1 secondary",
        "engine, 3 secondaries",
        "skopeo x 3",
        "registry_reconcile (dags test) -> 3",
    }, table
    for row in rows.values():
        assert row["every secondary in sync"] == "yes", table
        assert "FAILED" not in row["wall"], table
        assert row["peak RSS"].endswith(" MiB"), table
    # Read once for three secondaries, by the CLI and by the DAG's fan-out; skopeo reads thrice.
    assert rows["engine, 3 secondaries"]["/unique"] == "1.00x", table
    assert rows["registry_reconcile (dags test) -> 3"]["/unique"] == "1.00x", table
    assert rows["skopeo x 3"]["/unique"] == "3.00x", table
    assert "| fanout_blobs | 1 |" in stdout and "| registry_ap.push_manifests | 1 |" in stdout
