"""bench/latency.py: the in-process latency table, with the machine-reference rows beside the bundles."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bench.scripts import load
from tests.serve.conftest import build_tiny

latency = load("latency")


def test_the_table_has_every_workload_of_the_bundle_and_the_machine_reference(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle = build_tiny(tmp_path / "gcn", "gcn").path
    assert latency.main([str(bundle), "--calls", "1000"]) == 0
    table, _, relative = capsys.readouterr().out.partition("median total relative to")
    rows = [[cell.strip() for cell in line.split("|")] for line in table.splitlines() if "|" in line]
    header, body = rows[0], rows[2:]
    assert [(r[0] == latency.REFERENCE, r[1]) for r in body] == [
        (False, "single"), (False, "batch8"), (False, "new"), (True, "onnx no-op"), (True, "matmul 64")]
    total = header.index("total p50")
    for row in body:
        p50, p99 = float(row[total]), float(row[total + 1])
        assert 0 < p50 <= p99
    # Only bundle rows are compared with the first bundle; the reference rows have no such baseline.
    assert latency.REFERENCE not in relative and relative.count(": x") == 3


def test_reference_rows_time_the_calls_they_say() -> None:
    rows = latency.reference(1000, threads=1)
    assert [(r["mode"], r["calls"]) for r in rows] == [("onnx no-op", 1000), ("matmul 64", 1000)]
    assert all(r["cache p50"] == "" and r["inference p99"] == "" for r in rows)
