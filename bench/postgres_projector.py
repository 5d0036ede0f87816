"""The projector's write path into PostgreSQL, vs the store's own writes alone.

What runs
---------
The events that ``hms.events`` carries while W workflows of the 4-step workflow of
``memory_throughput.py`` (``s1`` → ``s2`` → ``s3`` → ``s4``) run to completion. Each
workflow produces 14 events, built as the roles build them:

- ``workflowStarted`` (``Management.start``);
- for each step, ``stepScheduled`` (coordinator), ``stepStarted`` and ``completeStep``
  (worker: outcome ``succeeded``, the directive dict ``Worker._execute`` builds for a
  handler that returns a dict, ``payload`` the step's input);
- ``workflowCompleted`` (coordinator).

The stream interleaves workflows as a busy bus does. ``--in-flight K`` workflows are in
progress at any moment. Each next event comes from one of them, picked at random
(seeded: the same interleaving in every run), and a workflow that ends is replaced by the
next one. Strict round-robin would move the K workflows in lockstep, all starting in one
batch and all ending in another. Timestamps grow by 50 µs per event. The stream is cut
into batches of ``--batch B`` events: ``coordinator.batch_size``, 500 by default, which
is what one projector fetch hands to the store. Each event's body, its JSON document as
a worker or the coordinator puts it on the bus, is encoded once
(``hms_bus._codec.encode``) before the clock starts.

- **hms_bus**: ``PostgresStore.apply_events(events, bodies)`` for each batch in turn, as
  the projector calls it, on a store opened with ``postgresql://…?schema=bench_<random>``
  (its migrations create the schema on ``async with``), namespace ``bench``.
- **baseline**: the store's writes alone, without its reads and its Python, on a fresh
  schema created by the same migrations (``hms_bus.store.postgres.migrate``). The rows
  that the store writes for each batch are computed beforehand by the projection itself:
  ``fold`` over ``WorkflowRow`` objects, batch by batch, which names the rows each batch
  changes, with their values at the end of the batch. The store's fold reads neither
  ``payload`` nor ``result`` (its upsert keeps them), so each batch folds its workflows
  with both unset, as the store does. The arguments are built by the store's own
  functions (``hms_bus.store._pg_projection``), each given a stand-in connection that
  records what it sends: ``apply_events`` up to its first statement, ``INSERT_EVENTS``
  for the batch's events (the same bodies; the statement also takes the workflows'
  advisory locks), and ``write_fold`` for the rows the batch changes, with no
  notifications. Then, per batch, one transaction sends these two statements,
  imported from ``hms_bus.store._sql``. Every argument is built before the clock.
  Nothing is read, folded or encoded inside it. The warm-up round checks, batch by
  batch, that the rows the store hands ``write_fold`` make the baseline's arguments.

hms_bus sends the same two statements with the same arguments, except the
notifications. On top of them it runs the fold's two SELECTs (``SELECT_FOLD_WORKFLOWS``,
``SELECT_FOLD_STEPS``), and its Python: decoding the selected rows, ``apply_event``,
building the argument lists, the pool's acquire and release. Its ``WRITE_FOLD`` also
sends the notifications of what changed. So the ratio hms_bus / baseline is the share
of hms_bus's time that its writes take, and 1 − ratio the share of the reads, the fold
and the notifications.

Every schema starts alike, before the clock:

- ``--history H`` finished workflows (2000 by default) are in it, and ``hms_workflows``
  and ``hms_steps`` are analyzed. A store in service has history and statistics.
  ``--history 0`` measures fresh tables without statistics. The history runs through
  the store once, before the rounds, into a schema of its own (``register_start`` for
  each workflow, then ``apply_events`` batch by batch); each schema gets a copy of its
  rows (``INSERT … SELECT`` on the server).
- Every workflow of the stream is registered by the store's ``register_starts`` (what
  ``register_start`` sends), as ``Management.start`` does before it publishes
  ``workflowStarted``. So the projector updates rows that exist, as it does in a
  deployment.

All three systems (hms_bus, the baseline, hms_bus.phases below) run in the same round,
each on its own schema, **interleaved batch by batch**: batch 1 for each, then batch 2
for each, and so on, with the order rotating. So load from elsewhere on the machine,
checkpoints and the like fall on all of them alike. After the round, every schema must
hold the same rows as the baseline's: per table, the row count and an order-free digest
(the sum of 64-bit hashes of each row's text; the events' identity column is left out).
Then the schemas are dropped.

What is measured
----------------
``events/s = events / wall``, where wall is the time spent inside ``apply_events`` (inside
the baseline's transactions), summed over the batches. The table also gives, per
event, the CPU time of this process (``time.process_time``) and of the Postgres
backend serving the system (from ``/proc``, so Linux and a local server only;
``-`` otherwise), the WAL bytes written (``pg_current_wal_lsn`` around each batch;
other sessions on the server add to it), and the GC time inside the clock. The
client and the server take turns (each statement waits for its answer), so wall ≈
client CPU + server CPU. Each figure is measured ``--repeat R`` times and the median is
reported. One untimed round on a smaller stream warms everything up first.

*Phases*. ``hms_bus.phases`` is hms_bus once more, through a timing proxy. The proxy
wraps the pool, the connection and the transaction, and times every statement by the
store's name for it (``INSERT_EVENTS``, with the locks; ``SELECT_FOLD_WORKFLOWS``;
``SELECT_FOLD_STEPS``; ``WRITE_FOLD``, with the notifications), BEGIN, COMMIT, and the
pool's acquire and release. A statement's time includes asyncpg encoding its arguments
and decoding its result, the round trip and the server's work. It also times
``apply_event``, and the store's ``load_fold`` and ``write_fold``
(``hms_bus.store._pg_projection``): their time less their statements' is *py: decode
rows* and *py: write arguments*. *py: other* is what is left: decoding the bodies to
text, the rest of the method and the proxy's own calls. The baseline runs through the
same proxy. The proxy adds a little time; the hms_bus.phases total is printed next to the
plain run's.

How to read the output
----------------------
One row per system: events/s; wall seconds; µs of wall per event; µs of this process's
CPU and of the backend's CPU per event; WAL bytes per event; GC ms; and the ratio of
its events/s to the baseline's (1 means as fast as the store's writes alone). Below
the table, the phases of hms_bus and of the baseline, in µs per event and as a share of
the total. The last line of stdout is one JSON object with every figure; ``--json``
prints only that line.

Usage::

    python bench/postgres_projector.py [--store postgresql://…] [--workflows W]
                                       [--batch B] [--in-flight K] [--history H]
                                       [--repeat R] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import itertools
import json
import os
import platform
import random
import statistics
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

import hms_bus
from hms_bus import _projection as projection
from hms_bus._codec import encode
from hms_bus._envelope import new_id
from hms_bus._events import (
    StepCompleted,
    StepScheduled,
    StepStarted,
    WorkflowCompleted,
    WorkflowStarted,
)
from hms_bus._projection import StepRow, WorkflowRow, fold
from hms_bus.store import _pg_projection as fold_io
from hms_bus.store import _pg_rows as rows_io
from hms_bus.store._notify import channel_name
from hms_bus.store._pg_conn import connection
from hms_bus.store._pg_rows import Start
from hms_bus.store._sql import (
    INSERT_EVENTS,
    SELECT_FOLD_STEPS,
    SELECT_FOLD_WORKFLOWS,
    WRITE_FOLD,
)
from hms_bus.store.postgres import PostgresStore, migrate

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))  # memory_throughput, for the shared measuring code

from memory_throughput import GC, STEPS, WORKFLOW  # noqa: E402

DEFAULT_STORE = "postgresql://postgres@127.0.0.1:5432/test"
NAMESPACE = "bench"
T0 = datetime(2025, 1, 1, tzinfo=UTC)
TICK = timedelta(microseconds=50)
WORKER_ID = new_id()  # the process id a worker puts in stepStarted


# -- the event stream -----------------------------------------------------------------


def workflow_events(i: int, clock: Callable[[], datetime]) -> Iterator[Any]:
    """The 14 events of one workflow run, in the order the roles publish them; each
    event is stamped by ``clock()`` when the stream takes it."""
    wid = uuid.uuid4().hex
    payload = {
        "order_id": f"o-{i:07d}",
        "customer": f"c-{i % 997:04d}",
        "amount": round(10 + (i % 500) * 0.37, 2),
        "currency": "EUR",
        "items": [{"sku": f"sku-{(i + k) % 211}", "qty": 1 + k} for k in range(3)],
    }
    yield WorkflowStarted(
        workflow_id=wid, workflow=WORKFLOW, payload=payload, service="bench", ts=clock()
    )
    data: Any = payload
    for seq, step in enumerate(STEPS, start=1):
        common = {"workflow_id": wid, "workflow": WORKFLOW, "step": step, "seq": seq}
        yield StepScheduled(**common, attempt=1, due_at=None, ts=clock())
        started = StepStarted(**common, attempt=1, worker=WORKER_ID, ts=clock())
        yield started
        out = {"order_id": payload["order_id"], "step": step, "ok": True}
        done = clock()
        yield StepCompleted(
            **common,
            attempt=1,
            outcome="succeeded",
            payload=data,
            # as Worker._execute builds it for a handler that returns a dict
            directive={"kind": "default", "step": None, "data": out, "delay": None},
            started_at=started.ts,
            finished_at=done,
            ts=done,
        )
        data = out
    yield WorkflowCompleted(workflow_id=wid, workflow=WORKFLOW, result=data, ts=clock())


def event_stream(workflows: int, in_flight: int, seed: int, t0: datetime) -> list[Any]:
    """All events of ``workflows`` runs, ``in_flight`` of them in progress at a time.

    Each next event comes from one of the in-flight workflows picked at random (seeded,
    so every run gets the same stream); a workflow that ends is replaced by the next.
    Strict round-robin would move the in-flight workflows in lockstep (all start in one
    batch, all finish in another), which no bus does.
    """
    ticks = itertools.count()

    def clock() -> datetime:
        return t0 + next(ticks) * TICK

    rng = random.Random(seed)
    pending = (workflow_events(i, clock) for i in range(workflows))
    active: list[Iterator[Any]] = list(itertools.islice(pending, in_flight))
    out: list[Any] = []
    while active:
        k = rng.randrange(len(active))
        ev = next(active[k], None)
        if ev is not None:
            out.append(ev)
            continue
        nxt = next(pending, None)
        if nxt is not None:
            active[k] = nxt
        else:
            active[k] = active[-1]
            active.pop()
    return out


# -- the store's writes, computed ahead ---------------------------------------------------

# WRITE_FOLD's channel in the baseline's arguments: it sends no notifications on it.
BASELINE_CHANNEL = channel_name("bench", NAMESPACE)


class _Recorded(Exception):
    """Ends a call of the store's function once its first query is recorded."""


