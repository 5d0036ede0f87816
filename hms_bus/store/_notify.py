"""Change notifications of the Postgres store: LISTEN/NOTIFY on a channel per namespace.

The projector's transaction notifies what it changed (a workflow's status, a step that
succeeded) and the coordinator's transaction notifies new timers; Postgres delivers
the notifications when the transaction commits, to every connection listening on the
channel, in every process. Each store holds one listening connection (opened on first
use), so a ``wait()`` or a scheduler in any process wakes as soon as the change is
durable, and nobody polls.

A notification that a listener could not receive is lost: after its connection is
lost the listener reconnects (backing off, capped) and then reports "anything may have
changed", so every pending waiter is read again in one query. Every ``recheck``
seconds it asks the connection for ``SELECT 1``: a connection that answers has been
sent every notification, and one that does not (silently dead, say behind a
half-open TCP connection) is replaced, followed by the same re-read.

The payload is text, lines of tab-separated fields, cut into notifications under the
server's 8000-byte limit:

- ``c<TAB>workflow_id``: the workflow's status changed;
- ``s<TAB>workflow_id<TAB>step``: a step execution of that name succeeded;
- ``t``: timers were added.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg

from .._errors import StoreError
from .._outage import OUTAGE, Outage
from . import Change
from ._pg_conn import TRANSIENT

__all__ = ["Listener", "channel_name", "decode_payload", "encode_changes"]

log = logging.getLogger("hms_bus.store.notify")

# What makes the listening connection one to replace: an outage, a broken connection
# (asyncpg's own state included), or the server refusing it.
_FAILED: tuple[type[BaseException], ...] = (*TRANSIENT, asyncpg.PostgresError)

_MAX_PAYLOAD = 7900  # bytes; the server refuses a payload of 8000 or more
_MAX_CHANNEL = 63  # an identifier's length (NAMEDATALEN - 1)
TIMERS = "t"


def channel_name(schema: str, namespace: str) -> str:
    """The channel of one namespace in one schema (hashed if it would be too long)."""
    name = f"hms:{schema}:{namespace}"
    if len(name.encode()) <= _MAX_CHANNEL:
        return name
    return "hms:" + hashlib.sha256(name.encode()).hexdigest()[:40]


def encode_changes(changes: Sequence[Change], *, timers: bool = False) -> list[str]:
    """The payloads (each under the limit) that tell ``changes``."""
    lines = [f"c\t{w}" if step is None else f"s\t{w}\t{step}" for w, step in changes]
    if timers:
        lines.append(TIMERS)
    out: list[str] = []
    chunk: list[str] = []
    size = 0
    for line in lines:
        n = len(line.encode()) + 1
        if chunk and size + n > _MAX_PAYLOAD:
            out.append("\n".join(chunk))
            chunk, size = [], 0
        chunk.append(line)
        size += n
    if chunk:
        out.append("\n".join(chunk))
    return out


def decode_payload(payload: str) -> tuple[list[Change], bool]:
    """(changes, whether timers were added) of one notification."""
    changes: list[Change] = []
    timers = False
    for line in payload.split("\n"):
        kind, _, rest = line.partition("\t")
        if kind == "c":
            changes.append((rest, None))
        elif kind == "s":
            wid, _, step = rest.partition("\t")
            changes.append((wid, step))
        elif kind == TIMERS:
            timers = True
    return changes, timers


class Listener:
    """One LISTEN connection that reconnects by itself (see module docs).

    Args:
        dsn: where to connect.
        channel: the channel to listen on.
        on_change: called with the changes of each notification, or None after a
            reconnection.
        on_timers: called when timers were added, and after a reconnection.
        recheck: seconds between checks that the connection still answers.
        connect_timeout: seconds one connection attempt may take.
    """

    def __init__(
        self,
        dsn: str,
        channel: str,
        *,
        on_change: Callable[[Sequence[Change] | None], None],
        on_timers: Callable[[], None],
        recheck: float,
        connect_timeout: float,
    ) -> None:
        self._dsn = dsn
        self._channel = channel
        self._on_change = on_change
        self._on_timers = on_timers
        self._recheck = recheck
        self._timeout = connect_timeout
        self._conn: asyncpg.Connection | None = None
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def connected(self) -> bool:
        """True while the listening connection is up."""
        return self._conn is not None and not self._conn.is_closed()

    async def start(self) -> None:
        """Connect and LISTEN; return once listening.

        Raises:
            StoreError: (retriable) the database cannot be reached now.
        """
        await self._connect()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="hms-listen")

    async def close(self, within: float = 5.0) -> None:
        """Stop listening and close the connection (within ``within`` seconds, else it
        is terminated)."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                await asyncio.wait_for(conn.close(), within)
            except _FAILED:
                conn.terminate()

    async def _connect(self) -> None:
        try:
            conn = await asyncpg.connect(
                self._dsn,
                timeout=self._timeout,
                # Named for its process, so an operator (or a test) can tell whose it is.
                server_settings={"application_name": f"hms-bus-listen {os.getpid()}"},
            )
        except _FAILED as exc:
            raise StoreError(
                f"cannot listen for changes: {type(exc).__name__}: {exc}", retriable=True
            ) from exc
        try:
            await conn.add_listener(self._channel, self._notified)
        except BaseException as exc:
            # Failed, or cancelled (the store is closing): this connection is nobody's.
            conn.terminate()
            if isinstance(exc, _FAILED):
                raise StoreError(
                    f"cannot listen for changes: {type(exc).__name__}: {exc}", retriable=True
                ) from exc
            raise
        conn.add_termination_listener(self._terminated)
        self._lost.clear()
        self._conn = conn

    def _notified(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        changes, timers = decode_payload(payload)
        if changes:
            self._on_change(changes)
        if timers:
            self._on_timers()

    def _terminated(self, conn: Any) -> None:
        if conn is self._conn:
            self._lost.set()

    async def _run(self) -> None:
        while not self._closed:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._recheck):
                    await self._lost.wait()
            if not self._lost.is_set() and await self._alive():
                continue
            await self._reconnect()

    async def _alive(self) -> bool:
        """Whether the listening connection still answers: while it does, the server
        delivers every notification to it, so nothing needs reading again."""
        conn = self._conn
        if conn is None or conn.is_closed():
            return False
        try:
            await asyncio.wait_for(conn.fetchval("SELECT 1"), self._timeout)
        except _FAILED:
            return False
        return True

    async def _reconnect(self) -> None:
        old, self._conn = self._conn, None
        if old is not None:
            old.terminate()
        outage = Outage("listening for changes", log)
        while not self._closed:
            if outage.attempts:
                await asyncio.sleep(OUTAGE.delay(outage.attempts))
            try:
                await self._connect()
            except StoreError as exc:
                outage.failed(exc)
                continue
            outage.ok()
            # Whatever was notified while the connection was down is lost: look again.
            self._on_change(None)
            self._on_timers()
            return
