"""hms-bus deployed as separate processes on a real broker, as users run it.

The processes are the real ``hms-bus`` command (``python -m hms_bus``) serving
``distributed_app:mgmt`` on the test broker and a Postgres store (a schema of this
test's own); this test process is the client that starts workflows, reads ``hms.events``
to see them end, and asks the store for their status. Every handler writes begin/end
lines to a shared ledger file, the side-effect counter the assertions read.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import orjson
import pytest
from conftest import read_topic, transport
from distributed_app import STEPS
from kafka_broker import Broker

import hms_bus
from hms_bus._codec import split_lines

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.slow, pytest.mark.serial]

ROOT = Path(__file__).resolve().parents[1]
APP = "distributed_app:mgmt"


class Deployment:
    """The processes of one test, on one namespace of the session's broker."""

    def __init__(self, broker: Broker, tmp: Path, store: str) -> None:
        self.namespace = f"mp{uuid.uuid4().hex[:10]}"
        self.store = store
        self.ledger = tmp / "ledger.txt"
        self.ledger.touch()
        self.tmp = tmp
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)]),
            "HMS_BUS_URL": broker.url,
            "HMS_STORE_URL": store,
            "HMS_NAMESPACE": self.namespace,
            "HMS_TEST_LEDGER": str(self.ledger),
            # Production-like membership timing (the in-process tests use 2 s): a loaded
            # CI machine must not expel live members and set off extra rebalances.
            "HMS_TRANSPORT__SESSION_TIMEOUT": "6",
            "HMS_TRANSPORT__HEARTBEAT_INTERVAL": "1",
            "HMS_TRANSPORT__FETCH_MAX_WAIT": "0.01",
            "HMS_MONITOR__HEARTBEAT_INTERVAL": "0",
        }
        self.procs: list[tuple[subprocess.Popen[bytes], Path]] = []

    def spawn(self, *args: str, **env: str) -> subprocess.Popen[bytes]:
        """Start ``hms-bus ARGS`` and wait until it is serving (its banner is printed)."""
        log = self.tmp / f"proc-{len(self.procs)}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "hms_bus", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**self.env, **env},
                cwd=self.tmp,
            )
        self.procs.append((proc, log))
        deadline = time.monotonic() + 30
        while b"to stop." not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{args} did not start:\n{log.read_text()}")
            time.sleep(0.05)
        return proc

    def log_of(self, proc: subprocess.Popen[bytes]) -> str:
        return next(log.read_text() for p, log in self.procs if p is proc)

    def lines(self) -> list[tuple[str, str, int, str]]:
        out = []
        for line in self.ledger.read_text().splitlines():
            wid, step, pid, what = line.split()
            out.append((wid, step, int(pid), what))
        return out

    def stop_all(self) -> None:
        for proc, _ in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, _ in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def deployment(kafka_broker: Broker, tmp_path: Path, pg_schema: str) -> Iterator[Deployment]:
    d = Deployment(kafka_broker, tmp_path, pg_schema)
    try:
        yield d
    finally:
        d.stop_all()


def _client(d: Deployment) -> hms_bus.Management:
    mgmt = hms_bus.init(
        "client",
        bus=d.env["HMS_BUS_URL"],
        store=d.store,
        namespace=d.namespace,
        roles=(),
        transport={"session_timeout": 2.0, "heartbeat_interval": 0.5, "fetch_max_wait": 0.01},
    )
    mgmt.define_workflow("order", STEPS)
    mgmt.define_workflow("slow", ["nap"])
    mgmt.define_workflow("fragile", ["crunch", "report"])
    mgmt.define_workflow("fanout", [hms_bus.parallel("left", "right"), "joined"])
    return mgmt


async def _ended(client: hms_bus.Management, wanted: set[str], within: float) -> dict[str, str]:
    """Read ``hms.events`` until every workflow of ``wanted`` has ended: id -> end type.

    If some never end, the failure says, for a few of them, what the bus holds: their
    events, and every record of theirs on the step topics (so a lost command can be told
    from one that was never consumed).
    """
    ends = {"workflowCompleted", "workflowFailed", "workflowCancelled"}
    seen: dict[str, str] = {}
    trail: dict[str, list[str]] = defaultdict(list)
    deadline = time.monotonic() + within
    group = f"{client.settings.namespace}.probe-{uuid.uuid4().hex[:6]}"
    async with transport(client).consumer(group, [client.topics.events]) as consumer:
        while not wanted <= seen.keys():
            if time.monotonic() > deadline:
                stuck = sorted(wanted - seen.keys())
                commands = await _commands_of(client, set(stuck[:5]))
                detail = "\n".join(
                    f"  {w}: events {trail[w]}; step records {commands.get(w, [])}"
                    for w in stuck[:5]
                )
                raise AssertionError(
                    f"{len(stuck)} of {len(wanted)} workflows did not end within {within}s:\n"
                    + detail
                )
            for record in await consumer.fetch(max_records=1000, timeout=0.5):
                for line in split_lines(record.value):
                    event = orjson.loads(line)
                    wid = event.get("workflow_id")
                    trail[wid].append(
                        f"{event['type']}:{event.get('step', '')}@p{record.partition}"
                    )
                    if event["type"] in ends:
                        seen[wid] = event["type"]
    return seen


