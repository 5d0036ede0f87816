"""The ``postgresql://`` state store on asyncpg.

``postgresql://user:pass@host:5432/db[?schema=name]``: the tables live in ``schema``
(default ``public``), created by the versioned migrations shipped in
``hms_bus/store/migrations`` (applied on connect unless ``postgres.migrate`` is off, and
by ``hms-bus migrate``). Every table is keyed by namespace first. The schema is
documented in ``docs/postgres-schema.md``.

Every operation is one transaction of a few statements whatever the batch size
(``unnest`` arrays, no per-row round trips):

- :meth:`PostgresStore.apply_events` inserts the events into the history (skipping
  event ids already there), locks the affected workflows, folds the new events into
  their rows with the same rules as every store (:mod:`hms_bus._projection`) and writes
  the changed rows back.
- :meth:`PostgresStore.claim_transitions` records each decision once per
  (workflow, transition), with its timers, and closes ended workflows.
- :meth:`PostgresStore.claim_due_timers` leases due timers with ``FOR UPDATE SKIP
  LOCKED``, so schedulers racing for them each get different ones.

Connection failures (the database restarting) raise :class:`StoreError` with
``retriable=True``; the roles back off and retry without committing what they could
not store.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from importlib import resources
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import orjson

from .._backends import redact
from .._errors import ConfigError, StoreError
from .._events import decode_event, encode
from .._ledger import plan_claims
from .._projection import StepRow, WorkflowRow, fold
from .._status import StepState, WorkflowPage, WorkflowState, WorkflowStatus
from ..transport import Outgoing
from . import (
    Change,
    ChangeCallback,
    ClaimResult,
    ListQuery,
    StartResult,
    Timer,
    TransitionClaim,
)
from ._batching import Batcher
from ._cursor import encode_cursor, parse_cursor
from ._notify import Listener, channel_name, encode_changes

__all__ = ["MIGRATIONS", "PostgresStore", "migrate"]

log = logging.getLogger("hms_bus.store")

_IDENT_OK = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")
_ROUND = 1000  # workflows read per query by get_workflows


def _migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every shipped migration, in order."""
    out = []
    for entry in resources.files("hms_bus.store.migrations").iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:4].isdigit():
            out.append((int(name[:4]), name, entry.read_text(encoding="utf-8")))
    return sorted(out)


MIGRATIONS = _migrations()
"""The shipped migrations: (version, file name, SQL)."""


