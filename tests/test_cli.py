"""The hms-bus command: output, exit codes, one-line errors, graceful stop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
import zipfile
from pathlib import Path
from typing import Any

import pytest
from conftest import eventually

import hms_bus
from hms_bus.cli import main

ROOT = Path(__file__).resolve().parents[1]
APP = "step_handlers.grant_approval:mgmt"
# Over the programme's maximum: rejected by the eligibility check, without waiting for
# an inspector's report (which this process would wait for as long as it runs).
GOOD = {
    "applicationId": "GR-CLI-1",
    "amount": "500000.00",
    "applicant": {"name": "Acme Bakery LLC", "taxId": "12-3456789"},
    "bankAccount": {"routingNumber": "011000015", "accountNumber": "4401923377"},
}


def _hms(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("HMS_BUS_URL", None)
    env.pop("HMS_STORE_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "hms_bus", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
    )


def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("hms-bus: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_demo_shows_approved_rejected_retried_and_refused() -> None:
    proc = _hms("demo", "--no-color")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    table = out[out.index("APPLICATION") :]
    assert table.count("approved APR-") == 3
    assert table.count(" paid (PAY-") == 3  # by a child workflow each
    assert "rejected: credit score 540" in table
    assert "over the programme maximum" in table  # the parallel eligibility check
    assert "rejected: timed out waiting for the signal 'inspectionReport'" in table
    live = out[: out.index("APPLICATION")]
    assert "waiting for inspectionReport" in live and "sends inspectionReport" in live
    assert "child workflow GR-2026-0001/finalize-5" in live
    assert "schedule slaSweep - 0 2 * * * (America/New_York)" in out
    assert "creditCheck✓x3" in table or "creditCheckokx3" in table  # retried after the outage
    assert "refused: step 'validateApp': applicant name is missing" in table
    assert "bank account is malformed" in table
    assert "retrying" in live  # the live view showed the retry
    assert "Traceback" not in proc.stderr


def test_start_on_memory_runs_the_workflow_here(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["start", APP, "grantApproval", json.dumps(GOOD), "--id", "GR-CLI-1", "--json"])
    assert code == 0
    status = json.loads(capsys.readouterr().out)
    assert status["status"] == "completed"
    assert status["result"]["decision"] == "rejected"
    assert "over the programme maximum" in status["result"]["reason"]
    assert [s["step"] for s in status["steps"]] == [
        "validateApp",
        "creditCheck",
        "eligibilityCheck",
        "reject",
    ]
    assert status["steps"][2]["group"] == "checks"


def test_start_exit_code_1_when_the_workflow_fails(capsys: pytest.CaptureFixture[str]) -> None:
    bad = {**GOOD, "applicant": {"name": ""}}
    assert main(["start", APP, "grantApproval", json.dumps(bad)]) == 1
    out = capsys.readouterr().out
    assert "status     failed" in out
    assert "applicant name is missing" in out


def test_payload_from_file_and_stdin(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "app.json"
    f.write_text(json.dumps(GOOD))
    assert main(["start", APP, "grantApproval", f"@{f}"]) == 0
    assert "status     completed" in capsys.readouterr().out
    line = _one_line_error(capsys, ["start", APP, "grantApproval", f"@{tmp_path / 'nope.json'}"])
    assert "cannot read payload file" in line


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["start", APP, "noSuchFlow", "{}"],
            "unknown workflow 'noSuchFlow' (defined: grantPayment, grantApproval, slaSweep)",
        ),
        (["start", APP, "grantApproval", "{not json"], "payload is not valid JSON"),
        (
            ["start", "no_such_module:mgmt", "grantApproval"],
            "cannot import app 'no_such_module:mgmt'",
        ),
        (
            ["start", "step_handlers.grant_approval:nope", "grantApproval"],
            "has no attribute 'nope'",
        ),
        (["start", "json:dumps", "grantApproval"], "not an hms_bus.Management"),
        (["start", "json:JSONDecoder", "grantApproval"], "not an hms_bus.Management"),
        (["start", APP, "grantApproval", '{"amount": -5}'], "applicationId: Field required"),
        (
            ["start", APP, "grantApproval", "{}", "--bus", "rabbit://x"],
            "unknown bus URL 'rabbit://x'",
        ),
        (["worker", APP, "--steps", "grantApproval.nope"], "has no step 'nope'"),
        (["worker", APP, "--steps", "nodots"], "must look like 'workflow.step'"),
        (["status", "no-such-id"], "no workflow 'no-such-id'"),
        (["list", "--status", "sleeping"], "unknown status 'sleeping'"),
        (["cancel", "no-such-id"], "no workflow 'no-such-id'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    assert expected in _one_line_error(capsys, argv)


def test_role_command_stops_gracefully_on_sigterm() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "hms_bus", "run", APP],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 20
        seen = ""
        while "Ctrl-C or SIGTERM to stop" not in seen:
            assert time.monotonic() < deadline, seen
            seen += proc.stderr.readline()
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, seen + rest
    assert "stopped" in rest
    assert "Traceback" not in seen + rest
    assert "grantApproval.creditCheck" in seen  # it said which steps it serves


def test_status_list_history_and_cancel_output(capsys: pytest.CaptureFixture[str]) -> None:
    # A named in-process store outlives the Management that filled it, so the commands
    # (run in this same process) read what a separate deployment would have written.
    url = f"memory://cli-{uuid.uuid4().hex[:8]}"

    async def populate() -> None:
        mgmt = hms_bus.init("cli", bus=url, store=url, monitor={"heartbeat_interval": 0})
        mgmt.define_workflow("wf", ["a", "b"])

        @mgmt.on_step("wf.a")
        async def a(ctx: hms_bus.StepContext) -> Any:
            if ctx.payload.get("bad"):
                raise hms_bus.Fail("bad input")
            if ctx.payload.get("later"):
                return hms_bus.Next("b", delay=3600)

        @mgmt.on_step("wf.b")
        async def b(ctx: hms_bus.StepContext) -> Any:
            return {"done": True}

        async with mgmt:
            await mgmt.run("wf", {}, workflow_id="OK-1", timeout=5)
            await mgmt.run("wf", {"bad": True}, workflow_id="BAD-1", timeout=5)
            await mgmt.start("wf", {"later": True}, workflow_id="LATER-1")
            await eventually(
                lambda: _pending_b(mgmt, "LATER-1"), what="LATER-1 waiting on its timer"
            )

    asyncio.run(populate())
    common = ["--bus", url, "--store", url]

    assert main(["status", "OK-1", *common]) == 0
    out = capsys.readouterr().out
    assert "status     completed" in out
    assert 'result     {"done": true}' in out
    assert re.search(r"^2\s+b\s+succeeded\s+1\s", out, re.M), out

    assert main(["status", "BAD-1", *common]) == 0
    assert "error      step 'a': bad input" in capsys.readouterr().out

    assert main(["list", *common]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["WORKFLOW", "ID", "WORKFLOW"]
    assert [line.split()[0] for line in table[1:]] == ["LATER-1", "BAD-1", "OK-1"]

    assert main(["list", "--status", "failed", "--json", *common]) == 0
    page = json.loads(capsys.readouterr().out)
    assert [w["workflow_id"] for w in page["items"]] == ["BAD-1"]

    assert main(["list", "--limit", "1", *common]) == 0
    captured = capsys.readouterr()
    assert "more: hms-bus list --cursor " in captured.err
    cursor = captured.err.split("--cursor ")[1].split()[0]
    assert main(["list", "--limit", "1", "--cursor", cursor, *common]) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("BAD-1")

    assert main(["history", "OK-1", *common]) == 0
    kinds = [line.split()[1] for line in capsys.readouterr().out.splitlines()]
    assert kinds[0] == "workflowStarted" and kinds[-1] == "workflowCompleted"
    assert kinds.count("completeStep") == 2

    assert main(["cancel", "LATER-1", "--reason", "withdrawn", *common]) == 0
    assert capsys.readouterr().out.strip() == "cancellation requested"
    assert main(["cancel", "OK-1", *common]) == 0
    assert capsys.readouterr().out.strip() == "workflow has already ended"


async def _pending_b(mgmt: hms_bus.Management, wid: str) -> bool:
    st = await mgmt.status(wid)
    step = st.step("b") if st else None
    return step is not None and step.status == "pending" and step.due_at is not None


@pytest.mark.kafka
def test_topics_lists_then_creates_what_the_app_needs(
    capsys: pytest.CaptureFixture[str], kafka_broker: Any
) -> None:
    ns = f"cli{uuid.uuid4().hex[:8]}"
    common = ["--app", APP, "--bus", kafka_broker.url, "--namespace", ns]
    assert main(["topics", *common]) == 0
    out, err = capsys.readouterr()
    assert f"{ns}.grantApproval.creditCheck" in out and "missing" in out
    assert "--create" in err

    assert main(["topics", *common, "--create", "--partitions", "2"]) == 0
    out, _ = capsys.readouterr()
    rows = [line.split() for line in out.splitlines()[1:]]
    assert {r[0] for r in rows} >= {f"{ns}.hms.events", f"{ns}.grantApproval.finalize"}
    assert {(r[1], r[2]) for r in rows} == {("2", "created")}

    assert main(["topics", "--bus", kafka_broker.url, "--namespace", ns, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    by_name = {r["topic"]: r for r in listed}
    assert by_name[f"{ns}.hms.events"] == {
        "topic": f"{ns}.hms.events",
        "partitions": 2,
        "status": "ok",
    }
    # Without --app the step topics exist but are not this (empty) app's.
    assert by_name[f"{ns}.grantApproval.reject"]["status"] == "not used by this app"


def test_topics_and_run_refuse_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert "--partitions" in _one_line_error(capsys, ["topics", "--partitions", "0"])
    assert "--roles" in _one_line_error(capsys, ["run", APP, "--roles", "coordinator,bogus"])


@pytest.mark.postgres
def test_migrate_status_list_and_history_read_the_postgres_store(
    capsys: pytest.CaptureFixture[str], pg_schema: str
) -> None:
    assert main(["migrate", "--store", pg_schema]) == 0
    assert "applied 5 migration(s)" in capsys.readouterr().out
    assert main(["migrate", "--store", pg_schema]) == 0
    assert "up to date" in capsys.readouterr().out

    async def run_one() -> str:
        mgmt = hms_bus.init(
            "cli-pg",
            store=pg_schema,
            monitor={"heartbeat_interval": 0},
            postgres={"migrate": False},
        )
        mgmt.define_workflow("wf", ["only"])

        @mgmt.on_step("wf.only")
        async def only(ctx: hms_bus.StepContext) -> Any:
            return {"ok": True}

        async with mgmt:
            final = await mgmt.run("wf", {"x": 1}, workflow_id="GR-PG-1", timeout=20)
        return final.workflow_id

    wid = asyncio.run(run_one())
    # A separate "process" (this CLI call) sees what the first one stored.
    assert main(["status", wid, "--store", pg_schema, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert (status["status"], status["result"]) == ("completed", {"ok": True})
    assert main(["list", "--store", pg_schema, "--workflow", "wf", "--json"]) == 0
    assert [w["workflow_id"] for w in json.loads(capsys.readouterr().out)["items"]] == [wid]
    assert main(["history", wid, "--store", pg_schema]) == 0
    out = capsys.readouterr().out
    assert "workflowStarted" in out and "workflowCompleted" in out


# -- how the command ends: broken pipe, Ctrl-C, SIGTERM ----------------------------------

QUICK_APP = """
import hms_bus