async def _commands_of(client: hms_bus.Management, wids: set[str]) -> dict[str, list[str]]:
    topics = [client.topics.step("order", s) for s in STEPS]
    group = f"{client.settings.namespace}.probe-{uuid.uuid4().hex[:6]}"
    found: dict[str, list[str]] = defaultdict(list)
    async with transport(client).consumer(group, topics) as consumer:
        while batch := await consumer.fetch(max_records=5000, timeout=2.0):
            for r in batch:
                wid = orjson.loads(r.value).get("workflow_id")
                if wid in wids:
                    found[wid].append(f"{r.topic.rsplit('.', 1)[-1]}@p{r.partition}o{r.offset}")
    return found


@pytest.mark.timeout(240)
async def test_500_workflows_across_processes_survive_a_worker_killed(
    deployment: Deployment,
) -> None:
    d = deployment
    d.spawn("run", APP, "--roles", "coordinator,projector,scheduler")
    victim = d.spawn("worker", APP, "--concurrency", "16")
    survivor = d.spawn("worker", APP, "--concurrency", "16")
    client = _client(d)
    async with client:
        ids = [f"order-{i}" for i in range(500)]
        for i, wid in enumerate(ids):
            await client.start("order", {"n": i}, workflow_id=wid)
        # Kill one worker without warning once both have done a share of the work.
        deadline = time.monotonic() + 60
        while True:
            done_by = defaultdict(int)
            for _, _, pid, what in d.lines():
                if what == "end":
                    done_by[pid] += 1
            if done_by[victim.pid] >= 50 and done_by[survivor.pid] >= 50:
                break
            assert time.monotonic() < deadline, f"work did not spread: {dict(done_by)}"
            await asyncio.sleep(0.01)
        victim.kill()
        ended = await _ended(client, set(ids), within=120)
        # The shared store tells the client the same, with every step's status.
        finals = [await client.wait(wid, timeout=30) for wid in ids]
        odd = {
            f.workflow_id: [(s.step, s.status.value, s.attempts) for s in f.steps]
            for f in finals
            if [(s.step, s.status) for s in f.steps] != [(n, "succeeded") for n in STEPS]
        }
        odd_history = {
            wid: [
                (e.type, getattr(e, "step", None), getattr(e, "attempt", None))
                for e in await client.history(wid)
            ]
            for wid in list(odd)[:3]
        }

    assert set(ended.values()) == {"workflowCompleted"}
    assert {f.status for f in finals} == {"completed"}
    assert odd == {}, f"steps not recorded as succeeded: {odd}; their history: {odd_history}"
    runs: dict[tuple[str, str], list[int]] = defaultdict(list)
    applied: dict[tuple[str, str], int] = defaultdict(int)
    for wid, step, pid, what in d.lines():
        if what == "begin":
            runs[(wid, step)].append(pid)
        else:
            applied[(wid, step)] += 1
    every = {(wid, step) for wid in ids for step in STEPS}
    # At least once: every step of every workflow was applied.
    assert {k for k, n in applied.items() if n >= 1} == every
    # Exactly once wherever the killed worker never touched the step.
    untouched = {k: pids for k, pids in runs.items() if victim.pid not in pids}
    repeated = {k: pids for k, pids in untouched.items() if len(pids) != 1}
    assert repeated == {}
    assert len(untouched) >= 500  # a good share of the steps ran where nothing was killed
    print(
        f"victim ran {sum(1 for p in runs.values() if victim.pid in p)} steps; "
        f"{sum(1 for p in runs.values() if len(p) > 1)} ran twice"
    )


