"""The README's quickstart is code users paste: it must run and do what it says."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_quickstart_runs_and_completes() -> None:
    text = README.read_text(encoding="utf-8")
    block = re.search(r"## Quickstart\n\n```python\n(.*?)```", text, re.S)
    assert block is not None, "README lost its quickstart"
    proc = subprocess.run(
        [sys.executable, "-c", block.group(1)],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(README.parent)},
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.strip()
    assert out.startswith("completed {'decision': 'approved'"), out
    assert "'finalize: succeeded x1'" in out, out


def test_the_process_workflow_example_runs() -> None:
    text = README.read_text(encoding="utf-8")
    block = re.search(r"## The reference application[^\n]*\n.*?```python\n(.*?)```", text, re.S)
    assert block is not None, "README lost its process_workflow example"
    proc = subprocess.run(
        [sys.executable, "-c", block.group(1)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(README.parent)},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (
        "completed {'routingNumber': '011000015', 'accountNumber': '******3377'}"
    ), proc.stdout


def test_readme_starts_with_the_two_commands() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    fence = lines.index("```sh")
    commands = lines[fence + 1 : lines.index("```", fence)]
    assert [c.split("#")[0].strip() for c in commands] == ["make demo", "make test"]
    assert fence < 5


def test_the_diagrams_of_the_reference_workflows_are_current() -> None:
    text = README.read_text(encoding="utf-8")
    block = re.search(
        r"<!-- hms-bus diagram (\S+) -->\n(.*?)<!-- end of hms-bus diagram -->", text, re.S
    )
    assert block is not None, "README lost its generated diagrams"
    proc = subprocess.run(
        [sys.executable, "-m", "hms_bus", "diagram", block.group(1)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=README.parent,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(README.parent)},
    )
    assert proc.returncode == 0, proc.stderr
    drawn = re.findall(r"```mermaid\n(.*?)```", block.group(2), re.S)
    # One diagram per workflow, a blank line between them.
    assert [d.strip() for d in drawn] == [d.strip() for d in proc.stdout.split("\n\n")], (
        f"README's diagrams are stale: run `hms-bus diagram {block.group(1)}` and paste them"
    )