class _Recorder:
    """Stands in for a connection: records the statements that the store's functions
    (``hms_bus.store._pg_projection``) send, with their arguments, and sends nothing.
    A query that would answer rows (``fetchrow``) ends the call with ``_Recorded``."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, tuple[Any, ...]]] = []

    async def fetchrow(self, sql: str, *args: Any) -> Any:
        self.sent.append((sql, args))
        raise _Recorded

    async def execute(self, sql: str, *args: Any) -> str:
        self.sent.append((sql, args))
        return ""

    def only(self, statement: str) -> tuple[Any, ...]:
        """The arguments of the one statement recorded, which must be ``statement``."""
        if [sql for sql, _ in self.sent] != [statement]:
            raise RuntimeError(
                "the store's projection sends other statements than the benchmark expects"
            )
        return self.sent[0][1]


async def insert_args(events: list[Any], bodies: list[bytes]) -> tuple[Any, ...]:
    """``INSERT_EVENTS``' arguments for ``events``, as the store's ``apply_events`` builds
    them for its first statement (recorded; the call ends there)."""
    rec = _Recorder()
    with contextlib.suppress(_Recorded):
        await fold_io.apply_events(
            rec, NAMESPACE, BASELINE_CHANNEL, events, fold_io.texts_of(events, bodies)
        )
    return rec.only(INSERT_EVENTS)


async def fold_args(
    rows: list[WorkflowRow],
    steps: dict[tuple[str, int], StepRow],
    write_fold: Callable[..., Awaitable[None]],
) -> tuple[Any, ...]:
    """``WRITE_FOLD``'s arguments for the changed ``rows`` and ``steps``, as the store's
    ``write_fold`` builds them, without notifications (recorded)."""
    rec = _Recorder()
    await write_fold(rec, NAMESPACE, BASELINE_CHANNEL, rows, steps, [])
    return rec.only(WRITE_FOLD)


@dataclass
class Batch:
    """One batch of events with their bodies, and the store's writes for it."""

    events: list[Any]
    bodies: list[bytes]  # each event's JSON document, as on the bus
    insert_args: tuple[Any, ...]  # INSERT_EVENTS' arguments
    fold_args: tuple[Any, ...]  # WRITE_FOLD's, with no notifications