@pytest.mark.timeout(120)
async def test_sigterm_drains_in_flight_steps_commits_and_leaves(
    deployment: Deployment,
) -> None:
    d = deployment
    d.spawn("run", APP, "--roles", "coordinator,projector,scheduler")
    first = d.spawn("worker", APP, HMS_TEST_SLOW="2", HMS_WORKER__SHUTDOWN_GRACE="20")
    client = _client(d)
    async with client:
        ids = [f"slow-{i}" for i in range(3)]
        for wid in ids:
            await client.start("slow", {}, workflow_id=wid)
        deadline = time.monotonic() + 30
        while sum(1 for line in d.lines() if line[3] == "begin") < 3:
            assert time.monotonic() < deadline, "steps did not start"
            await asyncio.sleep(0.02)
        first.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(first.wait, 30)
        assert code == 0
        # Every step that had begun finished during the drain.
        assert sorted(wid for wid, _, pid, what in d.lines() if what == "end") == ids
        assert "draining" in d.log_of(first)
        ended = await _ended(client, set(ids), within=30)
        assert set(ended.values()) == {"workflowCompleted"}

        # A new worker starts from the committed offsets: nothing runs twice.
        second = d.spawn("worker", APP, HMS_TEST_SLOW="0")
        await client.start("slow", {}, workflow_id="slow-after")
        await _ended(client, {"slow-after"}, within=30)
        await asyncio.sleep(1.0)
    begins = [(wid, pid) for wid, _, pid, what in d.lines() if what == "begin"]
    assert sorted(begins) == sorted(
        [(wid, first.pid) for wid in ids] + [("slow-after", second.pid)]
    )


@pytest.mark.timeout(120)
async def test_worker_deployments_serve_their_own_step_groups(deployment: Deployment) -> None:
    d = deployment
    d.spawn("run", APP, "--roles", "coordinator,projector,scheduler")
    early = d.spawn("worker", APP, "--steps", "order.s1,order.s2")
    late = d.spawn("worker", APP, "--steps", "order.s3,order.s4")
    client = _client(d)
    async with client:
        ids = [f"grouped-{i}" for i in range(50)]
        for wid in ids:
            await client.start("order", {}, workflow_id=wid)
        ended = await _ended(client, set(ids), within=60)
    assert set(ended.values()) == {"workflowCompleted"}
    served: dict[str, set[int]] = defaultdict(set)
    for _, step, pid, _ in d.lines():
        served[step].add(pid)
    assert served == {
        "s1": {early.pid},
        "s2": {early.pid},
        "s3": {late.pid},
        "s4": {late.pid},
    }
    assert "steps: order.s1, order.s2" in d.log_of(early)


@pytest.mark.timeout(240)
async def test_a_command_that_kills_its_worker_is_quarantined_and_the_others_go_on(
    deployment: Deployment,
) -> None:
    """A poison crash loop: a handler that calls ``os._exit`` on one workflow's payload.

    A supervisor (this test, as Kubernetes would) starts the worker again each time it
    dies. The command is delivered again, alone in its worker, until it has been
    started ``worker.max_deliveries`` (3) times; the next delivery quarantines it: a dead
    letter, and the workflow fails with ``CrashLoop``. Every other workflow completes.
    """
    d = deployment
    d.spawn("run", APP, "--roles", "coordinator,projector,scheduler")
    worker: subprocess.Popen[bytes] | None = None
    crashes: list[int] = []

    async def supervise() -> None:
        nonlocal worker
        while True:
            worker = await asyncio.to_thread(d.spawn, "worker", APP, "--concurrency", "8")
            crashes.append(await asyncio.to_thread(worker.wait))

    client = _client(d)
    supervisor: asyncio.Task[None] | None = None
    try:
        async with client:
            ids = [f"fragile-{i}" for i in range(40)]
            for i, wid in enumerate(ids):
                await client.start("fragile", {"poison": i == 20}, workflow_id=wid)
            # The worker comes after the commands: it takes over a backlog, whose first
            # starts are counted (a command published to a worker already serving its
            # partition is counted from its second start on).
            supervisor = asyncio.create_task(supervise())
            ended = await _ended(client, set(ids), within=180)
            poisoned = await client.wait("fragile-20", timeout=30)
            letters = [
                orjson.loads(r.value) for r in await read_topic(client, client.topics.dead_letter)
            ]
    finally:
        if supervisor is not None:
            supervisor.cancel()

    assert {w: e for w, e in ended.items() if e != "workflowCompleted"} == {
        "fragile-20": "workflowFailed"
    }
    assert poisoned.status == "failed"
    assert poisoned.error is not None and "crash loop" in poisoned.error
    crunch = next(s for s in poisoned.steps if s.step == "crunch")
    assert crunch.status == "failed" and crunch.error is not None
    assert "was started 3 times by worker processes that were lost" in crunch.error
    # Started three times (the process died each time), then quarantined undelivered.
    assert crashes == [70, 70, 70]
    began = [pid for wid, step, pid, what in d.lines() if wid == "fragile-20" and what == "begin"]
    assert len(began) == 3
    # Two letters: the worker's quarantine of the record (where it sat on the bus), and
    # the coordinator's of the workflow that failed because of it.
    quarantine, failure = sorted(letters, key=lambda w: w["source_offset"] is None)
    assert (quarantine["workflow_id"], quarantine["step"]) == ("fragile-20", "crunch")
    assert quarantine["reason"].startswith("crash loop: step fragile.crunch was started 3 times")
    assert quarantine["error"]["type"] == "CrashLoop"
    assert quarantine["source_offset"] is not None
    assert failure["reason"].startswith("workflow failed at step 'crunch': crash loop")
    # At least once for the rest: every other crunch finished (some more than once, if
    # they were running beside the poison when it struck).
    finished = {wid for wid, step, _, what in d.lines() if step == "crunch" and what == "end"}
    assert finished == set(ids) - {"fragile-20"}


