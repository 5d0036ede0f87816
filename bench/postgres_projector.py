"""The projector's write path into PostgreSQL, vs the same rows written with bare asyncpg.

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
(seeded: the same interleaving in every run), and a workflow that ends is replaced by the next one.
Strict round-robin would move the K workflows in lockstep, all starting in one batch
and all ending in another. Timestamps grow by 50 µs per event. The stream is cut into
batches of ``--batch B`` events: ``coordinator.batch_size``, 500 by default, which is
what one projector fetch hands to the store.

- **hms_bus**: ``PostgresStore.apply_events(batch)`` for each batch in turn, on a store
  opened with ``postgresql://…?schema=bench_<random>`` (its migrations create the
  schema on ``async with``), namespace ``bench``.
- **baseline**: what it costs just to write the same rows, on a fresh schema created by
  the same migrations (``hms_bus.store.postgres.migrate``). The rows that the store
  writes for each batch are computed beforehand, in Python, by the projection itself:
  ``apply_event`` over ``WorkflowRow`` objects, batch by batch, keeping the rows each
  batch changes with their values at the end of the batch. Then, per batch, one
  transaction: ``executemany`` of the INSERTs of the batch's events into ``hms_events``
  (the same JSON bodies), and ``executemany`` of the upserts of its workflow rows and
  step rows (with the store's own ``ON CONFLICT`` clauses). Nothing is read, locked or
  encoded inside the clock. This is the floor on what the client does. It is not a
  floor on the server's work: ``executemany`` runs one statement per row, and the
  store's ``unnest`` statements cost the server less per row (see the phases).

Every schema starts alike, before the clock:

- ``--history H`` finished workflows (2000 by default) are loaded with COPY, and
  ``hms_workflows`` and ``hms_steps`` are analyzed. A store in service has history
  and statistics. Without them (``--history 0``), the planner picks plans for the
  store's SELECTs that scan the whole namespace, which costs more with every batch.
- Every workflow of the stream is registered with the row ``register_start`` writes,
  as ``Management.start`` does before it publishes ``workflowStarted``. So the
  projector updates rows that exist, as it does in a deployment.

All systems (hms-bus, the baseline, the instrumented hms-bus and the variants below)
run in the same round, each on its own schema, **interleaved batch by batch**: batch 1
for each, then batch 2 for each, and so on, with the order rotating. So load from
elsewhere on the machine, checkpoints and the like fall on all of them alike. After
the round, every schema must hold the same rows as the baseline's: per table, the row
count and an order-free digest (the sum of 64-bit hashes of each row's text; the
events' identity column is left out). Then the schemas are dropped.

What is measured
----------------
``events/s = events / wall``, where wall is the time spent inside ``apply_events`` (in
the baseline's transactions), summed over the batches. The table also gives, per
event, the CPU time of this process (``time.process_time``) and of the Postgres
backend serving the system (from ``/proc``, so Linux and a local server only;
``-`` otherwise), the WAL bytes written (``pg_current_wal_lsn`` around each batch;
other sessions on the server add to it), and the GC time inside the clock. The
client and the server take turns (each statement waits for its answer), so wall ≈
client CPU + server CPU. Each figure is measured ``--repeat R`` times and the median is
reported. One untimed round on a smaller stream warms everything up first.

*Phases*. ``hms_bus.phases`` is hms-bus once more, through a timing proxy. The proxy
wraps the pool, the connection and the transaction, and times every statement by kind
(BEGIN, the events INSERT, the advisory locks, the two SELECTs, the two upserts,
COMMIT, pool acquire and release). It also times the Python helpers that
``apply_events`` calls: ``encode`` of each event body, the decoding of the selected
rows into ``WorkflowRow`` and ``StepRow``, and the projection ``apply_event``. A
statement's time includes asyncpg encoding its arguments and decoding its result, the
round trip and the server's work. *py: other* is what is left: building the argument
lists and the rest of the method. The baseline's statements are timed the same way.
The proxy adds a little time of its own; its total is printed next to the plain run's.

*Variants* (on by default; ``--no-variants`` skips them): prototypes of a faster
``apply_events``, in this file (``hms_bus/`` is not changed). Each is measured like
hms-bus and must write the same rows. See :class:`VariantStore`.

How to read the output
----------------------
One row per system: events/s; wall seconds; µs of wall per event; µs of this process's
CPU and of the backend's CPU per event; WAL bytes per event; GC ms; and the ratio of
its events/s to the baseline's (1 means as fast as just writing the rows). The issue's
target is a ratio of at least 0.7. It is reported, not enforced: the exit status is 0
either way. Below the table, the phases of hms-bus and of the baseline, in µs per
event and as a share of the total. The last line of stdout is one JSON object with
every figure; ``--json`` prints only that line.

Usage::

    python bench/postgres_projector.py [--store postgresql://…] [--workflows W]
                                       [--batch B] [--in-flight K] [--history H]
                                       [--repeat R] [--no-variants] [--json]
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
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson

import hms_bus
import hms_bus.store.postgres as pg
from hms_bus._events import (
    StepCompleted,
    StepScheduled,
    StepStarted,
    WorkflowCompleted,
    WorkflowStarted,
    encode,
    new_id,
)
from hms_bus._projection import StepRow, WorkflowRow, apply_event
from hms_bus._status import WorkflowState
from hms_bus.store.postgres import PostgresStore, migrate

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))  # memory_throughput, for the shared measuring code

from memory_throughput import GC, STEPS, WORKFLOW  # noqa: E402

DEFAULT_STORE = "postgresql://postgres@127.0.0.1:5432/test"
NAMESPACE = "bench"
TARGET_RATIO = 0.7  # the target, reported next to the ratio
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


@dataclass
class Batch:
    """One batch of events and the rows the store writes for it (for the baseline)."""

    events: list[Any]
    event_rows: list[tuple[Any, ...]]
    workflow_rows: list[tuple[Any, ...]]
    step_rows: list[tuple[Any, ...]]


@dataclass
class Workload:
    events: list[Any]
    batches: list[Batch]
    starts: list[tuple[str, str, Any, str, datetime]]  # register_start arguments
    workflows: int
    bodies: dict[str, str]  # event_id -> the body text of its hms_events row
    history: Batch | None = None  # rows already in the store when the clock starts
    history_workflows: int = 0


def workflow_values(r: WorkflowRow) -> tuple[Any, ...]:
    return (
        NAMESPACE,
        r.workflow_id,
        r.workflow,
        r.status.value,
        pg._json(r.payload),
        pg._json(r.result),
        r.error,
        r.created_at,
        r.updated_at,
        r.finished_at,
        r.sla_breached,
        r.start_event_id,
        r.confirmed,
    )


def step_values(wid: str, s: StepRow) -> tuple[Any, ...]:
    return (
        NAMESPACE,
        wid,
        s.seq,
        s.step,
        s.status.value,
        s.attempts,
        s.scheduled_at,
        s.due_at,
        s.started_at,
        s.finished_at,
        s.error,
        s.sla_breached,
    )


def event_values(e: Any) -> tuple[Any, ...]:
    return (NAMESPACE, e.event_id, e.workflow_id, e.type, e.ts, encode(e).decode())


def project(events: list[Any], batch: int) -> tuple[list[Batch], dict[str, WorkflowRow]]:
    """Fold ``events`` batch by batch as ``PostgresStore.apply_events`` does, starting
    from the rows ``register_start`` leaves: each batch with the rows it changes (their
    values at its end), and the final rows."""
    rows = {
        e.workflow_id: WorkflowRow(
            workflow_id=e.workflow_id,
            workflow=e.workflow,
            created_at=e.ts,
            updated_at=e.ts,
            payload=e.payload,
            start_event_id=e.event_id,
        )
        for e in events
        if isinstance(e, WorkflowStarted)
    }
    batches = []
    for k in range(0, len(events), batch):
        chunk = events[k : k + batch]
        changed: set[str] = set()
        steps: dict[tuple[str, int], StepRow] = {}
        for ev in chunk:
            row = rows[ev.workflow_id]
            if apply_event(row, ev):
                changed.add(ev.workflow_id)
                seq = getattr(ev, "seq", None)
                if seq is not None and seq in row.steps:
                    steps[(ev.workflow_id, seq)] = row.steps[seq]
        batches.append(
            Batch(
                events=chunk,
                event_rows=[event_values(e) for e in chunk],
                workflow_rows=[workflow_values(rows[w]) for w in sorted(changed)],
                step_rows=[step_values(w, steps[(w, q)]) for w, q in sorted(steps)],
            )
        )
    return batches, rows


def build_workload(workflows: int, in_flight: int, batch: int, history: int) -> Workload:
    """The measured stream, its batches and the rows the store writes for each batch
    (computed ahead, by the same projection), and ``history`` finished workflows'
    rows, which every run loads before the clock starts."""
    events = event_stream(workflows, in_flight, seed=0, t0=T0)
    batches, _ = project(events, batch)
    starts = [
        (e.workflow_id, e.workflow, e.payload, e.event_id, e.ts)
        for e in events
        if isinstance(e, WorkflowStarted)
    ]
    bodies = {row[1]: row[-1] for b in batches for row in b.event_rows}
    work = Workload(events, batches, starts, workflows, bodies)
    if history:
        old = event_stream(history, in_flight, seed=1, t0=T0 - timedelta(days=1))
        _, rows = project(old, len(old))
        work.history_workflows = history
        work.history = Batch(
            events=old,
            event_rows=[event_values(e) for e in old],
            workflow_rows=[workflow_values(r) for _, r in sorted(rows.items())],
            step_rows=[
                step_values(w, r.steps[q]) for w, r in sorted(rows.items()) for q in sorted(r.steps)
            ],
        )
    return work


async def load_history(conn: asyncpg.Connection, schema: str, work: Workload) -> None:
    """COPY the history into ``schema`` and ANALYZE the tables ``apply_events`` reads,
    so that the planner has the statistics of a store in service (see ``--history``)."""
    h = work.history
    if h is None:
        return
    for table, rows in (
        ("hms_events", h.event_rows),
        ("hms_workflows", h.workflow_rows),
        ("hms_steps", h.step_rows),
    ):
        await conn.copy_records_to_table(
            table, records=rows, columns=COLUMNS[table], schema_name=schema
        )
    await conn.execute(f'ANALYZE "{schema}".hms_workflows, "{schema}".hms_steps')


COLUMNS = {
    "hms_events": ["namespace", "event_id", "workflow_id", "type", "ts", "body"],
    "hms_workflows": [
        "namespace",
        "workflow_id",
        "workflow",
        "status",
        "payload",
        "result",
        "error",
        "created_at",
        "updated_at",
        "finished_at",
        "sla_breached",
        "start_event_id",
        "confirmed",
    ],
    "hms_steps": [
        "namespace",
        "workflow_id",
        "seq",
        "step",
        "status",
        "attempts",
        "scheduled_at",
        "due_at",
        "started_at",
        "finished_at",
        "error",
        "sla_breached",
    ],
}


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


REGISTER = (
    'INSERT INTO "{schema}".hms_workflows (namespace, workflow_id, workflow, status, payload,'
    " created_at, updated_at, start_event_id)"
    " VALUES ($1, $2, $3, 'running', $4::jsonb, $5, $5, $6)"
)


async def prepare(admin: asyncpg.Connection, schema: str, work: Workload) -> None:
    """Before the clock: load the history (and ANALYZE), then register every workflow
    of the stream, writing the row ``register_start`` writes."""
    await load_history(admin, schema, work)
    await admin.executemany(
        REGISTER.format(schema=schema),
        [(NAMESPACE, w, wf, pg._json(p), ts, eid) for w, wf, p, eid, ts in work.starts],
    )


class System:
    """One way of writing the stream, into a schema of its own."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.phases: dict[str, float] = defaultdict(float)

    async def open(self, target: Target, work: Workload) -> int | None:
        """Create the schema (the migrations); return the pid of the backend used."""
        raise NotImplementedError

    async def apply(self, batch: Batch) -> int:
        """Write one batch; return how many events were new."""
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


