"""The coordinator's ledger and the scheduler's timers in Postgres.

:func:`claim_transitions` records each decision once per (workflow, transition), with its
timers, and closes ended workflows, in three statements: lock the workflows; read the
claims' recorded transitions, which workflows are closed and the facts the claims read
(one query); then, after the pure decision (:func:`hms_bus._ledger.plan_claims`, which
the memory store calls too), write the new transitions, their timers, the closed
workflows, the facts and the timers' notification (one statement). :func:`claim_due_timers`
leases due timers with ``FOR UPDATE SKIP LOCKED``, so schedulers racing for them each get
different ones.

Each function runs on a connection it is given, in whatever transaction the caller
holds; :class:`~hms_bus.store.postgres.PostgresStore` owns the pools, transactions and
errors, and wakes this process's scheduler.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import asyncpg
import orjson
from pydantic import JsonValue

from .._ledger import plan_claims, reads_of
from . import ClaimResult, Timer, TransitionClaim
from ._notify import encode_changes
from ._sql import (
    CLAIM_TIMERS,
    DELETE_TIMERS,
    FIRST_TIMER,
    LOCK_LEDGER,
    MARK_PUBLISHED,
    READ_LEDGER,
    WRITE_LEDGER,
    pack,
    unpack,
)

__all__ = [
    "claim_due_timers",
    "claim_transitions",
    "delete_timers",
    "first_timer",
    "mark_published",
]


async def claim_transitions(
    conn: asyncpg.Connection, ns: str, channel: str, claims: Sequence[TransitionClaim]
) -> tuple[list[ClaimResult], bool]:
    """Record each claim once, in order (see module docs): the answers, and whether
    timers were written (Postgres notifies the other processes' schedulers on commit)."""
    wids = sorted({c.workflow_id for c in claims})
    await conn.execute(LOCK_LEDGER, ns, wids)
    published: dict[tuple[str, str], bool] = {}
    messages: dict[tuple[str, str], bytes | None] = {}
    closed: set[str] = set()
    facts: dict[tuple[str, str], JsonValue] = {}
    reads = reads_of(claims)
    for r in await conn.fetch(
        READ_LEDGER,
        ns,
        [c.workflow_id for c in claims],
        [c.transition_id for c in claims],
        wids,
        [w for w, _ in reads],
        [p for _, p in reads],
    ):
        kind = r["kind"]
        if kind == 1:
            closed.add(r["workflow_id"])
        elif kind == 2:
            value = r["messages"]
            facts[(r["workflow_id"], r["transition_id"])] = (
                None if value is None else orjson.loads(value)
            )
        else:
            key = (r["workflow_id"], r["transition_id"])
            published[key] = r["published"]
            messages[key] = r["messages"]
    plan = plan_claims(claims, published, lambda k: unpack(messages[k]), closed, facts)
    if plan.new or plan.closing or plan.reopening:
        timers = plan.timers
        written = list(plan.facts.items())
        await conn.execute(
            WRITE_LEDGER,
            ns,
            [c.workflow_id for c in plan.new],
            [c.transition_id for c in plan.new],
            [pack(c.messages) for c in plan.new],
            [t.timer_id for t in timers],
            [t.workflow_id for t in timers],
            [t.due_at for t in timers],
            [pack([t.message]) for t in timers],
            plan.closing,
            # Schedulers in other processes wake when this commits.
            encode_changes((), timers=True) if timers else [],
            channel,
            [w for (w, _), _ in written],
            [k for (_, k), _ in written],
            [None if v is None else orjson.dumps(v) for _, v in written],
            plan.reopening,
        )
        return plan.results, bool(timers)
    return plan.results, False


async def mark_published(
    conn: asyncpg.Connection, ns: str, keys: Sequence[tuple[str, str]]
) -> None:
    """Mark claims published and drop their recorded messages."""
    await conn.execute(MARK_PUBLISHED, ns, [k[0] for k in keys], [k[1] for k in keys])


async def claim_due_timers(
    conn: asyncpg.Connection, ns: str, now: datetime | None, limit: int, lease: float, owner: str
) -> list[Timer]:
    """Lease due timers until ``now + lease`` (without ``now``, by the server's clock),
    earliest first."""
    rows = await conn.fetch(CLAIM_TIMERS, ns, now, float(lease), owner, limit)
    return [
        Timer(r["timer_id"], r["workflow_id"], r["due_at"], unpack(r["message"])[0])
        for r in sorted(rows, key=lambda r: (r["due_at"], r["timer_id"]))
    ]


async def delete_timers(conn: asyncpg.Connection, ns: str, timer_ids: Sequence[str]) -> None:
    """Forget fired timers."""
    await conn.execute(DELETE_TIMERS, ns, list(timer_ids))


async def first_timer(conn: asyncpg.Connection, ns: str) -> float | None:
    """Seconds until the earliest timer is available (by the server's clock), or None."""
    first = await conn.fetchval(FIRST_TIMER, ns)
    return None if first is None else float(first)