@pytest.mark.timeout(180)
async def test_a_coordinator_killed_while_groups_join_joins_each_once(
    deployment: Deployment,
) -> None:
    """200 parallel groups; the coordinator is SIGKILLed while their branches complete.

    Its replacement reads the inputs the killed one had not committed: branches it had
    recorded come back with their recorded answer, and a join it had decided is not
    decided again (its transition is claimed once). Each workflow's history holds one
    ``joined`` schedule and its result both branches.
    """
    d = deployment
    coordinator = d.spawn("run", APP, "--roles", "coordinator")
    d.spawn("run", APP, "--roles", "projector,scheduler")
    d.spawn("worker", APP, "--concurrency", "32")
    client = _client(d)
    async with client:
        ids = [f"fan-{i}" for i in range(200)]
        for i, wid in enumerate(ids):
            await client.start("fanout", {"n": i}, workflow_id=wid)
        deadline = time.monotonic() + 60
        while sum(1 for _, step, _, what in d.lines() if step == "joined" and what == "end") < 40:
            assert time.monotonic() < deadline, "the joins did not begin"
            await asyncio.sleep(0.01)
        coordinator.kill()
        d.spawn("run", APP, "--roles", "coordinator")
        ended = await _ended(client, set(ids), within=120)
        finals = [await client.wait(wid, timeout=30) for wid in ids]
        joins = {
            wid: [
                e.event_id
                for e in await client.history(wid)
                if e.type == "stepScheduled" and e.step == "joined"
            ]
            for wid in ids
        }
    assert set(ended.values()) == {"workflowCompleted"}
    for f in finals:
        assert f.status == "completed"
        n = f.payload["n"]
        assert f.result == {"left": {"n": n, "last": "left"}, "right": {"n": n, "last": "right"}}
        assert [s.step for s in f.steps] == ["left", "right", "joined"], f.steps
    assert {wid: len(j) for wid, j in joins.items() if len(j) != 1} == {}


@pytest.mark.timeout(120)
async def test_two_scheduler_processes_start_each_tick_once(deployment: Deployment) -> None:
    """Two scheduler processes and a schedule ticking every half second: each tick's
    workflow is started once (one id, one run of its first step), none is skipped."""
    d = deployment
    d.spawn("run", APP, "--roles", "coordinator,projector", HMS_TEST_TICK="0.5")
    d.spawn("worker", APP, HMS_TEST_TICK="0.5")
    d.spawn("scheduler", APP, HMS_TEST_TICK="0.5")
    d.spawn("scheduler", APP, HMS_TEST_TICK="0.5")
    await asyncio.sleep(4.0)
    client = _client(d)
    async with client:
        page = await client.list(workflow="order", limit=200)
        ticks = sorted(w.workflow_id for w in page.items if w.workflow_id.startswith("tick@"))
        ended = await _ended(client, set(ticks), within=30)
    assert len(ticks) >= 5, ticks
    assert set(ended.values()) == {"workflowCompleted"}
    firsts = Counter(wid for wid, step, _, what in d.lines() if step == "s1" and what == "begin")
    assert {t: firsts[t] for t in ticks if firsts[t] != 1} == {}
    at = sorted(datetime.fromisoformat(t.split("@", 1)[1]) for t in ticks)
    assert all((b - a).total_seconds() == 0.5 for a, b in itertools.pairwise(at)), ticks
