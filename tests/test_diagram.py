"""``hms-bus diagram``: a definition drawn as a mermaid flowchart (pure, and the CLI)."""

from __future__ import annotations

import pytest

import hms_bus
from hms_bus._diagram import mermaid
from hms_bus.cli import main


def test_the_main_path_groups_and_error_paths_are_drawn() -> None:
    mgmt = hms_bus.init("t")
    wf = mgmt.define_workflow(
        "grant",
        ["validate", hms_bus.parallel("credit", "eligible", name="checks"), "finalize"],
        error_steps=["reject"],
        on_error="reject",
        version="7",
    )
    text = mermaid(wf)
    assert text.splitlines()[:2] == ["flowchart LR", "    %% grant, version 7"]
    assert text == mermaid(wf), "deterministic"
    for line in [
        '    subgraph n1 ["parallel: checks"]',
        '        n2["credit"]',
        '        n3["eligible"]',
        '    n5["reject"]:::offpath',
        "    start --> n0",
        "    n0 --> n1",
        "    n1 --> n4",
        "    n4 --> done",
        '    n2 -. "on error" .-> n5',
    ]:
        assert line in text.splitlines(), line
    # reject is the error path of every step but itself.
    assert '    n5 -. "on error" .-> n5' not in text


def test_the_command_prints_one_or_every_workflow(capsys: pytest.CaptureFixture[str]) -> None:
    app = "step_handlers.hms:mgmt"
    assert main(["diagram", app, "grantPayment"]) == 0
    one = capsys.readouterr().out
    assert one.count("flowchart LR") == 1 and '"initiateTransfer"' in one
    assert main(["diagram", app]) == 0
    every = capsys.readouterr().out
    assert every.count("flowchart LR") == 3
    with pytest.raises(SystemExit) as exc:
        main(["diagram", app, "nope"])
    assert exc.value.code == 2
    assert "unknown workflow 'nope' (defined: grantPayment, grantApproval, slaSweep)" in (
        capsys.readouterr().err
    )
