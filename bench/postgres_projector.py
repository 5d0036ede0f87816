"""The projector's write path into PostgreSQL, vs the same rows written with bare asyncpg.

What runs
---------
An event stream such as ``hms.events`` carries when W workflows of the 4-step workflow
of ``memory_throughput.py`` (``s1`` → ``s2`` → ``s3`` → ``s4``) run to completion. Each
workflow produces 14 events, built as the roles build them: ``workflowStarted``
(``Management.start``); per step ``stepScheduled`` (coordinator), ``stepStarted`` and
``completeStep`` (worker: outcome ``succeeded``, the directive dict of a handler that
returns a dict, ``payload`` the step's input); and ``workflowCompleted`` (coordinator).
The stream interleaves workflows as a busy bus does: ``--in-flight K`` workflows are in
progress at any moment, each emits its next event in turn (round-robin), and a
workflow that ends is replaced by the next one. Timestamps grow by 50 µs per event.
The stream is cut into batches of ``--batch B`` events (``coordinator.batch_size``,
500 by default: what one projector fetch hands to the store).

- **hms_bus**: ``PostgresStore.apply_events(batch)`` for each batch in turn, on a
  store opened with ``postgresql://…?schema=bench_<random>`` (its migrations create
  the schema on ``async with``), namespace ``bench``. Before the clock starts, every
  workflow is registered with ``register_start``, as ``Management.start`` does before it
  publishes ``workflowStarted``; so the projector updates rows that exist, as it does
  in a deployment.
- **baseline**: what it costs just to write the same rows, on a fresh schema with the
  same migrations (``hms_bus.store.postgres.migrate``) and the same registered rows.
  The rows the store writes for each batch are computed beforehand, in Python, with
  the projection itself (``apply_event`` over ``WorkflowRow`` objects, the rows
  changed by each batch, with their values at the end of the batch). Per batch, one
  transaction: ``executemany`` of the INSERTs of the batch's events into
  ``hms_events`` (the same JSON bodies), then ``executemany`` of the upserts of its
  workflow rows and step rows (the store's own ``ON CONFLICT`` clauses). Nothing is
  read, locked or encoded inside the clock. It is the floor, not a competitor: no
  projector can write less.

After each repeat the two schemas are compared (events, workflow rows, step rows; all
columns but the events' identity column) and the run fails unless they are equal.

What is measured
----------------
``events/s = events / wall``, where wall is the time spent inside ``apply_events`` (the
baseline's transactions), summed over the batches. Next to it: CPU of this process
(``time.process_time``) and of the Postgres backend serving the connection (from
``/proc``, Linux only) per event, WAL bytes written per event (``pg_current_wal_lsn``;
other sessions on the server add to it), and GC time. Each figure is measured
``--repeat R`` times, hms-bus and the baseline interleaved, fresh schemas each time,
and the median is reported. One untimed warm-up of each runs first, on a smaller
stream.

*Phases*: one more hms-bus run per repeat goes through a timing proxy that wraps the
pool, the connection and the transaction, and times every statement by kind (BEGIN,
the events INSERT, the advisory locks, the two SELECTs, the two upserts, COMMIT, pool
acquire/release), and the Python helpers ``apply_events`` calls (``encode`` of each
event body, decoding the SELECTed rows into ``WorkflowRow``/``StepRow``, the
projection ``apply_event``). Each statement's time includes asyncpg encoding its
arguments and decoding its result, the round trip and the server's work. *other
Python* is what is left: building the argument arrays and the rest of the method.
The proxy adds a little time of its own; its total is printed next to the plain run's.

*Variants* (``--variants``, on by default): prototypes of a faster ``apply_events``,
in this file (``hms_bus/`` is not changed), each measured like hms-bus and checked to
write the same rows; see :class:`VariantStore`.

How to read the output
----------------------
One row per system: events/s, wall seconds, µs of wall, of this process's CPU and of
the backend's CPU per event, WAL bytes per event, GC ms, and the ratio of its events/s
to the baseline's (1 = as fast as just writing the rows). The issue's target is a
ratio of at least 0.7; it is reported, not enforced (the exit status is 0 either way).
Below: the phase breakdown of the hms-bus path in µs per event and as a share of the
instrumented wall time. The last line is one JSON object with every figure
(``--json`` prints only that line).

Usage::

    python bench/postgres_projector.py [--store postgresql://…] [--workflows W]
                                       [--batch B] [--in-flight K] [--repeat R]
                                       [--no-variants] [--json]
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
    event is stamped by ``clock()`` when the round-robin asks for it."""
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
    work = Workload(events, batches, starts, workflows)
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
    """COPY the history into ``schema`` and ANALYZE its tables, so that the planner has
    the statistics a store in service has (see ``--history``)."""
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
    await conn.execute(
        f'ANALYZE "{schema}".hms_events, "{schema}".hms_workflows, "{schema}".hms_steps'
    )


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


