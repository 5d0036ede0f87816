"""The chaos suite: every role in its own process, one fault at a time, then the invariants.

Run it with ``make chaos`` (the long form: at least 1,000 workflows and 10 minutes) or
``python tests/chaos/suite.py --short`` (the form CI runs, under 3 minutes). It starts a
Tansu broker and a Postgres server of its own, so that it can stop and restart them,
then the roles as separate ``hms-bus`` processes on ``chaos_app:mgmt``: one
coordinator, one projector, one scheduler and two workers.

Each scenario starts a batch of ``chaos`` workflows, injects its fault while they run,
waits until the system is quiet and checks, for that batch:

- **completed**: every workflow is terminal and completed;
- **effects**: the oracle holds every (workflow, step) at least once, and a step ran
  twice only where a process was killed while its command was in flight (a row by a
  killed worker, or a coordinator or scheduler killed between the command being sent
  and the repeat);
- **timers**: no delayed step ran before its ``due_at``, and at p99 none ran more than
  2 s after it (or after the end of an outage that covered it: the broker or Postgres
  away, or no scheduler running between a kill and its replacement's start);
- **history**: every status (the workflow's and each step's attempts and state) agrees
  with the history the projector recorded;
- **typed errors**: every error the client saw was an ``HmsBusError``, and a repeated
  ``start`` with the same id after a retriable one was safe.

It prints a table of faults against invariants and exits 1 if any cell fails.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import orjson

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(HERE), str(ROOT / "tests"), str(ROOT)]

from chaos_app import ORACLE, STEPS  # noqa: E402
from kafka_broker import Broker, start_broker  # noqa: E402
from private_postgres import PrivatePostgres  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

import hms_bus  # noqa: E402
from hms_bus._events import WorkflowEvent  # noqa: E402

APP = "chaos_app:mgmt"
INVARIANTS = ["completed", "effects", "timers", "history", "typed errors"]
LATE_P99 = 2.0


@dataclass
class Form:
    """How big a run is: workflows per scenario, delays, and how long each fault lasts."""

    name: str
    workflows: int
    delays: tuple[float, float]
    pause: float  # broker SIGSTOP
    storm_period: float  # workers 1 -> 4 -> 1
    storm_rounds: int
    pg_outage: float  # Postgres down between stop and start
    terminate_for: float  # pg_terminate_backend every second, this long
    timers: int  # workflows of the scheduler scenario
    quiet_within: float
    clock_jump: float  # the scheduler's clock jumps this far ahead
    minutes: float  # repeat the scenarios until this much time has passed (once at least)


# The short form leaves the rebalance storm out: on Tansu, after members left the group
# (SIGTERM, LeaveGroup), a worker joining later was twice seen never to be given a
# leader's assignment (JoinGroup answered, no SyncGroup, again every 8 s), in 2 of
# about 8 runs; see the issue note. The long form runs it.
SHORT = Form("short", 60, (1.0, 3.0), 5.0, 3.0, 0, 2.0, 6.0, 150, 90.0, 5.0, 0.0)
LONG = Form("long", 150, (1.0, 60.0), 20.0, 10.0, 3, 5.0, 30.0, 1000, 300.0, 30.0, 10.0)


@dataclass
class Role:
    name: str
    args: list[str]
    proc: subprocess.Popen[bytes]
    log: Path


@dataclass
class Batch:
    """One scenario's workflows and what happened to them."""

    ids: list[str]
    delay: dict[str, float]
    started: dict[str, float] = field(default_factory=dict)  # wid -> epoch seconds
    killed_workers: set[int] = field(default_factory=set)
    # Epoch seconds at which a coordinator or scheduler was killed.
    router_kills: list[float] = field(default_factory=list)
    outages: list[tuple[float, float]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # untyped errors the client saw
    retried_starts: int = 0
    replayed: set[tuple[str, str]] = field(default_factory=set)  # (wid, step) delivered again
    replays: int = 0


class Cluster:
    """The broker, the Postgres server and the role processes of one run."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.broker: Broker = start_broker()
        self.pg = PrivatePostgres.create()
        self.namespace = f"chaos{uuid.uuid4().hex[:8]}"
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT / "tests"), str(ROOT)]),
            "HMS_BUS_URL": self.broker.url,
            "HMS_STORE_URL": self.pg.url,
            "HMS_NAMESPACE": self.namespace,
            "CHAOS_ORACLE_URL": self.pg.url,
            "HMS_TRANSPORT__SESSION_TIMEOUT": "6",
            "HMS_TRANSPORT__HEARTBEAT_INTERVAL": "1",
            "HMS_TRANSPORT__FETCH_MAX_WAIT": "0.01",
            "HMS_MONITOR__HEARTBEAT_INTERVAL": "0",
            "HMS_WORKER__SHUTDOWN_GRACE": "2",
        }
        self.roles: list[Role] = []
        self._spawned = 0
        # The scheduler's wall clock is the real one plus what this file says.
        self.scheduler_clock = tmp / "scheduler-clock"
        self.scheduler_clock.write_text("0")
        self.role_env = {"scheduler": {"CHAOS_CLOCK_FILE": str(self.scheduler_clock)}}

    async def setup(self) -> None:
        conn = await asyncpg.connect(self.pg.url)
        try:
            await conn.execute(ORACLE)
        finally:
            await conn.close()
        for name in ("coordinator", "projector", "scheduler"):
            await self.spawn(name, "run", APP, "--roles", name)
        for _ in range(2):
            await self.spawn("worker", "worker", APP, "--concurrency", "16")

    def _popen(self, name: str, args: tuple[str, ...]) -> Role:
        self._spawned += 1
        log = self.tmp / f"{self._spawned:02d}-{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "hms_bus", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**self.env, **self.role_env.get(name, {})},
                cwd=self.tmp,
            )
        return Role(name, list(args), proc, log)

    async def spawn(self, name: str, *args: str) -> Role:
        """Start ``hms-bus ARGS`` and wait until it serves (its banner is printed)."""
        role = self._popen(name, args)
        proc, log = role.proc, role.log
        self.roles.append(role)
        deadline = time.monotonic() + 60
        while b"to stop." not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start:\n{log.read_text()[-3000:]}")
            await asyncio.sleep(0.05)
        return role

    def live(self, name: str) -> list[Role]:
        return [r for r in self.roles if r.name == name and r.proc.poll() is None]

    async def kill(self, name: str, batch: Batch, *, respawn_after: float = 0.0) -> None:
        """SIGKILL one live process of role ``name`` and start a new one in its place."""
        role = random.choice(self.live(name))
        role.proc.kill()
        role.proc.wait()
        killed = time.time()
        if name == "worker":
            batch.killed_workers.add(role.proc.pid)
        elif name in ("coordinator", "scheduler"):
            batch.router_kills.append(killed)
        await asyncio.sleep(respawn_after)
        await self.spawn(name, *role.args)
        if name == "scheduler":
            # The only scheduler was gone: a timer that fell due meanwhile can fire only
            # once the new one runs, so its lateness counts from then, as after an outage.
            batch.outages.append((killed, time.time()))

    async def scale_workers(self, n: int) -> None:
        live = self.live("worker")
        while len(live) < n:
            live.append(await self.spawn("worker", "worker", APP, "--concurrency", "16"))
        for role in live[n:]:
            role.proc.send_signal(signal.SIGTERM)
        for role in live[n:]:
            await asyncio.to_thread(role.proc.wait, 60)

    def stop(self) -> None:
        for role in self.roles:
            if role.proc.poll() is None:
                role.proc.send_signal(signal.SIGTERM)
        for role in self.roles:
            try:
                role.proc.wait(30)
            except subprocess.TimeoutExpired:
                role.proc.kill()
                role.proc.wait()
        self.broker.stop()
        self.pg.destroy()

    def client(self) -> hms_bus.Management:
        mgmt = hms_bus.init(
            "chaos-client",
            bus=self.broker.url,
            store=self.pg.url,
            namespace=self.namespace,
            roles=(),
            transport={"fetch_max_wait": 0.01},
        )
        mgmt.define_workflow("chaos", STEPS)
        return mgmt


# --- faults -------------------------------------------------------------------------

Fault = Callable[[Cluster, Batch, Form], Awaitable[None]]


async def _none(cluster: Cluster, batch: Batch, form: Form) -> None:
    return None


async def _until_effects(cluster: Cluster, n: int) -> None:
    """Return once the oracle holds ``n`` more rows than when called."""
    conn = await asyncpg.connect(cluster.pg.url)
    try:
        base = await conn.fetchval("SELECT count(*) FROM chaos_effects")
        # The oracle is the handlers' plain table: it has nothing to wake a waiter.
        while await conn.fetchval("SELECT count(*) FROM chaos_effects") < base + n:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


def _kill(role: str, respawn_after: float = 0.0) -> Fault:
    async def fault(cluster: Cluster, batch: Batch, form: Form) -> None:
        await _until_effects(cluster, len(batch.ids))
        await cluster.kill(role, batch, respawn_after=respawn_after)

    return fault


async def _storm(cluster: Cluster, batch: Batch, form: Form) -> None:
    for _ in range(max(1, form.storm_rounds)):
        await asyncio.sleep(form.storm_period)
        await cluster.scale_workers(4)
        await asyncio.sleep(form.storm_period)
        await cluster.scale_workers(1)
    await cluster.scale_workers(2)


async def _broker_pause(cluster: Cluster, batch: Batch, form: Form) -> None:
    await _until_effects(cluster, len(batch.ids))
    assert cluster.broker.process is not None
    began = time.time()
    cluster.broker.process.send_signal(signal.SIGSTOP)
    try:
        await asyncio.sleep(form.pause)
    finally:
        cluster.broker.process.send_signal(signal.SIGCONT)
    batch.outages.append((began, time.time()))


async def _pg_faults(cluster: Cluster, batch: Batch, form: Form) -> None:
    await _until_effects(cluster, len(batch.ids))
    began = time.time()
    await asyncio.to_thread(cluster.pg.stop, "immediate")
    await asyncio.sleep(form.pg_outage)
    await asyncio.to_thread(cluster.pg.start)
    batch.outages.append((began, time.time()))
    # Then cut a random connection of the store's every second.
    deadline = time.monotonic() + form.terminate_for
    while time.monotonic() < deadline:
        await asyncio.sleep(1.0)
        try:
            conn = await asyncpg.connect(cluster.pg.url, timeout=2)
            try:
                await conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'"
                    " ORDER BY random() LIMIT 1"
                )
            finally:
                await conn.close()
        except (OSError, asyncpg.PostgresError):
            continue


async def _clock_jump(cluster: Cluster, batch: Batch, form: Form) -> None:
    """Step the scheduler's wall clock ahead while timers are pending, then back."""
    await _until_effects(cluster, 2 * len(batch.ids))
    await asyncio.to_thread(cluster.scheduler_clock.write_text, str(form.clock_jump))
    # Every timer of the batch falls due while the clock is wrong.
    await asyncio.sleep(form.delays[1] + 1.0)
    await asyncio.to_thread(cluster.scheduler_clock.write_text, "0")


async def _replay(cluster: Cluster, batch: Batch, form: Form) -> None:
    """Deliver the last 500 step commands a second time, as they were, while work runs.

    The commands are read back from the step topics and published again with their
    keys, values and headers: to the workers they are the same commands once more, as
    after a consumer that seeks back. The steps they carry are the ones allowed to run
    twice.
    """
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    await _until_effects(cluster, 3 * len(batch.ids))
    bootstrap = cluster.broker.url.removeprefix("kafka://")
    topics = [f"{cluster.namespace}.chaos.{s}" for s in STEPS]
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await reader.start()
    again = []
    try:
        tps = [TopicPartition(t, p) for t in topics for p in reader.partitions_for_topic(t) or ()]
        reader.assign(tps)
        ends = await reader.end_offsets(tps)
        total = sum(ends.values())
        back = {tp: min(n, round(500 * n / total)) for tp, n in ends.items() if n} if total else {}
        for tp, n in back.items():
            reader.seek(tp, ends[tp] - n)
        behind = [tp for tp, n in back.items() if n]
        while behind:
            got = await reader.getmany(*behind, timeout_ms=1000)
            for tp, records in got.items():
                again.extend(r for r in records if r.offset < ends[tp])
            behind = [tp for tp in behind if await reader.position(tp) < ends[tp]]
    finally:
        await reader.stop()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for r in again:
            await producer.send(r.topic, r.value, key=r.key, headers=list(r.headers))
            batch.replayed.add((orjson.loads(r.value)["workflow_id"], r.topic.rsplit(".", 1)[1]))
        await producer.flush()
    finally:
        await producer.stop()
    batch.replays = len(again)


SCENARIOS: list[tuple[str, Fault]] = [
    ("none (control)", _none),
    ("worker SIGKILL", _kill("worker")),
    ("coordinator SIGKILL", _kill("coordinator")),
    ("projector SIGKILL", _kill("projector")),
    ("scheduler SIGKILL, timers pending", _kill("scheduler", respawn_after=1.0)),
    ("rebalance storm (workers 1 → 4 → 1)", _storm),
    ("broker SIGSTOP", _broker_pause),
    ("duplicate delivery (500 commands again)", _replay),
    ("the scheduler's clock jumps ahead", _clock_jump),
    ("Postgres restart, then connections cut every 1 s", _pg_faults),
]


# --- one scenario ---------------------------------------------------------------------


async def _start_all(client: hms_bus.Management, batch: Batch) -> None:
    for i, wid in enumerate(batch.ids):
        payload = {"n": i, "delay": batch.delay[wid]}
        for _ in range(120):
            try:
                await client.start("chaos", payload, workflow_id=wid)
                batch.started[wid] = time.time()
                break
            except hms_bus.HmsBusError as exc:
                if not exc.retriable:
                    batch.errors.append(f"start {wid}: {exc!r}")
                    break
                batch.retried_starts += 1
                await asyncio.sleep(0.5)
            except Exception as exc:
                batch.errors.append(f"start {wid}: untyped {exc!r}")
                break


async def _wait_all(client: hms_bus.Management, batch: Batch, within: float) -> None:
    deadline = time.monotonic() + within

    async def one(wid: str) -> None:
        while (left := deadline - time.monotonic()) > 0:
            try:
                await client.wait(wid, timeout=left)
                return
            except hms_bus.HmsBusError as exc:
                if not exc.retriable:
                    return
                await asyncio.sleep(0.5)
            except Exception as exc:
                batch.errors.append(f"wait {wid}: untyped {exc!r}")
                return

    await asyncio.gather(*(one(wid) for wid in batch.started))


async def _read_back(
    client: hms_bus.Management, batch: Batch
) -> tuple[dict[str, hms_bus.WorkflowStatus | None], dict[str, list[WorkflowEvent]]]:
    statuses: dict[str, hms_bus.WorkflowStatus | None] = {}
    histories: dict[str, list[WorkflowEvent]] = {}
    for wid in batch.ids:
        for _ in range(60):
            try:
                statuses[wid] = await client.status(wid)
                histories[wid] = await client.history(wid)
                break
            except hms_bus.HmsBusError:
                await asyncio.sleep(0.5)
    return statuses, histories


def _derived_steps(events: list[WorkflowEvent]) -> list[tuple[int, str, int, str]]:
    """(seq, step, attempts, state) per step execution, from the history alone."""
    by_seq: dict[int, dict[str, object]] = {}
    for e in events:
        seq = getattr(e, "seq", None)
        if seq is None:
            continue
        row = by_seq.setdefault(seq, {"step": e.step, "attempts": 0, "state": "pending"})  # type: ignore[attr-defined]
        if e.type == "stepStarted":
            row["attempts"] = max(int(row["attempts"]), e.attempt)  # type: ignore[call-overload]
            row["state"] = "running"
        elif e.type == "completeStep":
            row["attempts"] = max(int(row["attempts"]), e.attempt)  # type: ignore[call-overload]
            row["state"] = e.outcome
        elif e.type == "retryScheduled":
            row["state"] = "pending"
    return [
        (s, str(r["step"]), int(r["attempts"]), str(r["state"])) for s, r in sorted(by_seq.items())
    ]  # type: ignore[call-overload]


@dataclass
class Verdict:
    ok: bool
    detail: str


async def _fired(client: hms_bus.Management, ids: set[str]) -> dict[str, float]:
    """When each delayed ``record`` command was first published: its timer firing."""
    transport = client._transport
    assert transport is not None
    fired: dict[str, float] = {}
    group = f"{client.settings.namespace}.probe-{uuid.uuid4().hex[:6]}"
    async with transport.consumer(group, [client.topics.step("chaos", "record")]) as consumer:
        idle = 0
        while idle < 3 and not ids <= fired.keys():
            batch = await consumer.fetch(max_records=5000, timeout=1.0)
            idle = 0 if batch else idle + 1
            for r in batch:
                wid = orjson.loads(r.value).get("workflow_id")
                if wid in ids:
                    fired[wid] = min(fired.get(wid, r.timestamp), r.timestamp)
    return fired


async def _check(cluster: Cluster, client: hms_bus.Management, batch: Batch) -> dict[str, Verdict]:
    statuses, histories = await _read_back(client, batch)
    fired = await _fired(client, set(batch.ids))
    out: dict[str, Verdict] = {}

    done = [w for w, s in statuses.items() if s is not None and s.status == "completed"]
    other = {w: (s.status.value if s else "unknown") for w, s in statuses.items() if w not in done}
    out["completed"] = Verdict(
        len(done) == len(batch.ids),
        f"{len(done)}/{len(batch.ids)}"
        + (f"; e.g. {dict(list(other.items())[:3])}" if other else ""),
    )

    conn = await asyncpg.connect(cluster.pg.url)
    try:
        rows = await conn.fetch(
            "SELECT workflow_id, step, pid, extract(epoch FROM at) AS at FROM chaos_effects"
            " WHERE workflow_id = ANY($1::text[]) ORDER BY at",
            batch.ids,
        )
    finally:
        await conn.close()
    effects: dict[tuple[str, str], list[tuple[int, float]]] = defaultdict(list)
    for r in rows:
        effects[(r["workflow_id"], r["step"])].append((r["pid"], float(r["at"])))
    missing = [(w, s) for w in batch.ids for s in STEPS if (w, s) not in effects]
    dupes = {k: v for k, v in effects.items() if len(v) > 1}

    def explained(key: tuple[str, str], runs: list[tuple[int, float]]) -> bool:
        if any(pid in batch.killed_workers for pid, _ in runs) or key in batch.replayed:
            return True
        wid, step = key
        i = STEPS.index(step)
        sent = effects[(wid, STEPS[i - 1])][0][1] if i else batch.started.get(wid, 0.0)
        return any(sent <= k <= runs[-1][1] for k in batch.router_kills)

    unexplained = {k: v for k, v in dupes.items() if not explained(k, v)}
    out["effects"] = Verdict(
        not missing and not unexplained,
        f"{len(dupes)} twice, {len(dupes) - len(unexplained)} explained"
        + (f"; {len(missing)} missing, e.g. {missing[:2]}" if missing else "")
        + (f"; unexplained e.g. {list(unexplained.items())[:2]}" if unexplained else ""),
    )

    early, late = [], []
    for wid in batch.ids:
        due = next(
            (
                e.due_at
                for e in histories.get(wid, [])
                if e.type == "stepScheduled" and e.step == "record"
            ),
            None,
        )
        first = fired.get(wid)
        if first is None or due is None:
            continue
        due_s = due.timestamp()
        if first < due_s - 0.001:  # Kafka timestamps are whole milliseconds
            early.append(f"{wid} by {due_s - first:.4f}s")
        # A timer due during an outage can fire only once the outage is over.
        ready = max([due_s] + [end for start, end in batch.outages if start <= due_s <= end])
        late.append(max(0.0, first - ready))
    late.sort()
    p99 = late[min(len(late) - 1, int(len(late) * 0.99))] if late else float("nan")
    out["timers"] = Verdict(
        not early and len(late) == len(batch.ids) and p99 <= LATE_P99,
        f"p99 {p99:.2f}s late, max {max(late, default=0):.2f}s"
        + (f"; {len(batch.ids) - len(late)} not fired" if len(late) < len(batch.ids) else "")
        + (f"; {len(early)} early, e.g. {early[:3]}" if early else ""),
    )

    disagree = []
    for wid, status in statuses.items():
        events = histories.get(wid, [])
        if status is None:
            disagree.append(wid)
            continue
        ends = [
            e.type for e in events if e.type.startswith("workflow") and e.type != "workflowStarted"
        ]
        final = {
            "completed": "workflowCompleted",
            "failed": "workflowFailed",
            "cancelled": "workflowCancelled",
        }
        want_end = [final[status.status.value]] if status.status.value in final else []
        steps = [(s.seq, s.step, s.attempts, s.status.value) for s in status.steps]
        if ends != want_end or steps != _derived_steps(events) or len(steps) != len(STEPS):
            disagree.append(wid)
    retried = [
        w
        for w, s in statuses.items()
        if s and next(x.attempts for x in s.steps if x.step == "check") > 1
    ]
    expected_retries = sum(1 for i in range(len(batch.ids)) if i % 4 == 0)
    out["history"] = Verdict(
        not disagree and len(retried) >= expected_retries,
        f"{len(statuses) - len(disagree)}/{len(batch.ids)} agree"
        + (
            f"; {len(retried)} retried of {expected_retries} made to fail"
            if len(retried) < expected_retries
            else ""
        )
        + (f"; e.g. {disagree[:2]}" if disagree else ""),
    )
    out["typed errors"] = Verdict(
        not batch.errors,
        f"{batch.retried_starts} retried starts"
        + (f"; {batch.errors[:2]}" if batch.errors else ""),
    )
    return out


async def run_scenario(
    cluster: Cluster, client: hms_bus.Management, name: str, fault: Fault, form: Form, n: int
) -> tuple[dict[str, Verdict], float]:
    tag = uuid.uuid4().hex[:6]
    ids = [f"{tag}-{i}" for i in range(n)]
    batch = Batch(ids, {w: round(random.uniform(*form.delays), 3) for w in ids})
    began = time.monotonic()
    faulting = asyncio.create_task(fault(cluster, batch, form))
    await _start_all(client, batch)
    await faulting
    await _wait_all(client, batch, form.quiet_within)
    return await _check(cluster, client, batch), time.monotonic() - began


async def main(form: Form, only: list[str] | None, tmp: Path) -> int:
    console = Console()
    console.print(f"[bold]hms-bus chaos suite[/] ({form.name} form); process logs in {tmp}")
    # The client's own lines (an outage it rode out) go to a log beside the roles'.
    logging.basicConfig(filename=tmp / "client.log", level=logging.INFO, force=True)
    cluster = Cluster(tmp)
    results: list[tuple[str, dict[str, Verdict], float]] = []
    began = time.monotonic()
    try:
        await cluster.setup()
        async with cluster.client() as client:
            chosen = [
                (n, f)
                for n, f in SCENARIOS
                if (any(o in n for o in only) if only else f is not _storm or form.storm_rounds)
            ]
            rounds = 0
            while not rounds or time.monotonic() - began < form.minutes * 60:
                rounds += 1
                for name, fault in chosen:
                    n = form.timers if name.startswith("scheduler") else form.workflows
                    with console.status(f"{name}: {n} workflows"):
                        verdicts, took = await run_scenario(cluster, client, name, fault, form, n)
                    results.append((name if rounds == 1 else f"{name} #{rounds}", verdicts, took))
                    marks = " ".join(("✓" if v.ok else "✗") for v in verdicts.values())
                    console.print(f"  {name}: {marks} ({took:.0f}s)")
    finally:
        await asyncio.to_thread(cluster.stop)

    table = Table(title=f"faults × invariants ({form.name} form, {time.monotonic() - began:.0f}s)")
    table.add_column("fault")
    for inv in INVARIANTS:
        table.add_column(inv)
    for name, verdicts, took in results:
        table.add_row(
            f"{name} ({took:.0f}s)",
            *(
                f"[green]✓[/] {verdicts[i].detail}"
                if verdicts[i].ok
                else f"[red]✗[/] {verdicts[i].detail}"
                for i in INVARIANTS
            ),
        )
    console.print(table)
    failed = [(n, i) for n, v, _ in results for i in INVARIANTS if not v[i].ok]
    if failed:
        console.print(f"[red]{len(failed)} invariant(s) broken[/]:")
        for name, verdicts, _ in results:
            for inv in INVARIANTS:
                if not verdicts[inv].ok:
                    console.print(f"  {name} / {inv}: {verdicts[inv].detail}", soft_wrap=True)
        return 1
    console.print("[green]every invariant held under every fault[/]")
    return 0


def cli() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="the CI form (under 3 minutes)")
    parser.add_argument("--only", action="append", help="scenarios whose name contains this")
    args = parser.parse_args()
    tmp = Path(os.environ.get("CHAOS_TMP") or f"/tmp/hms-chaos-{uuid.uuid4().hex[:6]}")
    tmp.mkdir(parents=True, exist_ok=True)
    return asyncio.run(main(SHORT if args.short else LONG, args.only, tmp))


if __name__ == "__main__":
    sys.exit(cli())
