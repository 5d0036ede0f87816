"""A bus or a store gone for good is an outage, not a flood, and does not stop a shutdown.

Each test runs the real ``hms-bus run`` (every role in one process) on a broker or a
Postgres server of its own, takes that away without warning, and checks what a user
and an operator see: ``/healthz`` says which one is gone, the log holds a few lines
rather than one per retry, and SIGTERM ends the process within
``worker.shutdown_grace`` plus the bounded close, with exit 4 when work in flight was
left uncommitted (it is delivered again: still at least once).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import eventually
from kafka_broker import Broker, free_port, start_broker
from private_postgres import PrivatePostgres, pg_bin

import hms_bus
from hms_bus import cli

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.slow, pytest.mark.serial]

ROOT = Path(__file__).resolve().parents[1]
GRACE, CLOSE = 1.0, 2.0
BOUND = GRACE + 3 * CLOSE + 3.0  # drain, then commits / leaving / flush, plus start-up slack
OUTAGE = 12.0  # seconds each test keeps its backend away
MOST_RECORDS = 25  # log records an outage of OUTAGE seconds may write (5 roles, 1 process)
MOST_LINES = 150  # and physical lines (a record's traceback is logged once per outage)


def _healthz(port: int) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


class Node:
    """``hms-bus run distributed_app:mgmt`` on the given bus and store."""

    COMMAND = (sys.executable, "-m", "hms_bus", "run", "distributed_app:mgmt", "--http-port")

    def __init__(self, tmp: Path, bus: str, store: str) -> None:
        self.namespace = f"out{uuid.uuid4().hex[:8]}"
        self.bus, self.store = bus, store
        self.ledger = tmp / "ledger.txt"
        self.ledger.touch()
        self.log = tmp / "node.log"
        self.port = free_port()
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)]),
            "HMS_BUS_URL": bus,
            "HMS_STORE_URL": store,
            "HMS_NAMESPACE": self.namespace,
            "HMS_TEST_LEDGER": str(self.ledger),
            "HMS_TEST_SLOW": "60",
            "HMS_WORKER__SHUTDOWN_GRACE": str(GRACE),
            "HMS_TRANSPORT__CLOSE_TIMEOUT": str(CLOSE),
            "HMS_POSTGRES__CLOSE_TIMEOUT": str(CLOSE),
            "HMS_TRANSPORT__SESSION_TIMEOUT": "6",
            "HMS_TRANSPORT__HEARTBEAT_INTERVAL": "1",
            "HMS_TRANSPORT__FETCH_MAX_WAIT": "0.01",
            "HMS_MONITOR__HEARTBEAT_INTERVAL": "1",
            "HMS_MONITOR__CHECK_INTERVAL": "0.5",
        }
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [*self.COMMAND, str(self.port)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=tmp,
            )
        deadline = time.monotonic() + 30
        while b"to stop." not in self.log.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the node did not start:\n{self.log.read_text()}")
            time.sleep(0.05)

    def lines(self) -> list[str]:
        """The log's lines, tracebacks' continuation lines included."""
        return self.log.read_text().splitlines()

    def sigterm(self) -> tuple[int, float]:
        """SIGTERM, then wait: (exit code, seconds it took)."""
        began = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(BOUND + 30)
        except subprocess.TimeoutExpired as exc:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"no exit within {BOUND + 30}s:\n{self.log.read_text()}") from exc
        return code, time.monotonic() - began

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def own_broker() -> Iterator[Broker]:
    broker = start_broker()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def own_postgres() -> Iterator[PrivatePostgres]:
    try:
        pg_bin()
    except FileNotFoundError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"the Postgres outage test needs initdb under CI: {exc}")
        pytest.skip(str(exc))
    pg = PrivatePostgres.create()
    try:
        yield pg
    finally:
        pg.destroy()


def _outage_lines(node: Node, before: int) -> list[str]:
    return node.lines()[before:]


def _records(lines: list[str]) -> list[str]:
    """The lines that begin a log record (a timestamp first; tracebacks' lines do not)."""
    return [line for line in lines if re.match(r"\d{4}-\d\d-\d\d \d\d:", line)]


def _check_outage_and_exit(node: Node, during: list[str], took: float) -> str:
    """Assert the outage's log stayed small and the exit came in time; return the log."""
    log = node.log.read_text()
    print(f"{len(during)} log lines in the outage; exit after {took:.1f}s")
    assert len(_records(during)) <= MOST_RECORDS, "\n".join(during)
    assert len(during) <= MOST_LINES, "\n".join(during)
    assert took <= BOUND, f"exit took {took:.1f}s, over {BOUND}s:\n{log[-3000:]}"
    return log


def _outage_of(node: Node, what: str) -> dict[str, object] | None:
    """/healthz's body once it reports ``what`` (bus, store) down, else None."""
    code, body = _healthz(node.port)
    outages = body.get("outages")
    return body if code == 503 and isinstance(outages, dict) and what in outages else None


@pytest.mark.timeout(150)
async def test_the_broker_gone_for_good_is_reported_logged_once_and_sigterm_still_exits(
    own_broker: Broker, pg_schema: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    node = Node(tmp_path, own_broker.url, pg_schema)
    try:
        client = hms_bus.init(
            "client", bus=own_broker.url, store=pg_schema, namespace=node.namespace, roles=()
        )
        client.define_workflow("slow", ["nap"])
        async with client:
            started = await client.start("slow", {})
        await eventually(
            lambda: f"{started.workflow_id} nap" in node.ledger.read_text(),
            within=20,
            what="the nap step running",
        )
        assert _healthz(node.port)[0] == 200

        before = len(node.lines())
        own_broker.process.kill()  # type: ignore[union-attr]
        own_broker.process.wait()  # type: ignore[union-attr]
        body = await eventually(
            lambda: _outage_of(node, "bus"),
            within=15,
            what="/healthz reporting the bus outage",
        )
        assert body["status"] == "unhealthy"
        # The monitor (still on the store) writes the outage into the health report.
        ns = node.namespace

        def health() -> tuple[int, str]:
            code = cli.main(["health", "--store", pg_schema, "--namespace", ns])
            return code, capsys.readouterr().out

        async def reported() -> tuple[int, str] | None:
            code, out = await asyncio.to_thread(health)
            return (code, out) if "has not reached the bus" in out else None

        code, out = await eventually(reported, within=15, what="health naming the outage")
        assert code == 1 and "UNHEALTHY" in out
        await asyncio.sleep(max(0.0, OUTAGE - 5))
        during = _outage_lines(node, before)

        code, took = node.sigterm()
    finally:
        node.kill()
    log = _check_outage_and_exit(node, during, took)
    # The nap was cut short: uncommitted, so delivered again, and the exit code says so.
    assert code == 4, log[-3000:]
    assert "leaving work uncommitted" in log
    assert "Traceback" not in "\n".join(node.lines()[before:])


@pytest.mark.timeout(150)
async def test_postgres_gone_for_good_is_reported_logged_once_and_sigterm_still_exits(
    kafka_broker: Broker, own_postgres: PrivatePostgres, tmp_path: Path
) -> None:
    node = Node(tmp_path, kafka_broker.url, own_postgres.url)
    try:
        assert _healthz(node.port)[0] == 200
        before = len(node.lines())
        own_postgres.stop("immediate")
        body = await eventually(
            lambda: _outage_of(node, "store"),
            within=15,
            what="/healthz reporting the store outage",
        )
        assert body["status"] == "unhealthy"
        await asyncio.sleep(OUTAGE)
        during = _outage_lines(node, before)
        code, took = node.sigterm()
    finally:
        node.kill()
    log = _check_outage_and_exit(node, during, took)
    assert code == 0, log[-3000:]  # nothing was in flight: a clean stop