@dataclass
class RunResult:
    events: int
    wall_s: float
    events_per_s: float
    cpu_s: float  # this process, inside the timed sections
    backend_cpu_s: float | None  # the Postgres backend, over the timed loop
    wal_bytes: int
    gc_s: float
    phases_s: dict[str, float] = field(default_factory=dict)


class Timed:
    """Sums wall and CPU time over the sections it brackets, and brackets the loop for
    the backend's CPU, WAL and GC."""

    def __init__(self, admin: asyncpg.Connection, backend_pid: int | None) -> None:
        self._admin = admin
        self._pid = backend_pid
        self.wall = self.cpu = 0.0

    @contextlib.contextmanager
    def section(self) -> Iterator[None]:
        c0, t0 = time.process_time(), time.perf_counter()
        try:
            yield
        finally:
            self.wall += time.perf_counter() - t0
            self.cpu += time.process_time() - c0

    @contextlib.asynccontextmanager
    async def loop(self, events: int, result: list[RunResult]) -> AsyncIterator[Timed]:
        lsn0 = await self._admin.fetchval("SELECT pg_current_wal_lsn()")
        b0 = process_cpu(self._pid)
        GC.begin()
        yield self
        gc_s = GC.end()
        b1 = process_cpu(self._pid)
        wal = await self._admin.fetchval(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1)::bigint", lsn0
        )
        result.append(
            RunResult(
                events=events,
                wall_s=self.wall,
                events_per_s=events / self.wall,
                cpu_s=self.cpu,
                backend_cpu_s=None if b0 is None or b1 is None else b1 - b0,
                wal_bytes=int(wal),
                gc_s=gc_s,
            )
        )


@dataclass(frozen=True)
class Target:
    """Where runs happen: the server and the schema of this run."""

    url: str  # without ?schema
    schema: str

    @property
    def store_url(self) -> str:
        sep = "&" if "?" in self.url else "?"
        return f"{self.url}{sep}schema={self.schema}"


def fresh_schema(tag: str) -> str:
    return f"bench_{tag}_{uuid.uuid4().hex[:10]}"


async def backend_pid_of(store: PostgresStore) -> int | None:
    """The pid of the backend the store's pool hands out (the pool keeps one
    connection and hands out connected ones first, so apply_events uses this one)."""
    async with store._p().acquire() as conn:  # bench-only peek at the store's pool
        pid = await conn.fetchval("SELECT pg_backend_pid()")
    return int(pid)


# -- hms-bus --------------------------------------------------------------------------------


async def run_store(
    store_cls: type[PostgresStore], work: Workload, target: Target, admin: asyncpg.Connection
) -> RunResult:
    results: list[RunResult] = []
    async with store_cls(target.store_url, namespace=NAMESPACE) as store:
        await load_history(admin, target.schema, work)
        for wid, wf, payload, eid, ts in work.starts:
            await store.register_start(wid, wf, payload, eid, ts)
        timed = Timed(admin, await backend_pid_of(store))
        if isinstance(store, PhasedStore):
            store.phases.clear()  # register_start and the pid query went through it too
        applied = 0
        async with timed.loop(len(work.events), results):
            for batch in work.batches:
                with timed.section():
                    applied += await store.apply_events(batch.events)
        if isinstance(store, PhasedStore):
            results[0].phases_s = dict(store.phases)
    if applied != len(work.events):
        raise RuntimeError(f"{store_cls.__name__}: {applied} of {len(work.events)} events new")
    return results[0]


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
REGISTER = (
    "INSERT INTO hms_workflows (namespace, workflow_id, workflow, status, payload,"
    " created_at, updated_at, start_event_id)"
    " VALUES ($1, $2, $3, 'running', $4::jsonb, $5, $5, $6)"
)