# -- hms-bus --------------------------------------------------------------------------------


class StoreSystem(System):
    """``PostgresStore.apply_events`` (or a subclass: the phases, the variants)."""

    def __init__(self, name: str, store_cls: type[PostgresStore]) -> None:
        super().__init__(name)
        self.store_cls = store_cls
        self.store: PostgresStore | None = None

    async def open(self, target: Target, work: Workload) -> int | None:
        store = self.store = self.store_cls(target.store_url, namespace=NAMESPACE)
        await store.__aenter__()  # creates the schema, with the store's migrations
        if isinstance(store, VariantStore):
            store.bodies = work.bodies
        # The pool keeps one connection and hands out connected ones first, so that
        # is the one apply_events uses. (A bench-only peek at the store's pool.)
        async with store._p().acquire() as conn:
            pid = await conn.fetchval("SELECT pg_backend_pid()")
        if isinstance(store, PhasedStore):
            self.phases = store.phases
            self.phases.clear()
        return local_backend(pid)

    async def apply(self, batch: Batch) -> int:
        assert self.store is not None
        return await self.store.apply_events(batch.events)

    async def close(self) -> None:
        store, self.store = self.store, None
        if store is not None:
            await store.__aexit__(None, None, None)


# -- baseline: the same rows, written with executemany -------------------------------------

