"""The chaos suite's short form (``tests/chaos/suite.py --short``), as CI runs it.

Every role in its own process on a broker and a Postgres server of the suite's own;
one fault per scenario; the invariants checked once the system is quiet. The long form
is ``make chaos``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.slow, pytest.mark.serial]

SUITE = Path(__file__).resolve().parent / "chaos" / "suite.py"


@pytest.mark.timeout(300)
def test_every_invariant_holds_under_every_fault(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(SUITE), "--short"],
        capture_output=True,
        text=True,
        timeout=280,
        env={**os.environ, "CHAOS_TMP": str(tmp_path), "COLUMNS": "160"},
        check=False,
    )
    report = done.stdout + done.stderr
    assert done.returncode == 0, report
    assert "every invariant held under every fault" in report
    for fault in ("worker SIGKILL", "broker SIGSTOP", "Postgres restart", "duplicate delivery"):
        assert fault in report
