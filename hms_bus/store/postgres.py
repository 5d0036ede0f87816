"""The ``postgresql://`` state store on asyncpg.

``postgresql://user:pass@host:5432/db[?schema=name]``: the tables live in ``schema``
(default ``public``), created by the versioned migrations shipped in
``hms_bus/store/migrations`` (applied on connect unless ``postgres.migrate`` is off, and
by ``hms-bus migrate``). Every table is keyed by namespace first. The schema is
documented in ``docs/postgres-schema.md``.

Every operation is one transaction of a few statements whatever the batch size
(``unnest`` arrays, no per-row round trips). :class:`PostgresStore` owns the pools, the
transactions and the change notifications; what each operation reads and writes is in a
module named for it:

- :mod:`~hms_bus.store._pg_projection`: ``apply_events`` inserts the events into the
  history, locks the affected workflows, folds the new events into their rows with the
  same rules as every store (:mod:`hms_bus._projection`) and writes the changed rows back.
- :mod:`~hms_bus.store._pg_ledger`: ``claim_transitions`` records each decision once per
  (workflow, transition), with its timers, and closes ended workflows; due timers are
  leased with ``FOR UPDATE SKIP LOCKED``, so schedulers racing for them get different ones.
- :mod:`~hms_bus.store._pg_rows`: the clients' reads and starts; :mod:`~hms_bus.store._pg_ops`:
  crash-loop counts, schedule ticks, health and retention; :mod:`~hms_bus.store._sql`: the SQL.

Connection failures (the database restarting) raise :class:`StoreError` with
``retriable=True``; the roles back off and retry without committing what they could
not store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Self

import asyncpg
from pydantic import JsonValue

from .._backends import redact
from .._codec import decode_event
from .._errors import StoreError
from .._events import WorkflowEvent
from .._outage import quiet
from .._status import WorkflowPage, WorkflowStatus
from ..transport import TopicPartition
from . import (
    Change,
    ChangeCallback,
    ClaimResult,
    ListQuery,
    Pruned,
    RecordAt,
    StartResult,
    Timer,
    TransitionClaim,
)
from . import _pg_ledger as ledger_io
from . import _pg_ops as ops
from . import _pg_projection as projection_io
from . import _pg_rows as rows_io
from ._batching import Batcher
from ._cursor import encode_cursor
from ._notify import Listener, channel_name
from ._pg_conn import close_pool, connection, create_pool, errors, split_schema
from ._pg_rows import Start
from ._sql import (
    COUNT_WORKFLOWS,
    COUNT_WORKFLOWS_OF,
    HISTORY,
    list_workflows_sql,
    workflow_row,
)
from .migrations import MIGRATIONS, migrate

__all__ = ["MIGRATIONS", "PostgresStore", "migrate"]

log = logging.getLogger("hms_bus.store")

_ROUND = 1000  # workflows read per query by get_workflows


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
        close_timeout: seconds closing waits for statements to finish before it
            terminates the connections.
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
        close_timeout: float = 5.0,
        **_options: object,
    ) -> None:
        self._dsn, self.schema = split_schema(url)
        self._url = redact(url)
        self._ns = namespace
        self._migrate = migrate
        self._pool_min, self._pool_max = pool_min, pool_max
        self._client_min, self._client_max = min(client_pool_min, client_pool_max), client_pool_max
        self._command_timeout = command_timeout
        self._wait_recheck = wait_recheck
        self._close_timeout = close_timeout
        quiet("asyncpg")  # its pool logs each failed reconnect; hms-bus logs the outage
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

    durable = True

    @property
    def url(self) -> str:
        """The URL this store was made from, password redacted."""
        return self._url

    async def migrate(self) -> list[str]:
        """Apply the migrations the schema lacks (see :func:`migrate`); return their names.

        Raises:
            StoreError: the database is unreachable (retriable) or refused a statement.
        """
        async with errors(f"migrating the store at {self._url}"):
            conn = await asyncpg.connect(self._dsn, timeout=self._command_timeout)
            try:
                applied = await migrate(conn, self.schema)
                await conn.close()
            except BaseException:
                conn.terminate()  # failed or cancelled: do not wait on a polite close
                raise
            return applied

    async def __aenter__(self) -> Self:
        if self._migrate:
            await self.migrate()
        self._pool = await create_pool(
            self._dsn,
            self.schema,
            self._url,
            self._pool_min,
            self._pool_max,
            "hms-bus",
            self._command_timeout,
        )
        try:
            self._client = await create_pool(
                self._dsn,
                self.schema,
                self._url,
                self._client_min,
                self._client_max,
                "hms-bus-client",
                self._command_timeout,
            )
        except BaseException:
            await close_pool(self._pool, self._close_timeout)
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
            await listener.close(self._close_timeout)
        pools = (self._pool, self._client)
        self._pool = self._client = None
        for pool in pools:
            if pool is not None:
                await close_pool(pool, self._close_timeout)

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
        self,
        workflow_id: str,
        workflow: str,
        payload: JsonValue,
        start_event_id: str,
        now: datetime,
    ) -> StartResult:
        """Register a workflow as running unless its id exists already.

        Concurrent calls share one statement (:class:`~hms_bus.store._batching.Batcher`).
        """
        return await self._starts.submit((workflow_id, workflow, payload, start_event_id, now))

    async def _register_starts(self, starts: list[Start]) -> list[StartResult]:
        async with connection(self._c(), "register_start") as conn:
            return await rows_io.register_starts(conn, self._ns, starts)

    # -- projection ---------------------------------------------------------------------

    async def apply_events(
        self, events: Sequence[WorkflowEvent], bodies: Sequence[bytes] | None = None
    ) -> int:
        """Fold events into workflow status in one transaction and notify the changes;
        return how many were new (see :mod:`hms_bus.store._pg_projection`)."""
        if not events:
            return 0
        texts = projection_io.texts_of(events, bodies)
        async with connection(self._p(), "apply_events") as conn, conn.transaction():
            new, changes = await projection_io.apply_events(
                conn, self._ns, self._channel, events, texts
            )
        if changes:
            self._changed(changes)  # this process at once; the others by NOTIFY
        return new

    # -- coordinator ledger -------------------------------------------------------------

    async def claim_transitions(self, claims: Sequence[TransitionClaim]) -> list[ClaimResult]:
        """Record each claim once, in order (:func:`~hms_bus._ledger.plan_claims`), in one
        transaction of three statements: lock, read, write
        (see :mod:`hms_bus.store._pg_ledger`)."""
        if not claims:
            return []
        async with connection(self._p(), "claim_transitions") as conn, conn.transaction():
            results, timers = await ledger_io.claim_transitions(
                conn, self._ns, self._channel, claims
            )
            if timers:
                self._timer_added.set()  # this process's scheduler at once
        return results

    async def mark_published(self, keys: Sequence[tuple[str, str]]) -> None:
        """Mark claims published and drop their recorded messages."""
        if not keys:
            return
        async with connection(self._p(), "mark_published") as conn:
            await ledger_io.mark_published(conn, self._ns, keys)

    # -- timers -------------------------------------------------------------------------

    async def claim_due_timers(
        self, *, now: datetime | None = None, limit: int, lease: float, owner: str
    ) -> list[Timer]:
        """Lease due timers (``FOR UPDATE SKIP LOCKED``) until ``now + lease``; without
        ``now``, by the server's clock, the one clock all schedulers share."""
        async with connection(self._p(), "claim_due_timers") as conn:
            return await ledger_io.claim_due_timers(conn, self._ns, now, limit, lease, owner)

    async def delete_timers(self, timer_ids: Sequence[str]) -> None:
        """Forget fired timers."""
        if not timer_ids:
            return
        async with connection(self._p(), "delete_timers") as conn:
            await ledger_io.delete_timers(conn, self._ns, timer_ids)

    async def wait_for_timers(self, timeout: float) -> None:
        """Sleep until the earliest timer is available, one is added (in any process:
        the coordinator's transaction notifies), or ``timeout``."""
        if self._listener is None:
            try:
                await self._listen()
            except StoreError as exc:  # the timeout bounds the sleep all the same
                log.debug("scheduler: not listening for new timers: %s", exc)
        # Cleared before the query: a timer added while it runs still wakes this wait.
        self._timer_added.clear()
        async with connection(self._p(), "wait_for_timers") as conn:
            first = await ledger_io.first_timer(conn, self._ns)
        if first is not None:
            timeout = min(timeout, max(0.0, first))
        if timeout <= 0:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._timer_added.wait()

    # -- queries ------------------------------------------------------------------------

    async def get_workflow(self, workflow_id: str) -> WorkflowStatus | None:
        """The workflow with its steps, or None."""
        async with connection(self._c(), "get_workflow") as conn:
            rows = await rows_io.load(conn, self._ns, [workflow_id])
        row = rows.get(workflow_id)
        return None if row is None else row.freeze()

    async def get_workflows(self, workflow_ids: Sequence[str]) -> dict[str, WorkflowStatus]:
        """The workflows that exist among ``workflow_ids``, with their steps, by id: two
        statements per thousand ids."""
        out: dict[str, WorkflowStatus] = {}
        ids = list(dict.fromkeys(workflow_ids))
        async with connection(self._c(), "get_workflows") as conn:
            for i in range(0, len(ids), _ROUND):
                rows = await rows_io.load(conn, self._ns, ids[i : i + _ROUND])
                out.update((w, row.freeze()) for w, row in rows.items())
        return out

    async def count_workflows(self, workflow: str | None = None) -> dict[str, int]:
        """Workflows by status (the status index), on the clients' pool."""
        async with connection(self._c(), "count_workflows") as conn:
            if workflow is None:
                rows = await conn.fetch(COUNT_WORKFLOWS, self._ns)
            else:
                rows = await conn.fetch(COUNT_WORKFLOWS_OF, self._ns, workflow)
        return {r["status"]: r["n"] for r in rows}

    async def list_workflows(self, query: ListQuery) -> WorkflowPage:
        """Newest first by (created_at, workflow_id), filtered, keyset-paged."""
        sql, args = list_workflows_sql(self._ns, query)
        async with connection(self._c(), "list_workflows") as conn:
            found = await conn.fetch(sql, *args)
        rows = [workflow_row(r) for r in found]
        more = len(rows) > query.limit
        rows = rows[: query.limit]
        return WorkflowPage(
            items=[r.freeze(with_steps=False) for r in rows],
            next_cursor=encode_cursor(rows[-1]) if more and rows else None,
        )

    async def take_over_starts(
        self, commands: Sequence[RecordAt], committed: Mapping[TopicPartition, int]
    ) -> list[int]:
        """Earlier starts of each command, counting those never counted (one statement)."""
        async with connection(self._p(), "take_over_starts") as conn:
            return await ops.take_over_starts(conn, self._ns, commands, committed)

    async def count_start(self, command: RecordAt) -> int:
        """One more start of ``command`` (one statement)."""
        async with connection(self._p(), "count_start") as conn:
            return await ops.count_start(conn, self._ns, command)

    async def prune(self, before: datetime, *, limit: int, dry_run: bool = False) -> Pruned:
        """Delete one batch of finished workflows and all of theirs (see the Protocol),
        in one statement and one short transaction (:func:`~hms_bus.store._pg_ops.prune`)."""
        async with connection(self._p(), "prune") as conn:
            return await ops.prune(conn, self._ns, before, limit, dry_run)

    async def schedule_ticks(self) -> dict[str, datetime]:
        """The last tick of each schedule of the namespace."""
        async with connection(self._p(), "schedule_ticks") as conn:
            return await ops.schedule_ticks(conn, self._ns)

    async def save_schedule_ticks(
        self, ticks: Mapping[str, datetime], *, if_absent: bool = False
    ) -> dict[str, datetime]:
        """Keep the later tick per schedule (only new ones with ``if_absent``), in one
        statement that answers what is stored."""
        if not ticks:
            return {}
        async with connection(self._p(), "save_schedule_ticks") as conn:
            return await ops.save_schedule_ticks(conn, self._ns, ticks, if_absent)

    async def save_health(self, report: dict[str, JsonValue]) -> None:
        """Replace the namespace's health report (one row, one statement)."""
        async with connection(self._p(), "save_health") as conn:
            await ops.save_health(conn, self._ns, report)

    async def ping(self) -> None:
        """``SELECT 1`` on the roles' pool, within ``command_timeout`` (at most 5 s)."""
        async with (
            errors("ping"),
            asyncio.timeout(min(5.0, self._command_timeout)),
            connection(self._p(), "ping") as conn,
        ):
            await conn.fetchval("SELECT 1")

    async def load_health(self) -> dict[str, JsonValue] | None:
        """The namespace's last health report, or None."""
        async with connection(self._c(), "load_health") as conn:
            return await ops.load_health(conn, self._ns)

    async def history(self, workflow_id: str) -> list[WorkflowEvent]:
        """The events applied for the workflow, in the order applied."""
        async with connection(self._c(), "history") as conn:
            rows = await conn.fetch(
                HISTORY,
                self._ns,
                workflow_id,
            )
        return [decode_event(r["body"].encode()) for r in rows]