INSERT_EVENT = (
    "INSERT INTO hms_events (namespace, event_id, workflow_id, type, ts, body)"
    " VALUES ($1, $2, $3, $4, $5, $6::jsonb)"
)
UPSERT_WORKFLOW = (
    "INSERT INTO hms_workflows AS w (namespace, workflow_id, workflow, status, payload, result,"
    " error, created_at, updated_at, finished_at, sla_breached, start_event_id, confirmed)"
    " VALUES ($1, $2, $3, $4, $5::jsonb, $6::jsonb, $7, $8, $9, $10, $11, $12, $13)"
    " ON CONFLICT (namespace, workflow_id) DO UPDATE SET status = excluded.status,"
    " payload = excluded.payload, result = excluded.result, error = excluded.error,"
    " updated_at = excluded.updated_at, finished_at = excluded.finished_at,"
    " sla_breached = excluded.sla_breached, confirmed = excluded.confirmed,"
    " start_event_id = CASE WHEN w.start_event_id = '' THEN excluded.start_event_id"
    " ELSE w.start_event_id END"
)
UPSERT_STEP = (
    "INSERT INTO hms_steps (namespace, workflow_id, seq, step, status, attempts, scheduled_at,"
    " due_at, started_at, finished_at, error, sla_breached)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
    " ON CONFLICT (namespace, workflow_id, seq) DO UPDATE SET"
    " status = excluded.status, attempts = excluded.attempts,"
    " scheduled_at = excluded.scheduled_at, due_at = excluded.due_at,"
    " started_at = excluded.started_at, finished_at = excluded.finished_at,"
    " error = excluded.error, sla_breached = excluded.sla_breached"
)