def starts_of(events: list[Any]) -> list[Start]:
    return [
        (e.workflow_id, e.workflow, e.payload, e.event_id, e.ts)
        for e in events
        if isinstance(e, WorkflowStarted)
    ]


@dataclass
class Workload:
    events: list[Any]
    batches: list[Batch]
    starts: list[Start]  # the stream's workflows, registered before the clock
    workflows: int
    batch: int
    history: list[Any]  # the events of the workflows in the store before the clock
    history_workflows: int
    template: str | None = None  # the schema that holds them (make_template)


async def project(events: list[Any], size: int) -> list[Batch]:
    """``events`` in batches of ``size``, each with the store's writes for it, computed
    as ``PostgresStore.apply_events`` computes them from the rows ``register_start``
    leaves: the batch's workflows folded by the projection (``fold``), then the
    arguments built by the store's own functions (:func:`insert_args`, :func:`fold_args`).

    The store's fold reads neither ``payload`` nor ``result``, and ``WRITE_FOLD`` keeps
    what the row holds (``COALESCE``). So here too each batch folds its workflows with
    both unset, and what the row holds is restored after the batch. The warm-up round
    checks that the store writes these rows (:func:`checked_writes`)."""
    rows = {
        wid: WorkflowRow(
            workflow_id=wid,
            workflow=name,
            created_at=ts,
            updated_at=ts,
            payload=payload,
            start_event_id=eid,
        )
        for wid, name, payload, eid, ts in starts_of(events)
    }
    batches = []
    for k in range(0, len(events), size):
        chunk = events[k : k + size]
        bodies = [encode(e) for e in chunk]
        kept: dict[str, tuple[Any, Any]] = {}  # (payload, result) stored before the batch
        for ev in chunk:
            row = rows[ev.workflow_id]
            if ev.workflow_id not in kept:
                kept[ev.workflow_id] = (row.payload, row.result)
                row.payload = row.result = None
        done = fold(rows, chunk)
        changed = [rows[w] for w in sorted(done.changed)]
        batches.append(
            Batch(
                chunk,
                bodies,
                await insert_args(chunk, bodies),
                await fold_args(changed, done.steps, fold_io.write_fold),
            )
        )
        for wid, (payload, result) in kept.items():  # COALESCE, as WRITE_FOLD does
            row = rows[wid]
            row.payload = row.payload if payload is None else payload
            row.result = result if row.result is None else row.result
    return batches