async def run_baseline(work: Workload, target: Target, admin: asyncpg.Connection) -> RunResult:
    results: list[RunResult] = []
    conn = await asyncpg.connect(target.url, server_settings={"search_path": target.schema})
    try:
        await migrate(conn, target.schema)
        await load_history(conn, target.schema, work)
        await conn.executemany(
            REGISTER,
            [(NAMESPACE, w, wf, pg._json(p), ts, eid) for w, wf, p, eid, ts in work.starts],
        )
        timed = Timed(admin, await conn.fetchval("SELECT pg_backend_pid()"))
        async with timed.loop(len(work.events), results):
            for batch in work.batches:
                with timed.section():
                    async with conn.transaction():
                        await conn.executemany(INSERT_EVENT, batch.event_rows)
                        await conn.executemany(UPSERT_WORKFLOW, batch.workflow_rows)
                        await conn.executemany(UPSERT_STEP, batch.step_rows)
    finally:
        await conn.close()
    return results[0]


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


class VariantStore(PostgresStore):
    """Placeholder; filled in below."""


# -- checking ----------------------------------------------------------------------------------

_COMPARE = {
    "hms_events": "namespace, event_id, workflow_id, type, ts, body",
    "hms_workflows": "*",
    "hms_steps": "*",
}


async def check_same(admin: asyncpg.Connection, a: str, b: str, work: Workload) -> None:
    """Fail unless schemas ``a`` and ``b`` hold the same rows (and all of them)."""
    for table, cols in _COMPARE.items():
        diff = await admin.fetchval(
            f'SELECT count(*) FROM ((SELECT {cols} FROM "{a}".{table}'
            f' EXCEPT ALL SELECT {cols} FROM "{b}".{table})'
            f' UNION ALL (SELECT {cols} FROM "{b}".{table}'
            f' EXCEPT ALL SELECT {cols} FROM "{a}".{table})) d'
        )
        if diff:
            raise RuntimeError(f"{table} differs between {a} and {b}: {diff} row(s)")
    counts = await admin.fetchrow(
        f'SELECT (SELECT count(*) FROM "{a}".hms_events) AS e,'
        f" (SELECT count(*) FROM \"{a}\".hms_workflows WHERE status = 'completed') AS w,"
        f" (SELECT count(*) FROM \"{a}\".hms_steps WHERE status = 'succeeded') AS s"
    )
    n = work.workflows + work.history_workflows
    old = 0 if work.history is None else len(work.history.events)
    want = (len(work.events) + old, n, n * len(STEPS))
    if tuple(counts) != want:
        raise RuntimeError(f"{a}: (events, completed, succeeded steps) {tuple(counts)} != {want}")


# -- driver ------------------------------------------------------------------------------------

Runner = Callable[[Workload, Target, asyncpg.Connection], Awaitable[RunResult]]


def cases(variants: bool) -> dict[str, Runner]:
    out: dict[str, Runner] = {
        "hms_bus": lambda w, t, a: run_store(PostgresStore, w, t, a),
        "baseline": run_baseline,
        "hms_bus.phases": lambda w, t, a: run_store(PhasedStore, w, t, a),
    }
    if variants:
        out["variant"] = lambda w, t, a: run_store(VariantStore, w, t, a)
    return out


async def run_round(
    runners: dict[str, Runner], work: Workload, url: str, admin: asyncpg.Connection, tag: str
) -> dict[str, RunResult]:
    """One run of each case on fresh schemas; compare them; drop them."""
    targets = {name: Target(url, fresh_schema(tag)) for name in runners}
    try:
        out = {}
        for name, fn in runners.items():
            out[name] = await fn(work, targets[name], admin)
        ref = targets["baseline"].schema
        for name, t in targets.items():
            if name != "baseline":
                await check_same(admin, t.schema, ref, work)
        return out
    finally:
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
        runners = cases(args.variants)
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
        await run_round(runners, warm, args.store, admin, "warm")
        runs: dict[str, list[RunResult]] = {name: [] for name in runners}
        for r in range(args.repeat):
            got = await run_round(runners, work, args.store, admin, f"r{r}")
            for name, res in got.items():
                runs[name].append(res)
                log(
                    f"repeat {r + 1}/{args.repeat} {name:<15} {res.events_per_s:>10,.0f} events/s"
                    f"  wall {res.wall_s:6.3f} s"
                )
    finally:
        await admin.close()
    med = {name: median_of(rs) for name, rs in runs.items()}
    base = med["baseline"]["events_per_s"]
    ratios = {name: m["events_per_s"] / base for name, m in med.items() if name != "baseline"}
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
        "ratios_over_baseline": ratios,
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
    phases = med.get("hms_bus.phases", {}).get("phases_s")
    if phases:
        total = phases["total"]
        print()
        print(f"hms_bus phases (instrumented run, {1e6 * total / n:.1f} µs/event in all):")
        for k, v in phases.items():
            if k != "total":
                print(f"  {k:<24} {1e6 * v / n:>7.2f} µs/event {v / total:>6.1%}")
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
