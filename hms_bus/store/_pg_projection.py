"""The projector's write path in Postgres: a batch of events into the history and folded
into the workflows' rows, in one transaction of four statements whatever its size.

:func:`apply_events` inserts the events (skipping event ids already there) and, in the
same statement, takes a transaction-scoped advisory lock per affected workflow; it reads
what the fold needs (:func:`load_fold`), folds the new events in with the rules every
store shares (:func:`hms_bus._projection.fold`), and writes the changed rows with the
notification of what changed (:func:`write_fold`).

Each function runs on a connection it is given, in the transaction the caller holds;
:class:`~hms_bus.store.postgres.PostgresStore` owns the pools, transactions and errors,
and tells this process's watchers once the transaction commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from .._codec import encode
from .._events import WorkflowEvent
from .._projection import StepRow, WorkflowRow, fold, seq_of
from . import Change
from ._notify import encode_changes
from ._sql import (
    INSERT_EVENTS,
    SELECT_FOLD_STEPS,
    SELECT_FOLD_WORKFLOWS,
    WRITE_FOLD,
    json_text,
    step_row,
    workflow_row,
)

__all__ = ["apply_events", "load_fold", "texts_of", "write_fold"]


def texts_of(events: Sequence[WorkflowEvent], bodies: Sequence[bytes] | None) -> list[str]:
    """The events' JSON documents as text: the bodies as received, else encoded."""
    return (
        [b.decode() for b in bodies] if bodies is not None else [encode(e).decode() for e in events]
    )


async def apply_events(
    conn: asyncpg.Connection,
    ns: str,
    channel: str,
    events: Sequence[WorkflowEvent],
    texts: list[str],
) -> tuple[int, list[Change]]:
    """Insert ``events`` (their documents ``texts``), fold the new ones into their rows
    and write the rows back; return how many were new and what changed."""
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
        return 0, []
    fresh = None if got["ids"] is None else set(got["ids"])
    todo: dict[str, Any] = {}
    for e in events:  # a duplicate within the batch: the first one counts
        if fresh is None or e.event_id in fresh:
            todo.setdefault(e.event_id, e)
    rows = await load_fold(conn, ns, list(todo.values()))
    done = fold(rows, todo.values())
    changes = done.changes
    await write_fold(
        conn, ns, channel, [rows[w] for w in sorted(done.changed)], done.steps, changes
    )
    return len(todo), changes


async def load_fold(conn: asyncpg.Connection, ns: str, events: list[Any]) -> dict[str, WorkflowRow]:
    """What the fold of ``events`` reads: their workflows (without payload and
    result) and the step executions they name."""
    wids = sorted({e.workflow_id for e in events})
    rows = {
        r["workflow_id"]: workflow_row(r) for r in await conn.fetch(SELECT_FOLD_WORKFLOWS, ns, wids)
    }
    keys = sorted({(e.workflow_id, e.seq) for e in events if seq_of(e) is not None})
    if keys:
        for r in await conn.fetch(
            SELECT_FOLD_STEPS, ns, [k[0] for k in keys], [k[1] for k in keys]
        ):
            row = rows.get(r["workflow_id"])
            if row is not None:
                row.steps[r["seq"]] = step_row(r)
    return rows


async def write_fold(
    conn: asyncpg.Connection,
    ns: str,
    channel: str,
    rows: list[WorkflowRow],
    steps: dict[tuple[str, int], StepRow],
    changes: list[Change],
) -> None:
    """The changed rows, and the notification of what changed, in one statement."""
    keys = sorted(steps)
    ss = [steps[k] for k in keys]
    await conn.execute(
        WRITE_FOLD,
        ns,
        [r.workflow_id for r in rows],
        [r.workflow for r in rows],
        [r.status.value for r in rows],
        [json_text(r.payload) for r in rows],
        [json_text(r.result) for r in rows],
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
        channel,
        encode_changes(changes),
        [r.version for r in rows],
        [r.parent_id for r in rows],
        [s.group for s in ss],
        [s.waiting_for for s in ss],
        [s.child_id for s in ss],
    )