def _schema_of(url: str) -> tuple[str, str]:
    """Split ``?schema=`` off ``url``: (url for asyncpg, schema)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = next((v for k, v in query if k == "schema"), "public")
    rest = [(k, v) for k, v in query if k != "schema"]
    if not schema or not set(schema) <= _IDENT_OK or schema[0].isdigit():
        raise ConfigError(
            f"invalid schema {schema!r} in store URL {redact(url)!r}: use lower-case letters, "
            "digits and '_', not starting with a digit"
        )
    scheme = "postgresql" if parts.scheme in ("postgres", "postgresql") else parts.scheme
    return urlunsplit(parts._replace(scheme=scheme, query=urlencode(rest))), schema


def _unavailable(exc: BaseException, what: str) -> StoreError:
    return StoreError(f"{what}: {type(exc).__name__}: {exc}", retriable=True)


_TRANSIENT: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.TooManyConnectionsError,
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
)


@contextlib.asynccontextmanager
async def _errors(what: str) -> Any:
    try:
        yield
    except StoreError:
        raise
    except _TRANSIENT as exc:
        raise _unavailable(exc, what) from exc
    except asyncpg.PostgresError as exc:
        raise StoreError(f"{what}: {type(exc).__name__}: {exc}", retriable=False) from exc


async def migrate(conn: asyncpg.Connection, schema: str) -> list[str]:
    """Apply the migrations ``schema`` lacks; return the names applied.

    Safe when several processes start at once: the work runs in one transaction under
    an advisory lock per schema, so one applies them and the others find them done.
    """
    applied: list[str] = []
    async with conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"hms-bus:migrate:{schema}"
        )
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        await conn.execute(
            f'CREATE TABLE IF NOT EXISTS "{schema}".hms_schema_migrations ('
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {
            r["version"]
            for r in await conn.fetch(f'SELECT version FROM "{schema}".hms_schema_migrations')
        }
        await conn.execute(f'SET LOCAL search_path TO "{schema}"')
        for version, name, sql in MIGRATIONS:
            if version in done:
                continue
            await conn.execute(sql)
            await conn.execute(
                "INSERT INTO hms_schema_migrations (version, name) VALUES ($1, $2)", version, name
            )
            applied.append(name)
    return applied


# -- encoding of what the ledger and timers keep ----------------------------------------


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode()


def _unb64(text: str | None) -> bytes | None:
    return None if text is None else base64.b64decode(text)


def _pack(messages: Iterable[Outgoing]) -> bytes:
    return orjson.dumps(
        [
            [m.topic, _b64(m.key), _b64(m.value), [[k, _b64(v)] for k, v in m.headers]]
            for m in messages
        ]
    )


def _unpack(data: bytes | None) -> tuple[Outgoing, ...]:
    if not data:
        return ()
    return tuple(
        Outgoing(
            topic,
            _unb64(value) or b"",
            key=_unb64(key),
            headers=tuple((k, _unb64(v) or b"") for k, v in headers),
        )
        for topic, key, value, headers in orjson.loads(data)
    )


def _json(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def _loads(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)


_WORKFLOW_COLUMNS = (
    "workflow_id, workflow, status, payload::text AS payload, result::text AS result, error,"
    " created_at, updated_at, finished_at, sla_breached, start_event_id, confirmed"
)
_STEP_COLUMNS = (
    "workflow_id, seq, step, status, attempts, scheduled_at, due_at, started_at, finished_at,"
    " error, sla_breached"
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
    "  sla_breached, start_event_id, confirmed FROM hms_workflows"
    "  WHERE namespace = $1 AND workflow_id = k.w OFFSET 0) AS x"
)
SELECT_FOLD_STEPS = (
    # Only the step executions the batch's events name.
    "SELECT x.* FROM unnest($2::text[], $3::int[]) AS k(w, q) CROSS JOIN LATERAL"
    f" (SELECT {_STEP_COLUMNS} FROM hms_steps"
    "  WHERE namespace = $1 AND workflow_id = k.w AND seq = k.q OFFSET 0) AS x"
)
WRITE_FOLD = (
    # The changed workflows and step executions, and the notification of what changed,
    # in one statement. The upsert keeps a workflow's payload and result, which the
    # fold (reading neither) only sets while they are null.
    "WITH wf AS (INSERT INTO hms_workflows AS w (namespace, workflow_id, workflow, status,"
    "  payload, result, error, created_at, updated_at, finished_at, sla_breached,"
    "  start_event_id, confirmed)"
    "  SELECT $1, i, n, s, p::jsonb, r::jsonb, e, c, u, f, b, se, cf FROM unnest("
    "  $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],"
    "  $8::timestamptz[], $9::timestamptz[], $10::timestamptz[], $11::bool[],"
    "  $12::text[], $13::bool[]) AS x(i, n, s, p, r, e, c, u, f, b, se, cf)"
    "  ON CONFLICT (namespace, workflow_id) DO UPDATE SET status = excluded.status,"
    "  payload = COALESCE(w.payload, excluded.payload),"
    "  result = COALESCE(excluded.result, w.result), error = excluded.error,"
    "  updated_at = excluded.updated_at, finished_at = excluded.finished_at,"
    "  sla_breached = excluded.sla_breached, confirmed = excluded.confirmed,"
    "  start_event_id = CASE WHEN w.start_event_id = '' THEN excluded.start_event_id"
    "  ELSE w.start_event_id END),"
    " st AS (INSERT INTO hms_steps (namespace, workflow_id, seq, step, status, attempts,"
    "  scheduled_at, due_at, started_at, finished_at, error, sla_breached)"
    "  SELECT $1, * FROM unnest($14::text[], $15::int[], $16::text[], $17::text[],"
    "  $18::int[], $19::timestamptz[], $20::timestamptz[], $21::timestamptz[],"
    "  $22::timestamptz[], $23::text[], $24::bool[])"
    "  ON CONFLICT (namespace, workflow_id, seq) DO UPDATE SET"
    "  status = excluded.status, attempts = excluded.attempts,"
    "  scheduled_at = excluded.scheduled_at, due_at = excluded.due_at,"
    "  started_at = excluded.started_at, finished_at = excluded.finished_at,"
    "  error = excluded.error, sla_breached = excluded.sla_breached)"
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
    # The claims' recorded transitions, and (transition_id null) which workflows closed.
    "SELECT workflow_id, transition_id, published, messages FROM hms_transitions"
    " WHERE namespace = $1 AND (workflow_id, transition_id) IN"
    " (SELECT * FROM unnest($2::text[], $3::text[]))"
    " UNION ALL SELECT workflow_id, NULL, NULL, NULL FROM hms_closed"
    " WHERE namespace = $1 AND workflow_id = ANY($4::text[])"
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
    " d AS (DELETE FROM hms_timers WHERE namespace = $1 AND workflow_id = ANY($9::text[]))"
    " SELECT pg_notify($11, p) FROM unnest($10::text[]) AS p"
)


def _workflow_row(r: asyncpg.Record) -> WorkflowRow:
    return WorkflowRow(
        workflow_id=r["workflow_id"],
        workflow=r["workflow"],
        created_at=r["created_at"],
        updated_at=r["updated_at"],
        status=WorkflowState(r["status"]),
        payload=_loads(r["payload"]),
        result=_loads(r["result"]),
        error=r["error"],
        finished_at=r["finished_at"],
        sla_breached=r["sla_breached"],
        start_event_id=r["start_event_id"],
        confirmed=r["confirmed"],
    )


def _step_row(r: asyncpg.Record) -> StepRow:
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
    )


class _Connection(asyncpg.Connection):  # type: ignore[misc]
    """A pooled connection that goes back to its pool without a reset query.

    asyncpg resets a connection on release (advisory locks, cursors, LISTEN, settings):
    one more round trip per use, on every statement the roles send. The store keeps no
    session state on pooled connections: its advisory locks are transaction-scoped,
    it opens no cursors outside transactions, sets nothing after connecting, and listens
    on a connection of its own. An open transaction is still rolled back on release.
    """

    def get_reset_query(self) -> str:
        return ""


class PostgresStore:
    """A :class:`~hms_bus.store.StateStore` in PostgreSQL (see module docs).

    Args:
        url: ``postgresql://user:pass@host:port/db[?schema=name]``.
        namespace: scopes every row, as it scopes topics.
        migrate: apply missing migrations on connect.
        pool_min, pool_max: connections kept and allowed for the roles (projector,
            coordinator, scheduler, monitor).
        client_pool_min, client_pool_max: the same for the client calls (start,
            status, list, history, wait), which never take a connection of the roles.
        command_timeout: seconds before a statement is given up.
        wait_recheck: seconds between the listener's safety re-checks of pending
            waiters.
    """

    def __init__(
        self,
        url: str,
        *,
        namespace: str = "",
        migrate: bool = True,
        pool_min: int = 1,
        pool_max: int = 10,
        client_pool_min: int = 1,
        client_pool_max: int = 4,
        command_timeout: float = 30.0,
        wait_recheck: float = 10.0,
        **_options: object,
    ) -> None:
        self._dsn, self.schema = _schema_of(url)
        self._url = redact(url)
        self._ns = namespace
        self._migrate = migrate
        self._pool_min, self._pool_max = pool_min, pool_max
        self._client_min, self._client_max = min(client_pool_min, client_pool_max), client_pool_max
        self._command_timeout = command_timeout
        self._wait_recheck = wait_recheck
        self._pool: asyncpg.Pool | None = None
        self._client: asyncpg.Pool | None = None
        self._channel = channel_name(self.schema, namespace)
        self._watchers: list[ChangeCallback] = []
        self._listener: Listener | None = None
        self._listening = asyncio.Lock()
        self._timer_added = asyncio.Event()
        self._starts: Batcher[tuple[str, str, Any, str, datetime], StartResult] = Batcher(
            self._register_starts
        )

    @property
    def url(self) -> str:
        """The URL this store was made from, password redacted."""
        return self._url

    async def migrate(self) -> list[str]:
        """Apply the migrations the schema lacks (see :func:`migrate`); return their names.

        Raises:
            StoreError: the database is unreachable (retriable) or refused a statement.
        """
        async with _errors(f"migrating the store at {self._url}"):
            conn = await asyncpg.connect(self._dsn, timeout=self._command_timeout)
            try:
                return await migrate(conn, self.schema)
            finally:
                await conn.close()

    async def _pool_of(self, least: int, most: int, name: str) -> asyncpg.Pool:
        try:
            return await asyncpg.create_pool(
                self._dsn,
                min_size=least,
                max_size=most,
                command_timeout=self._command_timeout,
                server_settings={"search_path": self.schema, "application_name": name},
                connection_class=_Connection,
            )
        except _TRANSIENT as exc:
            raise _unavailable(exc, f"cannot connect to the store at {self._url}") from exc
        except asyncpg.PostgresError as exc:
            raise StoreError(f"the store at {self._url}: {exc}", retriable=False) from exc

    async def __aenter__(self) -> Self:
        if self._migrate:
            await self.migrate()
        self._pool = await self._pool_of(self._pool_min, self._pool_max, "hms-bus")
        try:
            self._client = await self._pool_of(self._client_min, self._client_max, "hms-bus-client")
        except BaseException:
            await self._close_pool(self._pool)
            self._pool = None
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        listener, self._listener = self._listener, None
        self._watchers.clear()
        if listener is not None:
            await listener.close()
        pools = (self._pool, self._client)
        self._pool = self._client = None
        for pool in pools:
            if pool is not None:
                await self._close_pool(pool)

    @staticmethod
    async def _close_pool(pool: asyncpg.Pool) -> None:
        try:
            await asyncio.wait_for(pool.close(), 10)
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            pool.terminate()

    def _p(self) -> asyncpg.Pool:
        """The roles' pool."""
        if self._pool is None:
            raise StoreError(f"the store at {self._url} is not open: use 'async with'")
        return self._pool

    def _c(self) -> asyncpg.Pool:
        """The client calls' pool."""
        if self._client is None:
            raise StoreError(f"the store at {self._url} is not open: use 'async with'")
        return self._client

    # -- change notifications -------------------------------------------------------------

    async def _listen(self) -> Listener:
        """The store's listening connection, opened on first use."""
        async with self._listening:
            if self._listener is None:
                self._c()  # raises unless the store is open
                listener = Listener(
                    self._dsn,
                    self._channel,
                    on_change=self._changed,
                    on_timers=self._timer_added.set,
                    recheck=self._wait_recheck,
                    connect_timeout=self._command_timeout,
                )
                await listener.start()
                self._listener = listener
            return self._listener

    def _changed(self, changes: Sequence[Change] | None) -> None:
        for callback in list(self._watchers):
            callback(changes)

    async def watch(self, on_change: ChangeCallback) -> None:
        """Call ``on_change`` with the changes the projection makes in any process, as
        Postgres notifies them (see :mod:`hms_bus.store._notify`).

        Raises:
            StoreError: (retriable) the listening connection cannot be opened.
        """
        await self._listen()
        self._watchers.append(on_change)

    # -- starts -------------------------------------------------------------------------

    async def register_start(
        self, workflow_id: str, workflow: str, payload: Any, start_event_id: str, now: datetime
    ) -> StartResult:
        """Register a workflow as running unless its id exists already.

        Concurrent calls share one statement (:class:`~hms_bus.store._batching.Batcher`).
        """
        return await self._starts.submit((workflow_id, workflow, payload, start_event_id, now))

    async def _register_starts(
        self, starts: list[tuple[str, str, Any, str, datetime]]
    ) -> list[StartResult]:
        first: dict[str, tuple[str, str, Any, str, datetime]] = {}
        for start in starts:  # the same id twice in a batch: the first one registers it
            first.setdefault(start[0], start)
        rows = list(first.values())
        async with _errors("register_start"), self._c().acquire() as conn:
            found = await conn.fetch(
                REGISTER_STARTS,
                self._ns,
                [r[0] for r in rows],
                [r[1] for r in rows],
                [_json(r[2]) for r in rows],
                [r[3] for r in rows],
                [r[4] for r in rows],
            )
            known = {r["workflow_id"]: r for r in found}
            missing = [r[0] for r in rows if r[0] not in known]
            if missing:  # registered by a transaction that committed after ours began
                for r in await conn.fetch(READ_STARTS, self._ns, missing):
                    known[r["workflow_id"]] = r
        out: list[StartResult] = []
        claimed: set[str] = set()
        for wid, workflow, payload, event_id, _ in starts:
            r = known.get(wid)
            if r is None:  # pragma: no cover - deleted between the two statements
                raise StoreError(f"workflow {wid!r} vanished during start", retriable=True)
            if r["created"] and wid not in claimed and first[wid][3] == event_id:
                claimed.add(wid)
                out.append(StartResult(True, workflow, event_id, False, payload))
            elif r["created"]:  # registered by an earlier call of this batch
                _, name, body, first_event, _ = first[wid]
                out.append(StartResult(False, name, first_event, False, body))
            else:
                out.append(
                    StartResult(
                        False,
                        r["workflow"],
                        r["start_event_id"],
                        bool(r["confirmed"]),
                        _loads(r["payload"]),
                    )
                )
        return out

    # -- projection ---------------------------------------------------------------------

    async def apply_events(
        self, events: Sequence[Any], bodies: Sequence[bytes] | None = None
    ) -> int:
        """Fold events into workflow status in one transaction and notify the changes;
        return how many were new."""
        if not events:
            return 0
        ns = self._ns
        texts = (
            [b.decode() for b in bodies]
            if bodies is not None
            else [encode(e).decode() for e in events]
        )
        async with _errors("apply_events"), self._p().acquire() as conn, conn.transaction():
            got = await conn.fetchrow(
                INSERT_EVENTS,
                ns,
                [e.event_id for e in events],
                [e.workflow_id for e in events],
                [e.type for e in events],
                [e.ts for e in events],
                texts,
            )
            if not got["n"]:
                return 0
            fresh = None if got["ids"] is None else set(got["ids"])
            todo: dict[str, Any] = {}
            for e in events:  # a duplicate within the batch: the first one counts
                if fresh is None or e.event_id in fresh:
                    todo.setdefault(e.event_id, e)
            rows = await self._load_fold(conn, list(todo.values()))
            done = fold(rows, todo.values())
            changes = done.changes
            await self._write_fold(
                conn, [rows[w] for w in sorted(done.changed)], done.steps, changes
            )
        if changes:
            self._changed(changes)  # this process at once; the others by NOTIFY
        return len(todo)

    async def _load_fold(
        self, conn: asyncpg.Connection, events: list[Any]
    ) -> dict[str, WorkflowRow]:
        """What the fold of ``events`` reads: their workflows (without payload and
        result) and the step executions they name."""
        wids = sorted({e.workflow_id for e in events})
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
            for r in await conn.fetch(SELECT_FOLD_WORKFLOWS, self._ns, wids)
        }
        keys = sorted(
            {(e.workflow_id, e.seq) for e in events if getattr(e, "seq", None) is not None}
        )
        if keys:
            for r in await conn.fetch(
                SELECT_FOLD_STEPS, self._ns, [k[0] for k in keys], [k[1] for k in keys]
            ):
                row = rows.get(r["workflow_id"])
                if row is not None:
                    row.steps[r["seq"]] = _step_row(r)
        return rows

    async def _load(self, conn: asyncpg.Connection, wids: list[str]) -> dict[str, WorkflowRow]:
        """Workflows with payload, result and every step, for the client's reads."""
        # Index probes per workflow, as the fold's reads (see SELECT_FOLD_WORKFLOWS).
        found = await conn.fetch(
            f"SELECT x.* FROM unnest($2::text[]) AS k(w) CROSS JOIN LATERAL"
            f" (SELECT {_WORKFLOW_COLUMNS} FROM hms_workflows"
            "  WHERE namespace = $1 AND workflow_id = k.w OFFSET 0) AS x",
            self._ns,
            wids,
        )
        rows = {r["workflow_id"]: _workflow_row(r) for r in found}
        if not rows:
            return rows
        for r in await conn.fetch(
            f"SELECT x.* FROM unnest($2::text[]) AS k(w) CROSS JOIN LATERAL"
            f" (SELECT {_STEP_COLUMNS} FROM hms_steps"
            "  WHERE namespace = $1 AND workflow_id = k.w OFFSET 0) AS x",
            self._ns,
            list(rows),
        ):
            row = rows.get(r["workflow_id"])
            if row is not None:
                row.steps[r["seq"]] = _step_row(r)
        return rows

    async def _write_fold(
        self,
        conn: asyncpg.Connection,
        rows: list[WorkflowRow],
        steps: dict[tuple[str, int], StepRow],
        changes: list[Change],
    ) -> None:
        keys = sorted(steps)
        ss = [steps[k] for k in keys]
        await conn.execute(
            WRITE_FOLD,
            self._ns,
            [r.workflow_id for r in rows],
            [r.workflow for r in rows],
            [r.status.value for r in rows],
            [_json(r.payload) for r in rows],
            [_json(r.result) for r in rows],
            [r.error for r in rows],
            [r.created_at for r in rows],
            [r.updated_at for r in rows],
            [r.finished_at for r in rows],
            [r.sla_breached for r in rows],
            [r.start_event_id for r in rows],
            [r.confirmed for r in rows],
            [k[0] for k in keys],
            [k[1] for k in keys],
            [s.step for s in ss],
            [s.status.value for s in ss],
            [s.attempts for s in ss],
            [s.scheduled_at for s in ss],
            [s.due_at for s in ss],
            [s.started_at for s in ss],
            [s.finished_at for s in ss],
            [s.error for s in ss],
            [s.sla_breached for s in ss],
            self._channel,
            encode_changes(changes),
        )

    # -- coordinator ledger -------------------------------------------------------------

    async def claim_transitions(self, claims: Sequence[TransitionClaim]) -> list[ClaimResult]:
        """Record each claim once, in order (:func:`~hms_bus._ledger.plan_claims`), in one
        transaction of three statements: lock, read, write."""
        if not claims:
            return []
        ns = self._ns
        wids = sorted({c.workflow_id for c in claims})
        async with _errors("claim_transitions"), self._p().acquire() as conn, conn.transaction():
            await conn.execute(LOCK_LEDGER, ns, wids)
            published: dict[tuple[str, str], bool] = {}
            messages: dict[tuple[str, str], bytes | None] = {}
            closed: set[str] = set()
            for r in await conn.fetch(
                READ_LEDGER,
                ns,
                [c.workflow_id for c in claims],
                [c.transition_id for c in claims],
                wids,
            ):
                if r["transition_id"] is None:
                    closed.add(r["workflow_id"])
                else:
                    key = (r["workflow_id"], r["transition_id"])
                    published[key] = r["published"]
                    messages[key] = r["messages"]
            plan = plan_claims(claims, published, lambda k: _unpack(messages[k]), closed)
            if plan.new or plan.closing:
                timers = plan.timers
                await conn.execute(
                    WRITE_LEDGER,
                    ns,
                    [c.workflow_id for c in plan.new],
                    [c.transition_id for c in plan.new],
                    [_pack(c.messages) for c in plan.new],
                    [t.timer_id for t in timers],
                    [t.workflow_id for t in timers],
                    [t.due_at for t in timers],
                    [_pack([t.message]) for t in timers],
                    plan.closing,
                    # Schedulers in other processes wake when this commits.
                    encode_changes((), timers=True) if timers else [],
                    self._channel,
                )
                if timers:
                    self._timer_added.set()  # and this process's at once
        return plan.results

    async def mark_published(self, keys: Sequence[tuple[str, str]]) -> None:
        """Mark claims published and drop their recorded messages."""
        if not keys:
            return
        async with _errors("mark_published"), self._p().acquire() as conn:
            await conn.execute(
                "UPDATE hms_transitions SET published = true, messages = NULL"
                " WHERE namespace = $1 AND (workflow_id, transition_id) IN"
                " (SELECT * FROM unnest($2::text[], $3::text[]))",
                self._ns,
                [k[0] for k in keys],
                [k[1] for k in keys],
            )

    # -- timers -------------------------------------------------------------------------

    async def claim_due_timers(
        self, *, now: datetime, limit: int, lease: float, owner: str
    ) -> list[Timer]:
        """Lease due timers (``FOR UPDATE SKIP LOCKED``) until ``now + lease``."""
        async with _errors("claim_due_timers"), self._p().acquire() as conn:
            rows = await conn.fetch(
                "UPDATE hms_timers t SET available_at = $3, owner = $4"
                " FROM (SELECT timer_id FROM hms_timers"
                "       WHERE namespace = $1 AND available_at <= $2"
                "       ORDER BY available_at LIMIT $5 FOR UPDATE SKIP LOCKED) due"
                " WHERE t.namespace = $1 AND t.timer_id = due.timer_id"
                " RETURNING t.timer_id, t.workflow_id, t.due_at, t.message",
                self._ns,
                now,
                now + timedelta(seconds=lease),
                owner,
                limit,
            )
        return [
            Timer(r["timer_id"], r["workflow_id"], r["due_at"], _unpack(r["message"])[0])
            for r in sorted(rows, key=lambda r: (r["due_at"], r["timer_id"]))
        ]

    async def delete_timers(self, timer_ids: Sequence[str]) -> None:
        """Forget fired timers."""
        if not timer_ids:
            return
        async with _errors("delete_timers"), self._p().acquire() as conn:
            await conn.execute(
                "DELETE FROM hms_timers WHERE namespace = $1 AND timer_id = ANY($2::text[])",
                self._ns,
                list(timer_ids),
            )

    async def wait_for_timers(self, timeout: float) -> None:
        """Sleep until the earliest timer is available, one is added (in any process:
        the coordinator's transaction notifies), or ``timeout``."""
        if self._listener is None:
            try:
                await self._listen()
            except StoreError as exc:  # the timeout bounds the sleep all the same
                log.debug("scheduler: not listening for new timers: %s", exc)
        async with _errors("wait_for_timers"), self._p().acquire() as conn:
            first = await conn.fetchval(
                "SELECT min(available_at) FROM hms_timers WHERE namespace = $1", self._ns
            )
        if first is not None:
            timeout = min(timeout, max(0.0, first.timestamp() - time.time()))
        if timeout <= 0:
            return
        self._timer_added.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._timer_added.wait()

    # -- queries ------------------------------------------------------------------------

    async def get_workflow(self, workflow_id: str) -> WorkflowStatus | None:
        """The workflow with its steps, or None."""
        async with _errors("get_workflow"), self._c().acquire() as conn:
            rows = await self._load(conn, [workflow_id])
        row = rows.get(workflow_id)
        return None if row is None else row.freeze()

    async def get_workflows(self, workflow_ids: Sequence[str]) -> dict[str, WorkflowStatus]:
        """The workflows that exist among ``workflow_ids``, with their steps, by id: two
        statements per thousand ids."""
        out: dict[str, WorkflowStatus] = {}
        ids = list(dict.fromkeys(workflow_ids))
        async with _errors("get_workflows"), self._c().acquire() as conn:
            for i in range(0, len(ids), _ROUND):
                rows = await self._load(conn, ids[i : i + _ROUND])
                out.update((w, row.freeze()) for w, row in rows.items())
        return out

    async def list_workflows(self, query: ListQuery) -> WorkflowPage:
        """Newest first by (created_at, workflow_id), filtered, keyset-paged."""
        where = ["namespace = $1"]
        args: list[Any] = [self._ns]

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
            f"SELECT {_WORKFLOW_COLUMNS} FROM hms_workflows WHERE {' AND '.join(where)}"
            f" ORDER BY created_at DESC, workflow_id DESC LIMIT {arg(query.limit + 1)}"
        )
        async with _errors("list_workflows"), self._c().acquire() as conn:
            found = await conn.fetch(sql, *args)
        rows = [_workflow_row(r) for r in found]
        more = len(rows) > query.limit
        rows = rows[: query.limit]
        return WorkflowPage(
            items=[r.freeze(with_steps=False) for r in rows],
            next_cursor=encode_cursor(rows[-1]) if more and rows else None,
        )

    async def save_health(self, report: dict[str, Any]) -> None:
        """Replace the namespace's health report (one row, one statement)."""
        async with _errors("save_health"), self._p().acquire() as conn:
            await conn.execute(
                "INSERT INTO hms_health (namespace, report, updated_at)"
                " VALUES ($1, $2::jsonb, now())"
                " ON CONFLICT (namespace) DO UPDATE"
                " SET report = EXCLUDED.report, updated_at = EXCLUDED.updated_at",
                self._ns,
                orjson.dumps(report).decode(),
            )

    async def load_health(self) -> dict[str, Any] | None:
        """The namespace's last health report, or None."""
        async with _errors("load_health"), self._c().acquire() as conn:
            try:
                text = await conn.fetchval(
                    "SELECT report::text FROM hms_health WHERE namespace = $1", self._ns
                )
            except asyncpg.UndefinedTableError:  # not migrated: no monitor has written
                return None
        return None if text is None else dict(orjson.loads(text))

    async def history(self, workflow_id: str) -> list[Any]:
        """The events applied for the workflow, in the order applied."""
        async with _errors("history"), self._c().acquire() as conn:
            rows = await conn.fetch(
                "SELECT body::text AS body FROM hms_events"
                " WHERE namespace = $1 AND workflow_id = $2 ORDER BY id",
                self._ns,
                workflow_id,
            )
        return [decode_event(r["body"].encode()) for r in rows]
