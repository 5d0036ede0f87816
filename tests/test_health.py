"""Health: a worker gone without goodbye, stuck steps, ``hms-bus health``, ``/healthz``."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import MakeMgmt, eventually

import hms_bus
from hms_bus import cli
from hms_bus._envelope import utcnow
from hms_bus._health import HealthReport, ProcessReport

FAST = {"heartbeat_interval": 0.05, "missed_heartbeats": 3, "check_interval": 0.05}
ROOT = Path(__file__).resolve().parent.parent


async def test_a_worker_gone_mid_step_is_reported_down_and_its_step_stuck(
    make_mgmt: MakeMgmt,
) -> None:
    watcher = make_mgmt(
        "watcher", shared=True, roles=("monitor", "coordinator", "projector"), monitor=FAST
    )
    worker = make_mgmt("worker-app", shared=True, roles=("worker",), monitor=FAST)
    release = asyncio.Event()

    async def a(ctx: hms_bus.StepContext) -> Any:
        await release.wait()  # hangs, as on a worker whose host froze

    for m in (watcher, worker):  # every process loads the same app, as deployed
        m.define_workflow("wf", ["a"])
        m.on_step("wf.a", timeout=2)(a)

    async with watcher, worker:
        monitor = watcher.monitor
        assert monitor is not None
        started = await watcher.start("wf", {})

        async def running() -> bool:
            st = await watcher.status(started.workflow_id)
            step = st.step("a") if st is not None else None
            return step is not None and step.status == "running"

        await eventually(running, within=10, what="step running")
        healthy = monitor.report()
        assert healthy.problems() == []
        assert {p.service for p in healthy.processes} == {"watcher", "worker-app"}
        # The worker's process dies without a goodbye: no more heartbeats.
        next(t for t in worker._node._tasks if t.get_name() == "hms-heartbeat").cancel()
        await eventually(
            lambda: any(p.down for p in monitor.processes()), within=5, what="worker down"
        )
        assert monitor.stuck == [], "not stuck before its timeout (2 s) has passed"
        await monitor.check(now=time.time() + 2.5)  # as the monitor will see it later
        assert monitor.stuck == [(started.workflow_id, 1)]
        await asyncio.sleep(0.2)  # the next regular check writes the report
        report = HealthReport.model_validate(await watcher._st.load_health())
        history = await watcher.history(started.workflow_id)
        release.set()

    down = [p for p in report.processes if p.state == "down"]
    assert [p.service for p in down] == ["worker-app"]
    assert [(s.workflow_id, s.step, s.worker) for s in report.stuck] == [
        (started.workflow_id, "a", worker.process_id)
    ]
    problems = report.problems()
    assert any("is down and nothing else runs" in p and "step:wf.a" in p for p in problems)
    assert any("is stuck" in p for p in problems)
    stuck = [e for e in history if e.type == "stepStuck"]
    assert [(e.step, e.seq, e.worker) for e in stuck] == [("a", 1, worker.process_id)]


def test_a_down_worker_whose_steps_another_serves_is_listed_but_not_a_problem() -> None:
    now = utcnow()

    def proc(pid: str, state: str, steps: list[str], roles: list[str]) -> dict[str, Any]:
        return {
            "process_id": pid,
            "service": "s",
            "roles": roles,
            "host": "h",
            "pid": 1,
            "steps": steps,
            "last_seen": now,
            "state": state,
        }

    report = HealthReport(
        monitor="m",
        at=now,
        check_interval=1,
        processes=[
            proc("old", "down", ["wf.a", "wf.b"], ["worker"]),
            proc("new", "live", ["wf.a", "wf.b"], ["worker", "monitor"]),
        ],
    )
    assert report.problems() == []
    report.processes[1].steps = ["wf.a"]
    assert report.problems() == ["process old (s) is down and nothing else runs step:wf.b"]
    report.processes.append(
        ProcessReport.model_validate(proc("coord", "down", [], ["coordinator"]))
    )
    assert "nothing else runs coordinator" in report.problems()[-1]
    stale = report.model_copy(update={"at": now - timedelta(seconds=60)})
    assert stale.problems()[0].startswith("the monitor (m) has not reported")


@pytest.mark.postgres
async def test_health_command_reads_the_report_and_exits_1_when_unhealthy(
    make_mgmt: MakeMgmt, pg_schema: str, capsys: pytest.CaptureFixture[str]
) -> None:
    store = pg_schema
    # The CLI runs in a thread of this process, and on Kafka each heartbeat crosses the
    # broker: FAST's 0.15 s window is shorter than the stalls that makes on a busy
    # machine, and the watcher reported itself down. A 0.6 s window is not.
    steady = {**FAST, "heartbeat_interval": 0.2}
    watcher = make_mgmt("watcher", roles=("monitor",), store=store, monitor=steady)
    worker = make_mgmt("worker-app", roles=("worker",), store=store, monitor=steady)
    for m in (watcher, worker):
        m.define_workflow("wf", ["a"])
    ns = watcher.settings.namespace
    worker.configure(namespace=ns, bus=watcher.settings.bus_url)
    if watcher.settings.bus_url.rstrip("/") == "memory:":
        for m in (watcher, worker):
            m.configure(bus=f"memory://health-{ns}")

    @worker.on_step("wf.a")
    async def a(ctx: hms_bus.StepContext) -> Any:
        return None

    def health(*extra: str) -> tuple[int, str]:
        code = cli.main(["health", "--store", store, "--namespace", ns, *extra])
        return code, capsys.readouterr().out

    async def stored(*states: str) -> bool:
        # The CLI reads the report in the store, which trails the monitor by one save (a
        # commit, which a busy machine can hold up for a second): wait for that report.
        raw = await watcher._st.load_health()
        report = HealthReport.model_validate(raw) if raw is not None else None
        return report is not None and sorted(p.state for p in report.processes) == [*states]

    async with watcher, worker:
        await eventually(lambda: stored("live", "live"), what="a report of both, live")
        code, out = await asyncio.to_thread(health)
        assert code == 0, out
        assert out.startswith("healthy")
        assert "worker-app" in out and "watcher" in out
        next(t for t in worker._node._tasks if t.get_name() == "hms-heartbeat").cancel()
        await eventually(lambda: stored("down", "live"), what="a report of one down")
        code, out = await asyncio.to_thread(health)
        assert code == 1, out
        assert "UNHEALTHY" in out
        assert "is down and nothing else runs step:wf.a" in out
        code, out = await asyncio.to_thread(health, "--json")
        assert code == 1
        body = json.loads(out)
        assert body["healthy"] is False
        assert {p["state"] for p in body["report"]["processes"]} == {"live", "down"}


def test_health_on_a_memory_store_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["health", "--store", "memory://"])
    assert exc.value.code == 2
    assert "health reads the report the monitor writes to a shared store" in (
        capsys.readouterr().err
    )


@pytest.mark.postgres
def test_health_without_any_monitor_report_is_unhealthy(
    pg_schema: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["health", "--store", pg_schema, "--namespace", "nobody-here"])
    assert code == 1
    assert "no monitor has run in this namespace" in capsys.readouterr().out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_a_role_process_serves_healthz_and_prometheus_metrics() -> None:
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests"), "HMS_LOG_LEVEL": "INFO"}
    env.pop("OTEL_METRICS_EXPORTER", None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hms_bus",
            "run",
            "distributed_app:mgmt",
            "--http-port",
            str(port),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        status = 0
        while time.monotonic() < deadline:
            try:
                status, body = _get(f"http://127.0.0.1:{port}/healthz")
                if status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        assert status == 200, "never healthy"
        health = json.loads(body)
        assert health["status"] == "ok"
        assert set(health["roles"]) == {
            "worker",
            "coordinator",
            "projector",
            "scheduler",
            "monitor",
        }
        status, metrics = _get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        assert "# TYPE hms_consumer_lag gauge" in metrics
        assert 'hms_consumer_lag{hms_role="coordinator"' in metrics
        assert "hms_steps_in_flight" in metrics
        proc.terminate()
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()