async def build_workload(workflows: int, in_flight: int, batch: int, history: int) -> Workload:
    """The measured stream, its batches with their bodies and the store's writes for
    each (computed ahead), and ``history`` finished workflows' events, which every run
    holds before the clock starts."""
    events = event_stream(workflows, in_flight, seed=0, t0=T0)
    old = event_stream(history, in_flight, seed=1, t0=T0 - timedelta(days=1)) if history else []
    return Workload(
        events=events,
        batches=await project(events, batch),
        starts=starts_of(events),
        workflows=workflows,
        batch=batch,
        history=old,
        history_workflows=history,
    )


HISTORY_TABLES = ("hms_events", "hms_workflows", "hms_steps")  # what apply_events writes


async def make_template(url: str, work: Workload) -> None:
    """Run the history through the store once, into a schema of its own: each workflow
    registered (``register_start``), then ``apply_events`` batch by batch, as in service.
    Every system's schema gets a copy of it (:func:`prepare`)."""
    if not work.history:
        return
    work.template = fresh_schema("history")
    async with PostgresStore(Target(url, work.template).store_url, namespace=NAMESPACE) as store:
        await asyncio.gather(*(store.register_start(*s) for s in starts_of(work.history)))
        for k in range(0, len(work.history), work.batch):
            chunk = work.history[k : k + work.batch]
            await store.apply_events(chunk, [encode(e) for e in chunk])


# -- measuring --------------------------------------------------------------------------


def process_cpu(pid: int | None) -> float | None:
    """CPU seconds (user + system) used so far by process ``pid``; None if unknown."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def local_backend(pid: int) -> int | None:
    """``pid`` if it is a Postgres process on this machine (the server is local), else
    None: then the backend's CPU is not reported."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return pid if cmdline.startswith(b"postgres") else None


def lsn_bytes(lsn: str) -> int:
    """A ``pg_lsn`` (``'16/B374D848'``) as a byte position."""
    hi, lo = lsn.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


@dataclass
class RunResult:
    events: int
    wall_s: float
    events_per_s: float
    cpu_s: float  # this process, inside the timed sections
    backend_cpu_s: float | None  # the Postgres backend serving the system
    wal_bytes: int
    gc_s: float
    phases_s: dict[str, float] = field(default_factory=dict)


@dataclass
class Meter:
    """One system's timed sections, summed over the batches."""

    pid: int | None  # its backend
    wall: float = 0.0
    cpu: float = 0.0
    backend: float | None = 0.0
    wal: int = 0
    gc: float = 0.0
    applied: int = 0

    def add_backend(self, before: float | None, after: float | None) -> None:
        if self.backend is None or before is None or after is None:
            self.backend = None
        else:
            self.backend += after - before

    def result(self, events: int, phases: dict[str, float]) -> RunResult:
        return RunResult(
            events=events,
            wall_s=self.wall,
            events_per_s=events / self.wall,
            cpu_s=self.cpu,
            backend_cpu_s=self.backend,
            wal_bytes=self.wal,
            gc_s=self.gc,
            phases_s=dict(phases),
        )


@dataclass(frozen=True)
class Target:
    """Where a system writes: the server, and a schema of its own."""

    url: str  # without ?schema
    schema: str

    @property
    def store_url(self) -> str:
        sep = "&" if "?" in self.url else "?"
        return f"{self.url}{sep}schema={self.schema}"


def fresh_schema(tag: str) -> str:
    return f"bench_{tag}_{uuid.uuid4().hex[:10]}"


async def prepare(admin: asyncpg.Connection, target: Target, work: Workload) -> None:
    """Before the clock: a copy of the history's rows (:func:`make_template`), then
    ANALYZE, so that the planner has the statistics of a store in service (see
    ``--history``); then every workflow of the stream registered, by the store's
    ``register_starts`` (what ``register_start`` sends)."""
    schema = target.schema
    if work.template is not None:
        for table in HISTORY_TABLES:  # new ids in hms_events, in the same order
            await admin.execute(
                f'INSERT INTO "{schema}".{table} OVERRIDING USER VALUE'
                f' SELECT * FROM "{work.template}".{table} ORDER BY 1'
            )
        await admin.execute(f'ANALYZE "{schema}".hms_workflows, "{schema}".hms_steps')
    conn = await asyncpg.connect(target.url, server_settings={"search_path": schema})
    try:
        await rows_io.register_starts(conn, NAMESPACE, work.starts)
    finally:
        await conn.close()