mgmt = hms_bus.init("quick")
mgmt.define_workflow("wf", ["a"])


@mgmt.on_step("wf.a")
async def a(ctx):
    return {"ok": True}
"""

# Its first step schedules the second an hour later: `start --wait` waits until stopped.
NEVER_APP = """
import hms_bus

mgmt = hms_bus.init("never")
mgmt.define_workflow("wf", ["a", "b"])


@mgmt.on_step("wf.a")
async def a(ctx):
    return hms_bus.Next("b", delay=3600)


@mgmt.on_step("wf.b")
async def b(ctx):
    return None
"""


def _app_env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "quick_app.py").write_text(QUICK_APP)
    (tmp_path / "never_app.py").write_text(NEVER_APP)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    for name in ("HMS_BUS_URL", "HMS_STORE_URL", "NO_COLOR"):
        env.pop(name, None)
    return env


@pytest.mark.parametrize(
    "args",
    [
        ["start", "quick_app:mgmt", "wf", "--wait"],
        ["start", "quick_app:mgmt", "wf", "--wait", "--json"],
        ["worker", "quick_app:mgmt", "--dry-run"],
        ["worker", "--help"],
    ],
    ids=["status-table", "json", "dry-run", "help"],
)
def test_a_reader_that_closes_early_ends_the_command_quietly_with_141(
    tmp_path: Path, args: list[str]
) -> None:
    # As in `hms-bus status ID | head -3`: the reader has gone before the output comes.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "hms_bus", *args],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            cwd=tmp_path,
            env=_app_env(tmp_path),
        )
    finally:
        os.close(write_end)
    assert proc.returncode == 141, proc.stderr
    assert "Traceback" not in proc.stderr and "Error" not in proc.stderr, proc.stderr


def _waiting(tmp_path: Path) -> subprocess.Popen[str]:
    """`start --wait` on a workflow that does not end, once it is waiting."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "hms_bus", "start", "never_app:mgmt", "wf", "--wait"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=_app_env(tmp_path),
        # Python turns SIGINT into KeyboardInterrupt only if it was not ignored, as it is
        # for a background job of a non-interactive shell: give the child the default.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stderr is not None
    seen, deadline = "", time.monotonic() + 30
    while "running every role in this process" not in seen:
        assert time.monotonic() < deadline and proc.poll() is None, seen
        seen += proc.stderr.readline()
    time.sleep(0.3)  # into mgmt.wait()
    return proc


