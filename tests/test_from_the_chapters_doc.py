"""``docs/from-the-chapters.md`` is code users copy: every Python block in it must run.

Each ```` ```python ```` block runs in a fresh interpreter on the embedded default (no
``HMS_*`` variables) and checks its own claims with ``assert``. A block fenced
```` ```python no-run ```` (it needs a broker or a database the page cannot start) is
compiled only, so it stays valid Python.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "from-the-chapters.md"
NO_RUN = "no-run"

_FENCE = re.compile(r"^```(python[^\n]*)\n(.*?)^```$", re.S | re.M)


def python_blocks() -> list[tuple[int, str, str]]:
    """(line, info string, code) of every ``python`` block of the document, in order."""
    text = DOC.read_text(encoding="utf-8")
    return [
        (text.count("\n", 0, m.start()) + 1, m.group(1).strip(), m.group(2))
        for m in _FENCE.finditer(text)
    ]


BLOCKS = python_blocks()


CHAPTER_SNIPPETS = [
    # The Management Layer chapter's example, line for line.
    """from step_handlers.management_layer import ManagementLayer

ml = ManagementLayer()
request = {
    "application_id": "GR-2023-55",
    "applicant": {"name": "Jane Doe", "bank_account": "12345"},
    "amount": 2500,
}
""",
    # hms-mgmt's start call.
    'await mgmt.start("grantApproval", {"applicationId": app_id, "applicantData": app_data})',
]


def test_the_document_has_its_blocks_and_the_chapters_examples() -> None:
    runnable = [b for b in BLOCKS if NO_RUN not in b[1].split()]
    assert len(runnable) >= 8, "a section lost its example"
    assert {info for _, info, _ in BLOCKS} <= {"python", f"python {NO_RUN}"}, (
        "a python block's fence has a marker this test does not know"
    )
    for snippet in CHAPTER_SNIPPETS:
        assert any(snippet in code for _, info, code in runnable), f"not run: {snippet!r}"


@pytest.mark.parametrize(
    ("line", "info", "code"), BLOCKS, ids=[f"line-{line}" for line, _, _ in BLOCKS]
)
def test_every_python_block_runs(line: int, info: str, code: str) -> None:
    where = f"{DOC.name}:{line}"
    compiled = compile(code, where, "exec")  # every block, no-run ones included
    if NO_RUN in info.split():
        assert compiled is not None
        return
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=50,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, f"{where} failed:\n{proc.stderr}"
