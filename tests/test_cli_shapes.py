"""``hms-bus signal``, ``schedules``, ``redrive``, ``dead-letters`` and ``ui``, as separate
processes on Kafka and Postgres, against roles running in this test: what an operator
types at a shell."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import FAST, eventually
from kafka_broker import Broker

from hms_bus.cli import load_app

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

ROOT = Path(__file__).resolve().parents[1]

APP = """
import hms_bus

mgmt = hms_bus.init("signals")
mgmt.define_workflow("permit", ["request", "issue"])
mgmt.schedule("nightly", "permit", cron="0 2 * * *", timezone="Europe/Paris")


@mgmt.on_step("permit.request")
async def request(ctx):
    return hms_bus.WaitFor("approval")


@mgmt.on_step("permit.issue")
async def issue(ctx):
    return {"approved_by": ctx.signal["by"]}
"""


class Shell:
    """An app written to ``tmp_path``, loaded here with roles on Kafka and Postgres in a
    namespace of its own, and ``hms-bus`` commands run against it as separate processes."""

    def __init__(
        self, tmp_path: Path, module: str, source: str, broker: Broker, store: str, **env: str
    ) -> None:
        (tmp_path / f"{module}.py").write_text(source)
        ns = f"cli{uuid.uuid4().hex[:8]}"
        self.cwd = tmp_path
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
            "HMS_BUS_URL": broker.url,
            "HMS_STORE_URL": store,
            "HMS_NAMESPACE": ns,
            "NO_COLOR": "1",
            **env,
        }
        sys.path.insert(0, str(tmp_path))
        try:
            self.mgmt = load_app(f"{module}:mgmt")
        finally:
            sys.path.remove(str(tmp_path))
        self.mgmt.configure(bus=broker.url, store=store, namespace=ns, **FAST)

    async def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "hms_bus", *args],
            capture_output=True,
            text=True,
            timeout=90,
            cwd=self.cwd,
            env=self.env,
        )


async def test_signal_and_schedules_from_the_command_line(
    tmp_path: Path, kafka_broker: Broker, pg_schema: str
) -> None:
    sh = Shell(
        tmp_path, "signal_app", APP, kafka_broker, pg_schema, HMS_TRANSPORT__FETCH_MAX_WAIT="0.01"
    )
    mgmt, hms = sh.mgmt, sh.run
    async with mgmt:
        started = await mgmt.start("permit", {}, workflow_id="P-1")

        async def waits() -> bool:
            st = await mgmt.status("P-1")
            step = st.step("request") if st is not None else None
            return step is not None and step.waiting_for == "approval"

        await eventually(waits, within=20, what="the wait")
        shown = await hms("status", "P-1")
        assert "waiting for signal 'approval'" in shown.stdout, shown.stdout + shown.stderr

        sent = await hms("signal", "signal_app:mgmt", "P-1", "approval", '{"by": "inspector 7"}')
        assert sent.returncode == 0, sent.stderr
        assert "signal 'approval' recorded for P-1" in sent.stdout
        final = await started.wait(timeout=20)
        assert final.result == {"approved_by": "inspector 7"}

        late = await hms("signal", "signal_app:mgmt", "P-1", "approval")
        assert late.returncode == 1 and "already ended" in late.stdout
        missing = await hms("signal", "signal_app:mgmt", "P-404", "approval")
        assert missing.returncode == 2 and "no workflow 'P-404'" in missing.stderr
        bad = await hms("signal", "signal_app:mgmt", "P-1", "approval", "{x")
        assert bad.returncode == 2 and "not valid JSON" in bad.stderr

        listed = await hms("schedules", "signal_app:mgmt", "--json")
        assert listed.returncode == 0, listed.stderr
        rows: list[dict[str, Any]] = json.loads(listed.stdout)
        assert [(r["name"], r["workflow"], r["rule"]) for r in rows] == [
            ("nightly", "permit", "0 2 * * * (Europe/Paris)")
        ]
        assert rows[0]["last_tick"] is not None  # the scheduler role recorded where it is
        assert rows[0]["next_tick"].endswith(("T01:00:00+00:00", "T00:00:00+00:00"))
        table = await hms("schedules", "signal_app:mgmt")
        assert "nightly" in table.stdout and "NEXT TICK" in table.stdout


FAILING_APP = """
import os

import hms_bus

mgmt = hms_bus.init("redrive-cli")
mgmt.define_workflow("pay", ["transfer"])