@pytest.mark.parametrize(
    ("sig", "code", "line"),
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")],
    ids=["ctrl-c", "sigterm"],
)
def test_ctrl_c_and_sigterm_stop_a_waiting_command_with_one_line(
    tmp_path: Path, sig: signal.Signals, code: int, line: str
) -> None:
    proc = _waiting(tmp_path)
    try:
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == code, err
    assert err.strip().splitlines()[-1] == line, err
    assert "Traceback" not in err and out == ""


# -- parsing and output ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], "Missing command"),
        (["nope"], "No such command 'nope'"),
        (["start", APP], "Missing argument 'WORKFLOW'"),
        (["list", "--limit", "x"], "'x' is not a valid integer"),
        (["status", "X", "--no-such-option"], "No such option '--no-such-option'"),
        (["status", "X", "--log-level", "LOUD"], "unknown log level 'LOUD'"),
    ],
)
def test_a_command_line_that_does_not_parse_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    assert expected in _one_line_error(capsys, argv)


def test_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"hms-bus {hms_bus.__version__}\n"
    with pytest.raises(SystemExit) as exc:
        main(["start", "-h"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: hms-bus start [OPTIONS] APP WORKFLOW [PAYLOAD]")
    assert "JSON payload, @file, or - for stdin (default {})" in out
    assert "--id ID" in out and "--no-color" in out


def test_the_cli_imports_the_reference_app_only_for_demo() -> None:
    code = (
        "import sys\n"
        "from hms_bus.cli import main\n"
        "try:\n"
        "    main(['worker', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('step_handlers', 'schemas')))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_the_wheel_ships_the_framework_and_not_the_reference_app(tmp_path: Path) -> None:
    """``schemas`` and ``step_handlers`` are names too common to drop into site-packages:
    the reference application runs from a checkout, not from the installed wheel."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    (wheel,) = tmp_path.glob("hms_bus-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        tops = {name.split("/")[0] for name in zf.namelist()}
    assert "hms_bus" in tops
    assert not tops & {"schemas", "step_handlers"}, sorted(tops)
    assert {t for t in tops if not t.startswith("hms_bus")} == set(), sorted(tops)


def test_demo_outside_a_checkout_says_where_the_reference_app_is(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "sys.path[:] = [p for p in sys.path if p not in ('', sys.argv[1])]\n"
        "from hms_bus.cli import main\n"
        "sys.exit(main(['demo', '--no-color']))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(ROOT)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": ""},
    )
    assert proc.returncode == 2, proc.stderr
    assert "reference application" in proc.stderr and "checkout" in proc.stderr
    assert "Traceback" not in proc.stderr


def _on_a_terminal(argv: list[str], env: dict[str, str]) -> str:
    """What the command writes to a terminal (a pseudo-terminal 120 columns wide)."""
    import pty

    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "hms_bus", *argv],
        stdout=follower,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
        env={**env, "COLUMNS": "120"},
    )
    os.close(follower)
    chunks = []
    with contextlib.suppress(OSError):  # EIO once the command has closed the terminal
        while chunk := os.read(leader, 65536):
            chunks.append(chunk)
    os.close(leader)
    assert proc.wait(timeout=60) == 0
    return b"".join(chunks).decode()


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_colour_only_on_a_terminal_and_never_with_no_color(tmp_path: Path) -> None:
    env = _app_env(tmp_path)
    argv = ["start", "quick_app:mgmt", "wf"]
    coloured = _on_a_terminal(argv, env)
    assert "\x1b[" in coloured and "completed" in coloured
    assert "\x1b[" not in _on_a_terminal([*argv, "--no-color"], env)
    assert "\x1b[" not in _on_a_terminal(argv, {**env, "NO_COLOR": "1"})
    piped = subprocess.run(
        [sys.executable, "-m", "hms_bus", *argv], capture_output=True, text=True, env=env
    )
    assert "status     completed" in piped.stdout and "\x1b[" not in piped.stdout
    assert all(line == line.rstrip() for line in piped.stdout.splitlines())


def test_text_and_json_show_the_same_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "same_status_app.py").write_text(QUICK_APP)  # an app object of its own
    monkeypatch.syspath_prepend(str(tmp_path))
    argv = ["start", "same_status_app:mgmt", "wf", '{"n": 1}', "--id", "SAME-1"]
    assert main([*argv, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert main(argv) == 0
    text = capsys.readouterr().out
    head, steps = text.split("\n\n")
    fields = dict(line.split(None, 1) for line in head.splitlines())
    assert fields["workflow"] == doc["workflow_id"] and fields["status"] == doc["status"]
    assert json.loads(fields["result"]) == doc["result"]
    rows = [line.split()[:4] for line in steps.splitlines()[1:]]
    assert rows == [
        [str(s["seq"]), s["step"], s["status"], str(s["attempts"])] for s in doc["steps"]
    ]