class BaselineSystem(System):
    """Per batch, one transaction: ``executemany`` of the precomputed rows."""

    conn: asyncpg.Connection | None = None

    async def open(self, target: Target, work: Workload) -> int | None:
        self.conn = await asyncpg.connect(
            target.url, server_settings={"search_path": target.schema}
        )
        await migrate(self.conn, target.schema)
        return local_backend(await self.conn.fetchval("SELECT pg_backend_pid()"))

    async def apply(self, batch: Batch) -> int:
        conn, ph, clock = self.conn, self.phases, time.perf_counter
        assert conn is not None
        t0 = clock()
        tx = conn.transaction()
        await tx.start()
        t1 = clock()
        try:
            await conn.executemany(INSERT_EVENT, batch.event_rows)
            t2 = clock()
            await conn.executemany(UPSERT_WORKFLOW, batch.workflow_rows)
            t3 = clock()
            await conn.executemany(UPSERT_STEP, batch.step_rows)
            t4 = clock()
        except BaseException:
            await tx.rollback()
            raise
        await tx.commit()
        t5 = clock()
        ph["sql: BEGIN"] += t1 - t0
        ph["sql: INSERT events"] += t2 - t1
        ph["sql: upsert workflows"] += t3 - t2
        ph["sql: upsert steps"] += t4 - t3
        ph["sql: COMMIT"] += t5 - t4
        ph["total"] += t5 - t0
        return len(batch.events)

    async def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            await conn.close()


# -- phases: the hms-bus path through a timing proxy ------------------------------------------

_KINDS = (  # (what the SQL contains, phase), first match wins
    ("INSERT INTO hms_events", "sql: INSERT events"),
    ("pg_advisory_xact_lock", "sql: advisory locks"),
    ("FROM hms_workflows", "sql: SELECT workflows"),
    ("FROM hms_steps", "sql: SELECT steps"),
    ("INSERT INTO hms_workflows", "sql: upsert workflows"),
    ("INSERT INTO hms_steps", "sql: upsert steps"),
)
PHASES = (
    "pool acquire+release",
    "sql: BEGIN",
    *(k for _, k in _KINDS),
    "sql: COMMIT",
    "py: encode bodies",
    "py: decode rows",
    "py: apply_event",
    "py: other",
)


def _kind(sql: str) -> str:
    return next((k for needle, k in _KINDS if needle in sql), "sql: other")