@mgmt.on_step("pay.transfer", retry=hms_bus.RetryPolicy(max_attempts=1))
async def transfer(ctx):
    if not os.path.exists(os.environ["BANK_OPEN"]):
        raise RuntimeError("the bank interface is closed")
    return {"paid": ctx.payload["amount"]}
"""


async def test_redrive_and_dead_letters_from_the_command_line(
    tmp_path: Path, kafka_broker: Broker, pg_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened = tmp_path / "bank-open"
    monkeypatch.setenv("BANK_OPEN", str(opened))
    sh = Shell(tmp_path, "failing_app", FAILING_APP, kafka_broker, pg_schema)
    mgmt, hms = sh.mgmt, sh.run
    async with mgmt:
        for wid in ("PAY-1", "PAY-2"):
            failed = await mgmt.run("pay", {"amount": 10}, workflow_id=wid, timeout=20)
            assert failed.status == "failed"

        listed = await hms("dead-letters", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        rows = json.loads(listed.stdout)
        assert {r["workflow_id"] for r in rows} == {"PAY-1", "PAY-2"}
        assert all("the bank interface is closed" in r["reason"] for r in rows)
        one = next(r["id"] for r in rows if r["workflow_id"] == "PAY-1")
        shown = await hms("dead-letters", "show", one)
        assert shown.returncode == 0 and json.loads(shown.stdout)["workflow_id"] == "PAY-1"
        table = await hms("dead-letters", "list", "--since", "1h")
        assert "PAY-2" in table.stdout and "REASON" in table.stdout

        opened.touch()  # the fix
        again = await hms("redrive", "failing_app:mgmt", "PAY-1")
        assert again.returncode == 0, again.stderr
        assert "workflow PAY-1 runs again" in again.stdout
        assert (await mgmt.wait("PAY-1", timeout=20)).result == {"paid": 10}
        done = await hms("redrive", "failing_app:mgmt", "PAY-1")
        assert done.returncode == 1 and "nothing to redrive" in done.stdout

        sent = await hms("dead-letters", "redrive", "--app", "failing_app:mgmt", "--reason", "bank")
        assert "workflow PAY-2 redriven from step 'transfer'" in sent.stdout, sent.stderr
        assert "PAY-1 is completed: nothing to redrive" in sent.stdout
        assert sent.returncode == 1  # one of the two was not sent back
        assert (await mgmt.wait("PAY-2", timeout=20)).status == "completed"


async def test_the_console_from_the_command_line(
    tmp_path: Path, kafka_broker: Broker, pg_schema: str
) -> None:
    """``hms-bus ui`` serves the console on the port it prints, takes actions only with
    HMS_UI__TOKEN, and stops on SIGTERM with exit 0."""
    sh = Shell(tmp_path, "signal_app", APP, kafka_broker, pg_schema, HMS_UI__TOKEN="sesame")
    mgmt = sh.mgmt
    async with mgmt:
        started = await mgmt.start("permit", {}, workflow_id="P-7")
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "hms_bus", "ui", "signal_app:mgmt", "--port", "0"),
            cwd=sh.cwd,
            env=sh.env,
            stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stderr is not None
        try:
            line = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
            assert "actions enabled (HMS_UI__TOKEN)" in line, line
            base = line.split(" on ", 1)[1].split(" ", 1)[0]
            async with httpx.AsyncClient(base_url=base) as http:
                home = await http.get("/")
                assert home.status_code == 200 and "P-7" in home.text
                refused = await http.post("/api/actions/cancel", json={"workflow_id": "P-7"})
                assert refused.status_code == 403
                await eventually(lambda: waiting_for(mgmt, "P-7"), within=20, what="the wait")
                sent = await http.post(
                    "/api/actions/signal",
                    json={"workflow_id": "P-7", "name": "approval", "data": '{"by": "ui"}'},
                    headers={"X-HMS-Token": "sesame"},
                )
                assert sent.status_code == 200 and sent.json()["ok"], sent.text
            assert (await started.wait(timeout=20)).result == {"approved_by": "ui"}
            proc.terminate()
            rest = (await asyncio.wait_for(proc.stderr.read(), 30)).decode()
            assert await proc.wait() == 0, rest
            assert "stopped" in rest
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def waiting_for(mgmt: Any, workflow_id: str) -> bool:
    st = await mgmt.status(workflow_id)
    return st is not None and any(s.waiting_for for s in st.steps)