class System:
    """One way of writing the stream, into a schema of its own."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.phases: dict[str, float] = defaultdict(float)

    async def open(self, target: Target) -> int | None:
        """Create the schema (the migrations); return the pid of the backend used."""
        raise NotImplementedError

    async def apply(self, batch: Batch) -> int:
        """Write one batch; return how many events were new."""
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


# -- hms-bus --------------------------------------------------------------------------------


class StoreSystem(System):
    """``PostgresStore.apply_events(events, bodies)`` (or the phases' subclass)."""

    def __init__(self, name: str, store_cls: type[PostgresStore], check: bool = False) -> None:
        super().__init__(name)
        self.store_cls = store_cls
        self.store: PostgresStore | None = None
        self.check = check  # that the store writes what the baseline does (checked_writes)

    async def open(self, target: Target) -> int | None:
        store = self.store = self.store_cls(target.store_url, namespace=NAMESPACE)
        await store.__aenter__()  # creates the schema, with the store's migrations
        # The pool keeps one connection and hands out connected ones first, so that
        # is the one apply_events uses. (A bench-only peek at the store's pool.)
        async with connection(store._p(), "bench") as conn:
            pid = await conn.fetchval("SELECT pg_backend_pid()")
        if isinstance(store, PhasedStore):
            self.phases = store.phases
            self.phases.clear()
        return local_backend(pid)

    async def apply(self, batch: Batch) -> int:
        assert self.store is not None
        if not self.check:
            return await self.store.apply_events(batch.events, batch.bodies)
        with checked_writes(batch):
            return await self.store.apply_events(batch.events, batch.bodies)

    async def close(self) -> None:
        store, self.store = self.store, None
        if store is not None:
            await store.__aexit__(None, None, None)


# -- baseline: the store's writes alone -------------------------------------------------------


@contextlib.contextmanager
def checked_writes(batch: Batch) -> Iterator[None]:
    """While the store applies ``batch``: fail unless the rows its ``write_fold`` is
    given make the baseline's ``WRITE_FOLD`` arguments (:func:`project`), notifications
    aside. Its ``INSERT_EVENTS`` arguments are the baseline's by construction."""
    write = fold_io.write_fold

    async def checked(
        conn: Any, ns: str, channel: str, rows: Any, steps: Any, changes: Any
    ) -> None:
        if await fold_args(rows, steps, write) != batch.fold_args:
            raise RuntimeError("the store writes other rows than the baseline for a batch")
        await write(conn, ns, channel, rows, steps, changes)

    fold_io.write_fold = checked
    try:
        yield
    finally:
        fold_io.write_fold = write


class BaselineSystem(System):
    """Per batch, one transaction of the store's ``INSERT_EVENTS`` and ``WRITE_FOLD``,
    with the arguments computed before the clock by the store's functions (:class:`Batch`)."""

    conn: asyncpg.Connection | None = None

    async def open(self, target: Target) -> int | None:
        self.conn = await asyncpg.connect(
            target.url, server_settings={"search_path": target.schema}
        )
        await migrate(self.conn, target.schema)
        self.timed = _TimedConn(self.conn, self.phases)  # the phases, as for hms_bus
        return local_backend(await self.conn.fetchval("SELECT pg_backend_pid()"))

    async def apply(self, batch: Batch) -> int:
        conn = self.timed
        t0 = time.perf_counter()
        async with conn.transaction():
            got = await conn.fetchrow(INSERT_EVENTS, *batch.insert_args)
            await conn.execute(WRITE_FOLD, *batch.fold_args)
        self.phases["total"] += time.perf_counter() - t0
        return int(got["n"])

    async def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            await conn.close()


# -- phases: the hms-bus path through a timing proxy ------------------------------------------

_KINDS = {  # the store's statements, by name
    INSERT_EVENTS: "sql: INSERT_EVENTS",
    SELECT_FOLD_WORKFLOWS: "sql: SELECT_FOLD_WORKFLOWS",
    SELECT_FOLD_STEPS: "sql: SELECT_FOLD_STEPS",
    WRITE_FOLD: "sql: WRITE_FOLD",
}
PHASES = (
    "pool acquire+release",
    "sql: BEGIN",
    *_KINDS.values(),
    "sql: other",
    "sql: COMMIT",
    "py: decode rows",
    "py: apply_event",
    "py: write arguments",
    "py: other",
)


class _TimedConn:
    def __init__(self, conn: Any, phases: dict[str, float]) -> None:
        self._conn, self._phases = conn, phases

    def __getattr__(self, name: str) -> Any:  # what apply_events does not use: untimed
        return getattr(self._conn, name)

    async def _timed(self, method: str, sql: str, args: tuple[Any, ...]) -> Any:
        t0 = time.perf_counter()
        try:
            return await getattr(self._conn, method)(sql, *args)
        finally:
            self._phases[_KINDS.get(sql, "sql: other")] += time.perf_counter() - t0

    async def fetch(self, sql: str, *args: Any) -> Any:
        return await self._timed("fetch", sql, args)

    async def fetchrow(self, sql: str, *args: Any) -> Any:
        return await self._timed("fetchrow", sql, args)

    async def execute(self, sql: str, *args: Any) -> Any:
        return await self._timed("execute", sql, args)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        tx = self._conn.transaction()
        t0 = time.perf_counter()
        await tx.start()
        self._phases["sql: BEGIN"] += time.perf_counter() - t0
        try:
            yield
        except BaseException:
            await tx.rollback()
            raise
        t0 = time.perf_counter()
        await tx.commit()
        self._phases["sql: COMMIT"] += time.perf_counter() - t0


class _TimedPool:
    """The pool as the store uses it (``hms_bus.store._pg_conn.connection``):
    ``await acquire()``, then ``await release(conn)``, each timed."""

    def __init__(self, pool: asyncpg.Pool, phases: dict[str, float]) -> None:
        self._pool, self._phases = pool, phases

    def __getattr__(self, name: str) -> Any:  # what apply_events does not use: untimed
        return getattr(self._pool, name)

    async def acquire(self) -> _TimedConn:
        t0 = time.perf_counter()
        try:
            return _TimedConn(await self._pool.acquire(), self._phases)
        finally:
            self._phases["pool acquire+release"] += time.perf_counter() - t0

    async def release(self, conn: _TimedConn) -> None:
        t0 = time.perf_counter()
        try:
            await self._pool.release(conn._conn)
        finally:
            self._phases["pool acquire+release"] += time.perf_counter() - t0


class PhasedStore(PostgresStore):
    """``PostgresStore`` whose pool, connections and fold are timed (see module docs)."""

    phases: dict[str, float]

    async def __aenter__(self) -> PhasedStore:
        self.phases = defaultdict(float)
        await super().__aenter__()
        return self

    def _p(self) -> Any:
        return _TimedPool(super()._p(), self.phases)

    async def apply_events(
        self, events: Sequence[Any], bodies: Sequence[bytes] | None = None
    ) -> int:
        t0 = time.perf_counter()
        try:
            with _timed_apply_event(self.phases), _timed_fold_io(self.phases):
                return await super().apply_events(events, bodies)
        finally:
            self.phases["total"] += time.perf_counter() - t0


@contextlib.contextmanager
def _timed_fold_io(phases: dict[str, float]) -> Iterator[None]:
    """Swap the store's ``load_fold`` and ``write_fold`` (what its ``apply_events`` calls,
    in ``hms_bus.store._pg_projection``) for timed wrappers."""
    load, write, clock = fold_io.load_fold, fold_io.write_fold, time.perf_counter

    async def timed_load(*args: Any) -> dict[str, WorkflowRow]:
        t0 = clock()
        try:
            return await load(*args)
        finally:
            phases["load_fold"] += clock() - t0

    async def timed_write(*args: Any) -> None:
        t0 = clock()
        try:
            await write(*args)
        finally:
            phases["write_fold"] += clock() - t0

    fold_io.load_fold, fold_io.write_fold = timed_load, timed_write
    try:
        yield
    finally:
        fold_io.load_fold, fold_io.write_fold = load, write


@contextlib.contextmanager
def _timed_apply_event(phases: dict[str, float]) -> Iterator[None]:
    """Swap the projection's ``apply_event`` (what ``fold`` calls) for a timed wrapper."""
    fold, clock = projection.apply_event, time.perf_counter

    def timed(row: WorkflowRow, event: Any) -> bool:
        t0 = clock()
        try:
            return fold(row, event)
        finally:
            phases["py: apply_event"] += clock() - t0

    projection.apply_event = timed
    try:
        yield
    finally:
        projection.apply_event = fold


def phase_table(raw: dict[str, float]) -> dict[str, float]:
    """Seconds per phase: what the proxy timed; the time of ``load_fold`` and
    ``write_fold`` less their statements'; the rest of the total as ``py: other``."""
    p = defaultdict(float, raw)
    out = {k: p[k] for k in PHASES}
    if "load_fold" in raw:  # the baseline has neither
        out["py: decode rows"] = (
            p["load_fold"] - p["sql: SELECT_FOLD_WORKFLOWS"] - p["sql: SELECT_FOLD_STEPS"]
        )
    if "write_fold" in raw:
        out["py: write arguments"] = p["write_fold"] - p["sql: WRITE_FOLD"]
    out["py: other"] = p["total"] - sum(out.values())
    out["total"] = p["total"]
    return out


# -- checking ----------------------------------------------------------------------------------

_COMPARE = {  # what each system must have written alike: all but the events' identity column
    "hms_events": "namespace, event_id, workflow_id, type, ts, body",
    "hms_workflows": "*",
    "hms_steps": "*",
}


async def fingerprint(admin: asyncpg.Connection, schema: str, work: Workload) -> list[Any]:
    """Per table, the row count and the sum of 64-bit hashes of the rows' text (an
    order-free digest of the contents); fail unless every workflow and step ended."""
    out = []
    for table, cols in _COMPARE.items():
        row = await admin.fetchrow(
            "SELECT count(*), sum(hashtextextended(x::text, 0)::numeric)"
            f' FROM (SELECT {cols} FROM "{schema}".{table}) x'
        )
        out.append((table, *row))
    done = await admin.fetchrow(
        f"SELECT (SELECT count(*) FROM \"{schema}\".hms_workflows WHERE status = 'completed'),"
        f" (SELECT count(*) FROM \"{schema}\".hms_steps WHERE status = 'succeeded')"
    )
    n = work.workflows + work.history_workflows
    want = (len(work.events) + len(work.history), n, n * len(STEPS))
    got = (out[0][1], *done)
    if got != want:
        raise RuntimeError(f"{schema}: (events, completed, succeeded steps) {got} != {want}")
    return out


# -- driver ------------------------------------------------------------------------------------


def make_systems(check: bool) -> list[System]:
    return [
        StoreSystem("hms_bus", PostgresStore, check=check),
        BaselineSystem("baseline"),
        StoreSystem("hms_bus.phases", PhasedStore),
    ]


async def run_round(
    work: Workload, url: str, admin: asyncpg.Connection, tag: str, check: bool = False
) -> dict[str, RunResult]:
    """One run of every system, each on a fresh schema, interleaved batch by batch;
    then compare what they wrote, and drop the schemas. ``check``: that the store's
    writes are the baseline's, batch by batch (:func:`checked_writes`)."""
    systems = make_systems(check)
    targets = {s.name: Target(url, fresh_schema(tag)) for s in systems}
    meters: dict[str, Meter] = {}
    try:
        for s in systems:
            pid = await s.open(targets[s.name])
            await prepare(admin, targets[s.name], work)
            meters[s.name] = Meter(pid)
        GC.begin()  # one collection now; then GC time is counted inside sections only
        GC.on = False
        clock, cpu = time.perf_counter, time.process_time
        lsn = lsn_bytes(await admin.fetchval("SELECT pg_current_wal_lsn()::text"))
        for i, batch in enumerate(work.batches):
            k = i % len(systems)  # rotate who goes first
            for s in systems[k:] + systems[:k]:
                m = meters[s.name]
                b0, g0 = process_cpu(m.pid), GC.total
                GC.on = True
                c0, t0 = cpu(), clock()
                m.applied += await s.apply(batch)
                m.wall += clock() - t0
                m.cpu += cpu() - c0
                GC.on = False
                m.gc += GC.total - g0
                m.add_backend(b0, process_cpu(m.pid))
                now = lsn_bytes(await admin.fetchval("SELECT pg_current_wal_lsn()::text"))
                m.wal, lsn = m.wal + now - lsn, now
        GC.end()
        for s in systems:
            await s.close()
        ref = await fingerprint(admin, targets["baseline"].schema, work)
        for s in systems:
            if meters[s.name].applied != len(work.events):
                raise RuntimeError(
                    f"{s.name}: {meters[s.name].applied} of {len(work.events)} events new"
                )
            if s.name != "baseline":
                got = await fingerprint(admin, targets[s.name].schema, work)
                if got != ref:
                    raise RuntimeError(f"{s.name} wrote other rows than the baseline: {got} {ref}")
        return {s.name: meters[s.name].result(len(work.events), s.phases) for s in systems}
    finally:
        for s in systems:
            with contextlib.suppress(Exception):
                await s.close()
        for t in targets.values():
            await admin.execute(f'DROP SCHEMA IF EXISTS "{t.schema}" CASCADE')


def median_of(runs: list[RunResult]) -> dict[str, Any]:
    def med(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return statistics.median(known) if known else None

    out: dict[str, Any] = {
        "events_per_s": med([r.events_per_s for r in runs]),
        "wall_s": med([r.wall_s for r in runs]),
        "cpu_s": med([r.cpu_s for r in runs]),
        "backend_cpu_s": med([r.backend_cpu_s for r in runs]),
        "wal_bytes": med([r.wal_bytes for r in runs]),
        "gc_s": med([r.gc_s for r in runs]),
    }
    if runs[0].phases_s:
        table = [phase_table(r.phases_s) for r in runs]
        out["phases_s"] = {k: med([t[k] for t in table]) for k in table[0]}
    return out


async def measure(args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    admin = await asyncpg.connect(args.store)
    loads: list[Workload] = []
    try:
        server = await admin.fetchval("SHOW server_version")
        settings = {
            s: await admin.fetchval(f"SHOW {s}")
            for s in ("synchronous_commit", "fsync", "shared_buffers")
        }
        t0 = time.perf_counter()
        warm_w = min(args.workflows, 200)
        warm = await build_workload(
            warm_w, min(args.in_flight, warm_w), args.batch, min(args.history, 200)
        )
        work = await build_workload(args.workflows, args.in_flight, args.batch, args.history)
        log(
            f"built {len(work.events):,} events in {len(work.batches)} batches "
            f"({time.perf_counter() - t0:.1f} s)"
        )
        t0 = time.perf_counter()
        for w in (warm, work):
            loads.append(w)
            await make_template(args.store, w)
        log(
            f"history ({args.history} workflows) run through the store "
            f"({time.perf_counter() - t0:.1f} s); warm-up ({warm_w} workflows each, checked)"
        )
        await run_round(warm, args.store, admin, "warm", check=True)
        runs: dict[str, list[RunResult]] = defaultdict(list)
        for r in range(args.repeat):
            got = await run_round(work, args.store, admin, f"r{r}")
            for name, res in got.items():
                runs[name].append(res)
                log(
                    f"repeat {r + 1}/{args.repeat} {name:<15} {res.events_per_s:>10,.0f} events/s"
                    f"  wall {res.wall_s:6.3f} s"
                )
    finally:
        for w in loads:
            if w.template is not None:
                await admin.execute(f'DROP SCHEMA IF EXISTS "{w.template}" CASCADE')
        await admin.close()
    med = {name: median_of(rs) for name, rs in runs.items()}
    # Per round first (its systems ran interleaved, under the same conditions), then
    # the median over the rounds.
    base = runs["baseline"]
    ratios = {
        name: statistics.median(
            r.events_per_s / b.events_per_s for r, b in zip(rs, base, strict=True)
        )
        for name, rs in runs.items()
        if name != "baseline"
    }
    return {
        "bench": "postgres_projector",
        "hms_bus_version": hms_bus.__version__,
        "asyncpg_version": importlib.metadata.version("asyncpg"),
        "postgres_version": server,
        "postgres_settings": settings,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "workflows": args.workflows,
        "events": len(work.events),
        "events_per_workflow": len(work.events) // args.workflows,
        "batch": args.batch,
        "batches": len(work.batches),
        "in_flight": args.in_flight,
        "history_workflows": args.history,
        "repeat": args.repeat,
        "median": med,
        "ratios_over_baseline": ratios,  # median over the rounds of each round's ratio
        "runs": {name: [vars(r) for r in rs] for name, rs in runs.items()},
    }


def print_table(res: dict[str, Any]) -> None:
    med, ratios, n = res["median"], res["ratios_over_baseline"], res["events"]
    s = res["postgres_settings"]
    print()
    print(
        f"hms-bus {res['hms_bus_version']} on PostgreSQL {res['postgres_version']} "
        f"(asyncpg {res['asyncpg_version']}), Python {res['python']}, {res['cpus']} CPU(s); "
        f"synchronous_commit={s['synchronous_commit']}, fsync={s['fsync']}"
    )
    print(
        f"W={res['workflows']} workflows = {n:,} events, B={res['batch']} "
        f"({res['batches']} batches), in flight K={res['in_flight']}, "
        f"history H={res['history_workflows']}, median of {res['repeat']}"
    )
    head = (
        f"{'system':<15} {'events/s':>10} {'wall s':>8} {'µs/ev':>7} {'cpu µs':>7} "
        f"{'pg µs':>7} {'WAL B':>7} {'GC ms':>7} {'ratio':>7}"
    )
    print(head)
    print("-" * len(head))
    for name, m in med.items():
        pg_us = "-" if m["backend_cpu_s"] is None else f"{1e6 * m['backend_cpu_s'] / n:.1f}"
        ratio = "1" if name == "baseline" else f"{ratios[name]:.3f}"
        print(
            f"{name:<15} {m['events_per_s']:>10,.0f} {m['wall_s']:>8.3f} "
            f"{1e6 * m['wall_s'] / n:>7.1f} {1e6 * m['cpu_s'] / n:>7.1f} {pg_us:>7} "
            f"{m['wal_bytes'] / n:>7,.0f} {1e3 * m['gc_s']:>7.1f} {ratio:>7}"
        )
    print(
        "(µs/ev = wall per event; cpu µs = this process's CPU per event; pg µs = the "
        "backend's CPU per event; WAL B = WAL bytes per event; ratio = events/s / baseline's)"
    )
    hp = med["hms_bus.phases"]["phases_s"]
    bp = med["baseline"]["phases_s"]
    print()
    print(
        f"where the time goes, µs per event (hms_bus through the timing proxy: "
        f"{1e6 * hp['total'] / n:.1f} µs/event in all, vs {1e6 * med['hms_bus']['wall_s'] / n:.1f}"
        " without it)"
    )
    print(f"  {'phase':<26} {'hms_bus':>8} {'share':>6} {'baseline':>9} {'share':>6}")
    for k in hp:
        if k == "total" or not (hp[k] or bp.get(k)):
            continue
        b = f"{1e6 * bp[k] / n:>9.2f} {bp[k] / bp['total']:>6.1%}" if bp.get(k) else ""
        print(f"  {k:<26} {1e6 * hp[k] / n:>8.2f} {hp[k] / hp['total']:>6.1%} {b}".rstrip())
    print(f"  {'total':<26} {1e6 * hp['total'] / n:>8.2f} {'':>6} {1e6 * bp['total'] / n:>9.2f}")
    print()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="PostgresStore.apply_events (the projector's write path) vs the store's "
        "own write statements alone, with arguments computed ahead."
    )
    p.add_argument(
        "--store",
        default=os.environ.get("HMS_TEST_PG_URL", DEFAULT_STORE),
        help=f"postgresql:// URL of the server (default $HMS_TEST_PG_URL or {DEFAULT_STORE}); "
        "each run uses a fresh schema, dropped afterwards",
    )
    p.add_argument("--workflows", type=int, default=2000, help="workflows in the stream (W)")
    p.add_argument("--batch", type=int, default=500, help="events per apply_events call (B)")
    p.add_argument(
        "--in-flight", type=int, default=250, help="workflows interleaved in the stream (K)"
    )
    p.add_argument(
        "--history",
        type=int,
        default=2000,
        help="finished workflows in the store before the clock starts, then ANALYZE "
        "(0: fresh tables without statistics)",
    )
    p.add_argument("--repeat", type=int, default=3, help="repeats; medians are reported (R)")
    p.add_argument("--json", action="store_true", help="print only the JSON result line")
    args = p.parse_args(argv)
    for name in ("workflows", "batch", "in_flight", "repeat"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.history < 0:
        p.error("--history must not be negative")
    if "schema=" in args.store:
        p.error("--store must not name a schema: every run makes its own")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)

    def log(msg: str) -> None:
        if not args.json:
            print(msg, file=sys.stderr, flush=True)

    try:
        res = asyncio.run(measure(args, log))
    except KeyboardInterrupt:
        sys.exit("interrupted")
    if not args.json:
        print_table(res)
    print(json.dumps(res, separators=(",", ":")))


if __name__ == "__main__":
    main()