class _TimedConn:
    def __init__(self, conn: Any, phases: dict[str, float]) -> None:
        self._conn, self._phases = conn, phases

    def __getattr__(self, name: str) -> Any:  # what apply_events does not use: untimed
        return getattr(self._conn, name)

    async def fetch(self, sql: str, *args: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return await self._conn.fetch(sql, *args)
        finally:
            self._phases[_kind(sql)] += time.perf_counter() - t0

    async def execute(self, sql: str, *args: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return await self._conn.execute(sql, *args)
        finally:
            self._phases[_kind(sql)] += time.perf_counter() - t0

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
    def __init__(self, pool: asyncpg.Pool, phases: dict[str, float]) -> None:
        self._pool, self._phases = pool, phases

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[_TimedConn]:
        t0 = time.perf_counter()
        conn = await self._pool.acquire()
        self._phases["pool acquire+release"] += time.perf_counter() - t0
        try:
            yield _TimedConn(conn, self._phases)
        finally:
            t0 = time.perf_counter()
            await self._pool.release(conn)
            self._phases["pool acquire+release"] += time.perf_counter() - t0


class PhasedStore(PostgresStore):
    """``PostgresStore`` whose pool, connections and helpers are timed (see module docs)."""

    phases: dict[str, float]

    async def __aenter__(self) -> PhasedStore:
        self.phases = defaultdict(float)
        await super().__aenter__()
        return self

    def _p(self) -> Any:
        return _TimedPool(super()._p(), self.phases)

    async def apply_events(self, events: Sequence[Any]) -> int:
        t0 = time.perf_counter()
        try:
            with _timed_helpers(self.phases):
                return await super().apply_events(events)
        finally:
            self.phases["total"] += time.perf_counter() - t0


@contextlib.contextmanager
def _timed_helpers(phases: dict[str, float]) -> Iterator[None]:
    """Swap the module-level helpers ``apply_events`` calls for timed wrappers."""
    names = {
        "encode": "py: encode bodies",
        "_workflow_row": "py: decode rows",
        "_step_row": "py: decode rows",
        "apply_event": "py: apply_event",
    }
    saved = {name: getattr(pg, name) for name in names}
    clock = time.perf_counter

    def wrap(fn: Callable[..., Any], phase: str) -> Callable[..., Any]:
        def timed(*args: Any) -> Any:
            t0 = clock()
            try:
                return fn(*args)
            finally:
                phases[phase] += clock() - t0

        return timed

    for name, phase in names.items():
        setattr(pg, name, wrap(saved[name], phase))
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(pg, name, fn)


def phase_table(phases: dict[str, float]) -> dict[str, float]:
    """Seconds per phase, with the rest of the time as ``py: other``."""
    out = {p: phases.get(p, 0.0) for p in PHASES}
    out["py: other"] = phases.get("total", 0.0) - sum(v for k, v in out.items())
    out["total"] = phases.get("total", 0.0)
    return out


# -- variants: prototypes of a faster apply_events --------------------------------------------


VARIANTS: dict[str, frozenset[str]] = {  # cumulative: each adds to the one before
    "variant.count": frozenset({"count"}),
    "variant.narrow": frozenset({"count", "narrow"}),
    "variant.json": frozenset({"count", "narrow", "json"}),
    "variant.raw": frozenset({"count", "narrow", "json", "raw"}),
}

_V_EVENTS = (
    "INSERT INTO hms_events (namespace, event_id, workflow_id, type, ts, body)"
    " SELECT $1, e, w, t, ts, b::jsonb"
    " FROM unnest($2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::text[])"
    " WITH ORDINALITY AS x(e, w, t, ts, b, n) ORDER BY n"
    " ON CONFLICT (namespace, event_id) DO NOTHING"
)
_V_EVENTS_JSON = (
    "INSERT INTO hms_events (namespace, event_id, workflow_id, type, ts, body)"
    " SELECT $1, e, w, t, ts, b FROM ROWS FROM (json_to_recordset($2::json)"
    " AS (e text, w text, t text, ts timestamptz, b jsonb))"
    " WITH ORDINALITY AS x(e, w, t, ts, b, n) ORDER BY n"
    " ON CONFLICT (namespace, event_id) DO NOTHING"
)


def _v_insert_count(events_sql: str, expected: str) -> str:
    """``count``: one row back (the number of new events; their ids only when some
    were not new), and the advisory locks taken in the same statement."""
    return (
        f"WITH ins AS ({events_sql} RETURNING event_id, workflow_id),"
        " lk AS (SELECT pg_advisory_xact_lock(hashtextextended($1 || ':' || w, 0)) AS l"
        "  FROM (SELECT DISTINCT workflow_id AS w FROM ins ORDER BY 1) d)"
        " SELECT (SELECT count(*) FROM lk) AS locks, count(*)::int AS n,"
        f" CASE WHEN count(*) < {expected} THEN array_agg(event_id) END AS ids"
        " FROM ins"
    )


_V_INSERT_COUNT = _v_insert_count(_V_EVENTS, "cardinality($2::text[])")
_V_INSERT_COUNT_JSON = _v_insert_count(_V_EVENTS_JSON, "$3::int")
_V_LOCK = (
    "SELECT pg_advisory_xact_lock(hashtextextended($1 || ':' || w, 0))"
    " FROM unnest($2::text[]) AS w ORDER BY w"
)
_V_SELECT_NARROW = (
    "SELECT workflow_id, workflow, status, error, created_at, updated_at, finished_at,"
    " sla_breached, start_event_id, confirmed FROM hms_workflows"
    " WHERE namespace = $1 AND workflow_id = ANY($2::text[])"
)
_V_STEPS_TOUCHED = (
    f"SELECT {pg._STEP_COLUMNS} FROM hms_steps WHERE namespace = $1"
    " AND (workflow_id, seq) IN (SELECT * FROM unnest($2::text[], $3::int[]))"
)
_KEEP = (  # "narrow": keep payload and result unless this batch set them
    " payload = COALESCE(w.payload, excluded.payload),"
    " result = COALESCE(excluded.result, w.result),"
)
_WF_SET = (
    " ON CONFLICT (namespace, workflow_id) DO UPDATE SET status = excluded.status,"
    " payload = excluded.payload, result = excluded.result, error = excluded.error,"
    " updated_at = excluded.updated_at, finished_at = excluded.finished_at,"
    " sla_breached = excluded.sla_breached, confirmed = excluded.confirmed,"
    " start_event_id = CASE WHEN w.start_event_id = '' THEN excluded.start_event_id"
    " ELSE w.start_event_id END"
)
_WF_INTO = (
    "INSERT INTO hms_workflows AS w (namespace, workflow_id, workflow, status,"
    " payload, result, error, created_at, updated_at, finished_at, sla_breached,"
    " start_event_id, confirmed)"
)
_V_UPSERT_WF_ARRAYS = (
    f"{_WF_INTO} SELECT $1, i, n, s, p::jsonb, r::jsonb, e, c, u, f, b, se, cf FROM unnest("
    " $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],"
    " $8::timestamptz[], $9::timestamptz[], $10::timestamptz[], $11::bool[],"
    " $12::text[], $13::bool[]) AS x(i, n, s, p, r, e, c, u, f, b, se, cf)"
)
_V_UPSERT_WF_JSON = (
    f"{_WF_INTO} SELECT $1, i, n, s, p, r, e, c, u, f, b, se, cf FROM json_to_recordset($2::json)"
    " AS x(i text, n text, s text, p jsonb, r jsonb, e text, c timestamptz, u timestamptz,"
    " f timestamptz, b bool, se text, cf bool)"
)
_STEP_SET = (
    " ON CONFLICT (namespace, workflow_id, seq) DO UPDATE SET"
    " status = excluded.status, attempts = excluded.attempts,"
    " scheduled_at = excluded.scheduled_at, due_at = excluded.due_at,"
    " started_at = excluded.started_at, finished_at = excluded.finished_at,"
    " error = excluded.error, sla_breached = excluded.sla_breached"
)
_V_UPSERT_STEPS_JSON = (
    "INSERT INTO hms_steps (namespace, workflow_id, seq, step, status, attempts,"
    " scheduled_at, due_at, started_at, finished_at, error, sla_breached)"
    " SELECT $1, w, q, n, s, a, sc, d, st, f, e, b FROM json_to_recordset($2::json)"
    " AS x(w text, q int, n text, s text, a int, sc timestamptz, d timestamptz,"
    " st timestamptz, f timestamptz, e text, b bool)"
    f"{_STEP_SET}"
)


def _wf_set(narrow: bool) -> str:
    if not narrow:
        return _WF_SET
    return _WF_SET.replace(" payload = excluded.payload, result = excluded.result,", _KEEP)


class VariantStore(PostgresStore):
    """A prototype of a faster ``apply_events``: the same rows, at lower cost.

    Each change is switched on by a name in :attr:`options`. The benchmark runs them
    cumulatively, in this order (:data:`VARIANTS`), and checks that each writes the
    same rows as the baseline. The first three change only the store; ``raw`` also
    needs the projector to pass something new to the store.

    - ``count``: the events INSERT sends back one row (how many events were new, and
      their ids only when some were not, as after a redelivery) instead of one row per
      event. It also takes the advisory locks, in the same statement, which saves a
      round trip. The locks still come before the SELECTs, which run as later
      statements and so see a newer snapshot.
    - ``narrow``: the workflow SELECT leaves out ``payload`` and ``result``, and the
      upsert keeps what the row holds (``COALESCE``). The projection only sets them
      while they are null: ``payload`` from ``workflowStarted``, ``result`` once, when
      the workflow ends. So the rows written are the same, but the two columns are no
      longer converted from jsonb to text, parsed, encoded again and parsed again by
      the server on every batch. The steps SELECT reads only the step executions that
      the batch's events name, not every step of each workflow.
    - ``json``: the events and the upserted rows travel as one JSON document per
      statement (``json_to_recordset``), not as 5, 11 or 12 parallel arrays. asyncpg
      checks every element of an array argument against ``collections.abc`` classes,
      and each check is a Python-level ``isinstance`` call: about 13,000 per batch of
      500 here. The event bodies are embedded in the document as they are
      (``orjson.Fragment``).
    - ``raw``: the event bodies are not encoded again. The projector has each event as
      the bus delivered it (``record.value``). If it handed those bytes to the store
      with the decoded event, ``apply_events`` would not need to call ``encode``. Here
      the bodies come from a table built before the clock starts, so the variant costs
      what that change would cost.
    """

    options: frozenset[str] = frozenset()
    bodies: dict[str, str]  # event_id -> body text, for "raw" (set by StoreSystem.open)

    async def apply_events(self, events: Sequence[Any]) -> int:
        if not events:
            return 0
        ns, opt = self._ns, self.options
        if "raw" in opt:
            bodies = [self.bodies[e.event_id] for e in events]
        else:
            bodies = [encode(e).decode() for e in events]
        if "json" in opt:
            doc = orjson.dumps(
                [
                    {
                        "e": e.event_id,
                        "w": e.workflow_id,
                        "t": e.type,
                        "ts": e.ts,
                        "b": orjson.Fragment(body),
                    }
                    for e, body in zip(events, bodies, strict=True)
                ]
            ).decode()
        else:
            columns = (
                [e.event_id for e in events],
                [e.workflow_id for e in events],
                [e.type for e in events],
                [e.ts for e in events],
                bodies,
            )
        async with pg._errors("apply_events"), self._p().acquire() as conn, conn.transaction():
            if "json" in opt:
                got = await conn.fetchrow(_V_INSERT_COUNT_JSON, ns, doc, len(events))
                fresh = None if got["ids"] is None else set(got["ids"])
            elif "count" in opt:
                got = await conn.fetchrow(_V_INSERT_COUNT, ns, *columns)
                fresh = None if got["ids"] is None else set(got["ids"])
            else:
                found = await conn.fetch(f"{_V_EVENTS} RETURNING event_id", ns, *columns)
                fresh = {r["event_id"] for r in found}
            todo = list(events) if fresh is None else [e for e in events if e.event_id in fresh]
            if not todo:
                return 0
            unique: dict[str, Any] = {}
            for e in todo:  # a duplicate within the batch: the first one counts
                unique.setdefault(e.event_id, e)
            todo = list(unique.values())
            wids = sorted({e.workflow_id for e in todo})
            if "count" in opt:
                rows = await self._v_load(conn, wids, todo)
            elif "narrow" in opt:
                await conn.execute(_V_LOCK, ns, wids)
                rows = await self._v_load(conn, wids, todo)
            else:
                rows = await self._load(conn, wids, lock=True)
            before = {wid: row.status for wid, row in rows.items()}
            created: set[str] = set()
            changed_steps: dict[tuple[str, int], StepRow] = {}
            changed: set[str] = set()
            for ev in todo:
                row = rows.get(ev.workflow_id)
                if row is None:
                    row = rows[ev.workflow_id] = WorkflowRow(
                        workflow_id=ev.workflow_id,
                        workflow=ev.workflow,
                        created_at=ev.ts,
                        updated_at=ev.ts,
                        start_event_id=ev.event_id if ev.type == "workflowStarted" else "",
                    )
                    created.add(ev.workflow_id)
                if apply_event(row, ev):
                    changed.add(ev.workflow_id)
                    seq = getattr(ev, "seq", None)
                    if seq is not None and seq in row.steps:
                        changed_steps[(ev.workflow_id, seq)] = row.steps[seq]
            await self._v_save(conn, [rows[w] for w in sorted(changed | created)], changed_steps)
        for wid in wids:
            if rows[wid].status is not before.get(wid):
                waiter = self._changed.pop(wid, None)
                if waiter is not None:
                    waiter.set()
        return len(todo)

    async def _v_load(self, conn: Any, wids: list[str], todo: list[Any]) -> dict[str, WorkflowRow]:
        """``_load`` without the lock; with ``narrow``, without payload and result and
        only the steps the events name."""
        if "narrow" not in self.options:
            found = await conn.fetch(
                f"SELECT {pg._WORKFLOW_COLUMNS} FROM hms_workflows"
                " WHERE namespace = $1 AND workflow_id = ANY($2::text[])",
                self._ns,
                wids,
            )
            rows = {r["workflow_id"]: pg._workflow_row(r) for r in found}
            steps = await conn.fetch(
                f"SELECT {pg._STEP_COLUMNS} FROM hms_steps"
                " WHERE namespace = $1 AND workflow_id = ANY($2::text[])",
                self._ns,
                wids,
            )
        else:
            found = await conn.fetch(_V_SELECT_NARROW, self._ns, wids)
            rows = {
                r["workflow_id"]: WorkflowRow(
                    workflow_id=r["workflow_id"],
                    workflow=r["workflow"],
                    created_at=r["created_at"],
                    updated_at=r["updated_at"],
                    status=WorkflowState(r["status"]),
                    error=r["error"],
                    finished_at=r["finished_at"],
                    sla_breached=r["sla_breached"],
                    start_event_id=r["start_event_id"],
                    confirmed=r["confirmed"],
                )
                for r in found
            }
            keys = sorted(
                {(e.workflow_id, e.seq) for e in todo if getattr(e, "seq", None) is not None}
            )
            steps = await conn.fetch(
                _V_STEPS_TOUCHED, self._ns, [k[0] for k in keys], [k[1] for k in keys]
            )
        for r in steps:
            row = rows.get(r["workflow_id"])
            if row is not None:
                row.steps[r["seq"]] = pg._step_row(r)
        return rows

    async def _v_save(
        self, conn: Any, rows: list[WorkflowRow], steps: dict[tuple[str, int], StepRow]
    ) -> None:
        narrow = "narrow" in self.options
        if "json" not in self.options:
            if not narrow:
                await self._save(conn, rows, steps)
                return
            if rows:
                await conn.execute(
                    _V_UPSERT_WF_ARRAYS + _wf_set(True),
                    self._ns,
                    [r.workflow_id for r in rows],
                    [r.workflow for r in rows],
                    [r.status.value for r in rows],
                    [pg._json(r.payload) for r in rows],
                    [pg._json(r.result) for r in rows],
                    [r.error for r in rows],
                    [r.created_at for r in rows],
                    [r.updated_at for r in rows],
                    [r.finished_at for r in rows],
                    [r.sla_breached for r in rows],
                    [r.start_event_id for r in rows],
                    [r.confirmed for r in rows],
                )
            await self._save(conn, [], steps)  # the steps upsert, unchanged
            return
        if rows:
            doc = [
                {
                    "i": r.workflow_id,
                    "n": r.workflow,
                    "s": r.status.value,
                    "p": r.payload,
                    "r": r.result,
                    "e": r.error,
                    "c": r.created_at,
                    "u": r.updated_at,
                    "f": r.finished_at,
                    "b": r.sla_breached,
                    "se": r.start_event_id,
                    "cf": r.confirmed,
                }
                for r in rows
            ]
            await conn.execute(
                _V_UPSERT_WF_JSON + _wf_set(narrow), self._ns, orjson.dumps(doc).decode()
            )
        if steps:
            doc = [
                {
                    "w": w,
                    "q": q,
                    "n": s.step,
                    "s": s.status.value,
                    "a": s.attempts,
                    "sc": s.scheduled_at,
                    "d": s.due_at,
                    "st": s.started_at,
                    "f": s.finished_at,
                    "e": s.error,
                    "b": s.sla_breached,
                }
                for (w, q), s in sorted(steps.items())
            ]
            await conn.execute(_V_UPSERT_STEPS_JSON, self._ns, orjson.dumps(doc).decode())


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
    old = 0 if work.history is None else len(work.history.events)
    want = (len(work.events) + old, n, n * len(STEPS))
    got = (out[0][1], *done)
    if got != want:
        raise RuntimeError(f"{schema}: (events, completed, succeeded steps) {got} != {want}")
    return out


# -- driver ------------------------------------------------------------------------------------


def make_systems(variants: bool) -> list[System]:
    out: list[System] = [
        StoreSystem("hms_bus", PostgresStore),
        BaselineSystem("baseline"),
        StoreSystem("hms_bus.phases", PhasedStore),
    ]
    if variants:
        for name, options in VARIANTS.items():
            out.append(StoreSystem(name, type(name, (VariantStore,), {"options": options})))
    return out


async def run_round(
    variants: bool, work: Workload, url: str, admin: asyncpg.Connection, tag: str
) -> dict[str, RunResult]:
    """One run of every system, each on a fresh schema, interleaved batch by batch;
    then compare what they wrote, and drop the schemas."""
    systems = make_systems(variants)
    targets = {s.name: Target(url, fresh_schema(tag)) for s in systems}
    meters: dict[str, Meter] = {}
    try:
        for s in systems:
            pid = await s.open(targets[s.name], work)
            await prepare(admin, targets[s.name].schema, work)
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
    try:
        server = await admin.fetchval("SHOW server_version")
        settings = {
            s: await admin.fetchval(f"SHOW {s}")
            for s in ("synchronous_commit", "fsync", "shared_buffers")
        }
        t0 = time.perf_counter()
        warm_w = min(args.workflows, 200)
        warm = build_workload(
            warm_w, min(args.in_flight, warm_w), args.batch, min(args.history, 200)
        )
        work = build_workload(args.workflows, args.in_flight, args.batch, args.history)
        log(
            f"built {len(work.events):,} events in {len(work.batches)} batches "
            f"({time.perf_counter() - t0:.1f} s); warm-up ({warm_w} workflows each)"
        )
        await run_round(args.variants, warm, args.store, admin, "warm")
        runs: dict[str, list[RunResult]] = defaultdict(list)
        for r in range(args.repeat):
            got = await run_round(args.variants, work, args.store, admin, f"r{r}")
            for name, res in got.items():
                runs[name].append(res)
                log(
                    f"repeat {r + 1}/{args.repeat} {name:<15} {res.events_per_s:>10,.0f} events/s"
                    f"  wall {res.wall_s:6.3f} s"
                )
    finally:
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
        "target": {"ratio_min": TARGET_RATIO, "met": ratios["hms_bus"] >= TARGET_RATIO},
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
    met = res["target"]["met"]
    print(
        f"target (issue): ratio {ratios['hms_bus']:.3f} {'>=' if met else '<'} "
        f"{res['target']['ratio_min']} ({'met' if met else 'NOT met'})"
    )
    hp = med["hms_bus.phases"]["phases_s"]
    bp = med["baseline"]["phases_s"]
    print()
    print(
        f"where the time goes, µs per event (hms_bus through the timing proxy: "
        f"{1e6 * hp['total'] / n:.1f} µs/event in all, vs {1e6 * med['hms_bus']['wall_s'] / n:.1f}"
        " without it)"
    )
    print(f"  {'phase':<24} {'hms_bus':>8} {'share':>6} {'baseline':>9} {'share':>6}")
    for k in hp:
        if k == "total":
            continue
        b = (
            f"{1e6 * bp[k] / n:>9.2f} {bp[k] / bp['total']:>6.1%}"
            if bp.get(k)
            else f"{'':>9} {'':>6}"
        )
        print(f"  {k:<24} {1e6 * hp[k] / n:>8.2f} {hp[k] / hp['total']:>6.1%} {b}")
    print(f"  {'total':<24} {1e6 * hp['total'] / n:>8.2f} {'':>6} {1e6 * bp['total'] / n:>9.2f}")
    print()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="PostgresStore.apply_events (the projector's write path) vs the same rows "
        "written with bare asyncpg executemany."
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
    p.add_argument(
        "--no-variants",
        dest="variants",
        action="store_false",
        help="skip the prototypes of a faster apply_events",
    )
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
