"""The Postgres store's statements, and how its rows and recorded messages are encoded.

Every statement the store sends is a constant here, named for what it does, so that a
benchmark (``bench/postgres_projector.py``) runs the store's own SQL rather than a
copy, and a reader finds the SQL of an operation in one place. The one whose text
depends on its filters, a page of ``list_workflows``, is built by
:func:`list_workflows_sql`.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any

import asyncpg
import orjson

from .._projection import StepRow, WorkflowRow
from .._status import StepState, WorkflowState
from ..transport import Outgoing
from . import ListQuery
from ._cursor import parse_cursor

__all__ = [
    "MARK_PUBLISHED",
    "CLAIM_TIMERS",
    "COUNT_START",
    "COUNT_WORKFLOWS",
    "COUNT_WORKFLOWS_OF",
    "DELETE_TIMERS",
    "FIRST_TIMER",
    "PRUNE",
    "PRUNE_COUNT",
    "SAVE_HEALTH",
    "SAVE_SCHEDULE_TICKS",
    "SCHEDULE_TICKS",
    "LOAD_HEALTH",
    "HISTORY",
    "LOAD_STEPS",
    "LOAD_WORKFLOWS",
    "INSERT_EVENTS",
    "LOCK_LEDGER",
    "READ_LEDGER",
    "READ_STARTS",
    "REGISTER_STARTS",
    "SELECT_FOLD_STEPS",
    "SELECT_FOLD_WORKFLOWS",
    "STEP_COLUMNS",
    "TAKE_OVER_STARTS",
    "WORKFLOW_COLUMNS",
    "WRITE_FOLD",
    "WRITE_LEDGER",
    "b64",
    "json_text",
    "list_workflows_sql",
    "loads_text",
    "pack",
    "step_row",
    "unb64",
    "unpack",
    "workflow_row",
]

# -- encoding of what the ledger and timers keep ----------------------------------------


def b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode()


def unb64(text: str | None) -> bytes | None:
    return None if text is None else base64.b64decode(text)


def pack(messages: Iterable[Outgoing]) -> bytes:
    return orjson.dumps(
        [[m.topic, b64(m.key), b64(m.value), [[k, b64(v)] for k, v in m.headers]] for m in messages]
    )


def unpack(data: bytes | None) -> tuple[Outgoing, ...]:
    if not data:
        return ()
    return tuple(
        Outgoing(
            topic,
            unb64(value) or b"",
            key=unb64(key),
            headers=tuple((k, unb64(v) or b"") for k, v in headers),
        )
        for topic, key, value, headers in orjson.loads(data)
    )


def json_text(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def loads_text(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)


WORKFLOW_COLUMNS = (
    "workflow_id, workflow, status, payload::text AS payload, result::text AS result, error,"
    " created_at, updated_at, finished_at, sla_breached, start_event_id, confirmed, version,"
    " parent_id"
)
STEP_COLUMNS = (
    "workflow_id, seq, step, status, attempts, scheduled_at, due_at, started_at, finished_at,"
    " error, sla_breached, grp, waiting_for, child_id"
)

# -- the projection's statements (also what bench/postgres_projector.py measures) --------

INSERT_EVENTS = (
    # The new events go into the history; the workflows they name are locked (sorted:
    # no deadlocks between projectors) in the same round trip. One row comes back: how
    # many were new, and their ids only when some were not (after a redelivery).
    "WITH ins AS (INSERT INTO hms_events (namespace, event_id, workflow_id, type, ts, body)"
    " SELECT $1, e, w, t, ts, b::jsonb"
    " FROM unnest($2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::text[])"
    " WITH ORDINALITY AS x(e, w, t, ts, b, n) ORDER BY n"
    " ON CONFLICT (namespace, event_id) DO NOTHING RETURNING event_id, workflow_id),"
    " lk AS (SELECT pg_advisory_xact_lock(hashtextextended($1 || ':' || w, 0)) AS l"
    "  FROM (SELECT DISTINCT workflow_id AS w FROM ins ORDER BY 1) d)"
    " SELECT (SELECT count(*) FROM lk) AS locks, count(*)::int AS n,"
    " CASE WHEN count(*) < cardinality($2::text[]) THEN array_agg(event_id) END AS ids"
    " FROM ins"
)
# The reads probe the primary key once per key: a LATERAL subquery with OFFSET 0, which
# the planner may not flatten into a join. Flattened, a table without statistics yet (a
# new deployment, a test) got a hash join over every row of the namespace, and with
# statistics the steps read became a sequential scan: a cost that grows with the table.
SELECT_FOLD_WORKFLOWS = (
    # What the fold needs of each workflow: not its payload and result, which the fold
    # only sets while they are null and the upsert keeps (COALESCE).
    "SELECT x.* FROM unnest($2::text[]) AS k(w) CROSS JOIN LATERAL"
    " (SELECT workflow_id, workflow, status, error, created_at, updated_at, finished_at,"
    "  sla_breached, start_event_id, confirmed, version, parent_id FROM hms_workflows"
    "  WHERE namespace = $1 AND workflow_id = k.w OFFSET 0) AS x"
)
SELECT_FOLD_STEPS = (
    # Only the step executions the batch's events name.
    "SELECT x.* FROM unnest($2::text[], $3::int[]) AS k(w, q) CROSS JOIN LATERAL"
    f" (SELECT {STEP_COLUMNS} FROM hms_steps"
    "  WHERE namespace = $1 AND workflow_id = k.w AND seq = k.q OFFSET 0) AS x"
)
WRITE_FOLD = (
    # The changed workflows and step executions, and the notification of what changed,
    # in one statement. The upsert keeps a workflow's payload and result, which the
    # fold (reading neither) only sets while they are null.
    "WITH wf AS (INSERT INTO hms_workflows AS w (namespace, workflow_id, workflow, status,"
    "  payload, result, error, created_at, updated_at, finished_at, sla_breached,"
    "  start_event_id, confirmed, version, parent_id)"
    "  SELECT $1, i, n, s, p::jsonb, r::jsonb, e, c, u, f, b, se, cf, v, pi FROM unnest("
    "  $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],"
    "  $8::timestamptz[], $9::timestamptz[], $10::timestamptz[], $11::bool[],"
    "  $12::text[], $13::bool[], $27::text[], $28::text[])"
    "  AS x(i, n, s, p, r, e, c, u, f, b, se, cf, v, pi)"
    "  ON CONFLICT (namespace, workflow_id) DO UPDATE SET status = excluded.status,"
    "  payload = COALESCE(w.payload, excluded.payload),"
    "  result = COALESCE(excluded.result, w.result), error = excluded.error,"
    "  updated_at = excluded.updated_at, finished_at = excluded.finished_at,"
    "  sla_breached = excluded.sla_breached, confirmed = excluded.confirmed,"
    "  start_event_id = CASE WHEN w.start_event_id = '' THEN excluded.start_event_id"
    "  ELSE w.start_event_id END, version = COALESCE(excluded.version, w.version),"
    "  parent_id = COALESCE(excluded.parent_id, w.parent_id)),"
    " st AS (INSERT INTO hms_steps (namespace, workflow_id, seq, step, status, attempts,"
    "  scheduled_at, due_at, started_at, finished_at, error, sla_breached, grp,"
    "  waiting_for, child_id)"
    "  SELECT $1, * FROM unnest($14::text[], $15::int[], $16::text[], $17::text[],"
    "  $18::int[], $19::timestamptz[], $20::timestamptz[], $21::timestamptz[],"
    "  $22::timestamptz[], $23::text[], $24::bool[], $29::text[], $30::text[], $31::text[])"
    "  ON CONFLICT (namespace, workflow_id, seq) DO UPDATE SET"
    "  status = excluded.status, attempts = excluded.attempts,"
    "  scheduled_at = excluded.scheduled_at, due_at = excluded.due_at,"
    "  started_at = excluded.started_at, finished_at = excluded.finished_at,"
    "  error = excluded.error, sla_breached = excluded.sla_breached, grp = excluded.grp,"
    "  waiting_for = excluded.waiting_for, child_id = excluded.child_id)"
    " SELECT pg_notify($25, p) FROM unnest($26::text[]) AS p"
)

# -- starts ----------------------------------------------------------------------------

REGISTER_STARTS = (
    # Insert what is new; answer for every id: created, or what is on record.
    "WITH ins AS (INSERT INTO hms_workflows (namespace, workflow_id, workflow, status, payload,"
    "  created_at, updated_at, start_event_id)"
    "  SELECT $1, i, n, 'running', p::jsonb, c, c, e FROM unnest($2::text[], $3::text[],"
    "  $4::text[], $5::text[], $6::timestamptz[]) AS x(i, n, p, e, c)"
    "  ON CONFLICT (namespace, workflow_id) DO NOTHING RETURNING workflow_id)"
    " SELECT workflow_id, true AS created, NULL AS workflow, NULL AS start_event_id,"
    "  NULL::bool AS confirmed, NULL AS payload FROM ins"
    " UNION ALL SELECT workflow_id, false, workflow, start_event_id, confirmed, payload::text"
    "  FROM hms_workflows WHERE namespace = $1 AND workflow_id = ANY($2::text[])"
    "  AND workflow_id NOT IN (SELECT workflow_id FROM ins)"
)
READ_STARTS = (
    "SELECT workflow_id, false AS created, workflow, start_event_id, confirmed,"
    " payload::text AS payload FROM hms_workflows"
    " WHERE namespace = $1 AND workflow_id = ANY($2::text[])"
)

# -- the coordinator's ledger ---------------------------------------------------------------

LOCK_LEDGER = (
    "SELECT pg_advisory_xact_lock(hashtextextended($1 || ':ledger:' || w, 0))"
    " FROM unnest($2::text[]) AS w ORDER BY w"
)
READ_LEDGER = (
    # The claims' recorded transitions (kind 0), which workflows closed (kind 1), and the
    # facts under the prefixes the claims read (kind 2: transition_id is the key).
    "SELECT 0 AS kind, workflow_id, transition_id, published, messages FROM hms_transitions"
    " WHERE namespace = $1 AND (workflow_id, transition_id) IN"
    " (SELECT * FROM unnest($2::text[], $3::text[]))"
    " UNION ALL SELECT 1, workflow_id, NULL, NULL, NULL FROM hms_closed"
    " WHERE namespace = $1 AND workflow_id = ANY($4::text[])"
    " UNION ALL SELECT 2, f.workflow_id, f.key, NULL, f.value"
    " FROM unnest($5::text[], $6::text[]) AS r(w, p) JOIN hms_facts f"
    " ON f.namespace = $1 AND f.workflow_id = r.w AND starts_with(f.key, r.p)"
)
WRITE_LEDGER = (
    # New transitions, their timers, closed workflows (dropping their stored timers;
    # the plan holds no timer of a workflow it closes) and the timers' notification.
    "WITH t AS (INSERT INTO hms_transitions (namespace, workflow_id, transition_id, messages)"
    "  SELECT $1, * FROM unnest($2::text[], $3::text[], $4::bytea[])),"
    " tm AS (INSERT INTO hms_timers (namespace, timer_id, workflow_id, due_at,"
    "  available_at, message) SELECT $1, i, w, d, d, m FROM unnest($5::text[], $6::text[],"
    "  $7::timestamptz[], $8::bytea[]) AS x(i, w, d, m) ON CONFLICT (namespace, timer_id)"
    "  DO NOTHING),"
    " c AS (INSERT INTO hms_closed (namespace, workflow_id)"
    "  SELECT $1, unnest($9::text[]) ON CONFLICT DO NOTHING),"
    " d AS (DELETE FROM hms_timers WHERE namespace = $1 AND workflow_id = ANY($9::text[])),"
    " f AS (INSERT INTO hms_facts (namespace, workflow_id, key, value)"
    "  SELECT $1, * FROM unnest($12::text[], $13::text[], $14::bytea[])"
    "  ON CONFLICT (namespace, workflow_id, key) DO UPDATE SET value = excluded.value),"
    " r AS (DELETE FROM hms_closed WHERE namespace = $1 AND workflow_id = ANY($15::text[]))"
    " SELECT pg_notify($11, p) FROM unnest($10::text[]) AS p"
)


def workflow_row(r: asyncpg.Record) -> WorkflowRow:
    """A workflow's row as read; the fold's narrow read has no payload or result (None)."""
    return WorkflowRow(
        workflow_id=r["workflow_id"],
        workflow=r["workflow"],
        created_at=r["created_at"],
        updated_at=r["updated_at"],
        status=WorkflowState(r["status"]),
        payload=loads_text(r.get("payload")),
        result=loads_text(r.get("result")),
        error=r["error"],
        finished_at=r["finished_at"],
        sla_breached=r["sla_breached"],
        start_event_id=r["start_event_id"],
        confirmed=r["confirmed"],
        version=r["version"],
        parent_id=r["parent_id"],
    )


def step_row(r: asyncpg.Record) -> StepRow:
    return StepRow(
        step=r["step"],
        seq=r["seq"],
        status=StepState(r["status"]),
        attempts=r["attempts"],
        scheduled_at=r["scheduled_at"],
        due_at=r["due_at"],
        started_at=r["started_at"],
        finished_at=r["finished_at"],
        error=r["error"],
        sla_breached=r["sla_breached"],
        group=r["grp"],
        waiting_for=r["waiting_for"],
        child_id=r["child_id"],
    )


# -- reads of the client ---------------------------------------------------------------

LOAD_WORKFLOWS = (
    # Workflows with payload and result, by primary-key probe (see SELECT_FOLD_WORKFLOWS).
    f"SELECT x.* FROM unnest($2::text[]) AS k(w) CROSS JOIN LATERAL"
    f" (SELECT {WORKFLOW_COLUMNS} FROM hms_workflows"
    "  WHERE namespace = $1 AND workflow_id = k.w OFFSET 0) AS x"
)
LOAD_STEPS = (
    # Every step execution of the workflows.
    f"SELECT x.* FROM unnest($2::text[]) AS k(w) CROSS JOIN LATERAL"
    f" (SELECT {STEP_COLUMNS} FROM hms_steps"
    "  WHERE namespace = $1 AND workflow_id = k.w OFFSET 0) AS x"
)


def list_workflows_sql(ns: str, query: ListQuery) -> tuple[str, list[Any]]:
    """The statement of a page of ``list_workflows`` and its arguments: newest first by
    (created_at, workflow_id), filtered, keyset-paged, one row more than the page."""
    where = ["namespace = $1"]
    args: list[Any] = [ns]

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    if query.cursor:
        created, wid = parse_cursor(query.cursor)
        where.append(f"(created_at, workflow_id) < ({arg(created)}, {arg(wid)})")
    if query.workflow is not None:
        where.append(f"workflow = {arg(query.workflow)}")
    if query.status is not None:
        where.append(f"status = {arg(WorkflowState(query.status).value)}")
    if query.since is not None:
        where.append(f"created_at >= {arg(query.since)}")
    if query.until is not None:
        where.append(f"created_at < {arg(query.until)}")
    sql = (
        f"SELECT {WORKFLOW_COLUMNS} FROM hms_workflows WHERE {' AND '.join(where)}"
        f" ORDER BY created_at DESC, workflow_id DESC LIMIT {arg(query.limit + 1)}"
    )
    return sql, args


# -- the rest ------------------------------------------------------------------------

MARK_PUBLISHED = (
    "UPDATE hms_transitions SET published = true, messages = NULL"
    " WHERE namespace = $1 AND (workflow_id, transition_id) IN"
    " (SELECT * FROM unnest($2::text[], $3::text[]))"
)
# $2 is the claimer's "now", or NULL for the server's clock (one clock for every
# scheduler: a process whose clock jumps ahead fires nothing early); $3 the lease (s).
CLAIM_TIMERS = (
    "UPDATE hms_timers t"
    " SET available_at = coalesce($2::timestamptz, clock_timestamp())"
    "                    + make_interval(secs => $3::float8), owner = $4"
    " FROM (SELECT timer_id FROM hms_timers"
    "       WHERE namespace = $1 AND available_at <= coalesce($2::timestamptz, clock_timestamp())"
    "       ORDER BY available_at LIMIT $5 FOR UPDATE SKIP LOCKED) due"
    " WHERE t.namespace = $1 AND t.timer_id = due.timer_id"
    " RETURNING t.timer_id, t.workflow_id, t.due_at, t.message"
)
DELETE_TIMERS = "DELETE FROM hms_timers WHERE namespace = $1 AND timer_id = ANY($2::text[])"
FIRST_TIMER = (
    "SELECT extract(epoch FROM min(available_at) - clock_timestamp())::float8"
    " FROM hms_timers WHERE namespace = $1"
)
SAVE_HEALTH = (
    "INSERT INTO hms_health (namespace, report, updated_at)"
    " VALUES ($1, $2::jsonb, now())"
    " ON CONFLICT (namespace) DO UPDATE"
    " SET report = EXCLUDED.report, updated_at = EXCLUDED.updated_at"
)
LOAD_HEALTH = "SELECT report::text FROM hms_health WHERE namespace = $1"
COUNT_WORKFLOWS = (
    "SELECT status, count(*)::int AS n FROM hms_workflows WHERE namespace = $1 GROUP BY status"
)
COUNT_WORKFLOWS_OF = (
    "SELECT status, count(*)::int AS n FROM hms_workflows"
    " WHERE namespace = $1 AND workflow = $2 GROUP BY status"
)
SCHEDULE_TICKS = "SELECT name, last_tick FROM hms_schedules WHERE namespace = $1"
# Retention: up to $3 workflows finished before $2, oldest first (the partial index on
# finished_at), locked so a concurrent prune takes others; everything of theirs goes.
PRUNE = (
    "WITH v AS (SELECT workflow_id FROM hms_workflows"
    "  WHERE namespace = $1 AND finished_at IS NOT NULL AND finished_at < $2"
    "  AND status IN ('completed', 'failed', 'cancelled')"
    "  ORDER BY finished_at LIMIT $3 FOR UPDATE SKIP LOCKED),"
    " e AS (DELETE FROM hms_events WHERE namespace = $1"
    "  AND workflow_id IN (SELECT workflow_id FROM v) RETURNING 1),"
    " s AS (DELETE FROM hms_steps WHERE namespace = $1"
    "  AND workflow_id IN (SELECT workflow_id FROM v)),"
    " t AS (DELETE FROM hms_transitions WHERE namespace = $1"
    "  AND workflow_id IN (SELECT workflow_id FROM v)),"
    " c AS (DELETE FROM hms_closed WHERE namespace = $1"
    "  AND workflow_id IN (SELECT workflow_id FROM v)),"
    " f AS (DELETE FROM hms_facts WHERE namespace = $1"
    "  AND workflow_id IN (SELECT workflow_id FROM v)),"
    " tm AS (DELETE FROM hms_timers WHERE namespace = $1"
    "  AND workflow_id IN (SELECT workflow_id FROM v)),"
    " w AS (DELETE FROM hms_workflows WHERE namespace = $1"
    "  AND workflow_id IN (SELECT workflow_id FROM v) RETURNING 1)"
    " SELECT (SELECT count(*) FROM w)::int AS workflows, (SELECT count(*) FROM e)::int AS events"
)
PRUNE_COUNT = (
    "SELECT count(*)::int AS workflows, coalesce(sum((SELECT count(*) FROM hms_events e"
    "  WHERE e.namespace = $1 AND e.workflow_id = w.workflow_id)), 0)::int AS events"
    " FROM hms_workflows w WHERE w.namespace = $1 AND w.finished_at IS NOT NULL"
    " AND w.finished_at < $2 AND w.status IN ('completed', 'failed', 'cancelled')"
)
SAVE_SCHEDULE_TICKS = (
    # $4: only where none is stored. Answers what is stored for the names given.
    "WITH up AS (INSERT INTO hms_schedules AS s (namespace, name, last_tick)"
    " SELECT $1, * FROM unnest($2::text[], $3::timestamptz[])"
    " ON CONFLICT (namespace, name) DO UPDATE SET last_tick = excluded.last_tick"
    " WHERE NOT $4 AND excluded.last_tick > s.last_tick RETURNING name, last_tick)"
    " SELECT name, last_tick FROM up UNION ALL SELECT name, last_tick FROM hms_schedules"
    " WHERE namespace = $1 AND name = ANY($2::text[]) AND name NOT IN (SELECT name FROM up)"
)
HISTORY = (
    "SELECT body::text AS body FROM hms_events"
    " WHERE namespace = $1 AND workflow_id = $2 ORDER BY id"
)

# -- crash loops: starts of the step commands a worker took over ------------------------

# $2..$4 the first offset of each partition taken over (its committed offset: rows below
# are finished and forgotten); $5..$7 the commands taken over, whose earlier starts are
# returned in order. A command without a row is counted as started once, now.
TAKE_OVER_STARTS = (
    "WITH forgotten AS ("
    "  DELETE FROM hms_worker_starts s"
    "  USING unnest($2::text[], $3::int[], $4::bigint[]) AS c(topic, part, below)"
    "  WHERE s.namespace = $1 AND s.topic = c.topic AND s.part = c.part AND s.off < c.below"
    "), prior AS ("
    "  SELECT w.i, w.topic, w.part, w.off, coalesce(s.starts, 0) AS starts"
    "  FROM unnest($5::text[], $6::int[], $7::bigint[]) WITH ORDINALITY AS w(topic, part, off, i)"
    "  LEFT JOIN hms_worker_starts s"
    "    ON s.namespace = $1 AND s.topic = w.topic AND s.part = w.part AND s.off = w.off"
    "), counted AS ("
    "  INSERT INTO hms_worker_starts (namespace, topic, part, off, starts)"
    "  SELECT $1, topic, part, off, 1 FROM prior WHERE starts = 0"
    "  ON CONFLICT DO NOTHING"
    ")"
    " SELECT starts FROM prior ORDER BY i"
)
COUNT_START = (
    "INSERT INTO hms_worker_starts (namespace, topic, part, off, starts)"
    " VALUES ($1, $2, $3, $4, 1)"
    " ON CONFLICT (namespace, topic, part, off)"
    " DO UPDATE SET starts = hms_worker_starts.starts + 1"
    " RETURNING starts"
)
