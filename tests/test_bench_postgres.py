"""``bench/postgres_projector.py`` (``make bench-postgres``) runs: its smallest
configuration against the test server, so that a change to the store cannot leave the
benchmark broken unnoticed. What it measures is not checked here, only that every
system ran, wrote the same rows (the benchmark fails otherwise) and was reported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench" / "postgres_projector.py"
SYSTEMS = {"hms_bus", "baseline", "hms_bus.phases"}

pytestmark = pytest.mark.postgres


def test_postgres_projector_runs(postgres_url: str) -> None:
    # One workflow (14 events) in two batches, one of history: every code path of a
    # default run (the history's template and its copies, ANALYZE, the warm-up's check).
    smallest = ["--workflows", "1", "--in-flight", "1", "--batch", "8", "--history", "1"]
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--store", postgres_url, *smallest, "--repeat", "1"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert proc.returncode == 0, proc.stderr
    *table, last = proc.stdout.strip().splitlines()
    rows = {line.split()[0] for line in table if line.split()[:1]}
    assert rows >= SYSTEMS, proc.stdout  # a row of the table per system
    res = json.loads(last)
    assert (res["events"], res["batches"], res["history_workflows"]) == (14, 2, 1)
    assert set(res["median"]) == SYSTEMS
    for name in SYSTEMS:
        assert res["median"][name]["events_per_s"] > 0
    assert set(res["ratios_over_baseline"]) == SYSTEMS - {"baseline"}
    phases = res["median"]["hms_bus.phases"]["phases_s"]
    assert phases["sql: INSERT_EVENTS"] > 0 and phases["sql: WRITE_FOLD"] > 0
    assert phases["pool acquire+release"] > 0  # the timing proxy saw the store's pool
