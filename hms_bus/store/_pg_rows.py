"""What the Postgres store reads and writes, row by row: the statements of
:mod:`hms_bus.store._sql` with their arguments built and their rows decoded.

Each function runs on a connection it is given, in whatever transaction the caller
holds; :class:`~hms_bus.store.postgres.PostgresStore` owns the pools, transactions and
errors.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from .._errors import StoreError
from .._projection import StepRow, WorkflowRow
from .._status import WorkflowState
from . import Change, StartResult
from ._notify import encode_changes
from ._sql import (
    LOAD_STEPS,
    LOAD_WORKFLOWS,
    READ_STARTS,
    REGISTER_STARTS,
    SELECT_FOLD_STEPS,
    SELECT_FOLD_WORKFLOWS,
    WRITE_FOLD,
    json_text,
    loads_text,
    step_row,
    workflow_row,
)

__all__ = ["Start", "load", "load_fold", "register_starts", "write_fold"]

Start = tuple[str, str, Any, str, datetime]
"""What ``register_start`` was called with: (workflow_id, workflow, payload,
start_event_id, now)."""


async def load_fold(conn: asyncpg.Connection, ns: str, events: list[Any]) -> dict[str, WorkflowRow]:
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
            version=r["version"],
            parent_id=r["parent_id"],
        )
        for r in await conn.fetch(SELECT_FOLD_WORKFLOWS, ns, wids)
    }
    keys = sorted({(e.workflow_id, e.seq) for e in events if getattr(e, "seq", None) is not None})
    if keys:
        for r in await conn.fetch(
            SELECT_FOLD_STEPS, ns, [k[0] for k in keys], [k[1] for k in keys]
        ):
            row = rows.get(r["workflow_id"])
            if row is not None:
                row.steps[r["seq"]] = step_row(r)
    return rows


async def load(conn: asyncpg.Connection, ns: str, wids: list[str]) -> dict[str, WorkflowRow]:
    """Workflows with payload, result and every step, for the client's reads."""
    found = await conn.fetch(LOAD_WORKFLOWS, ns, wids)
    rows = {r["workflow_id"]: workflow_row(r) for r in found}
    if not rows:
        return rows
    for r in await conn.fetch(LOAD_STEPS, ns, list(rows)):
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


async def register_starts(
    conn: asyncpg.Connection, ns: str, starts: list[Start]
) -> list[StartResult]:
    """Register many starts in one statement: each as ``running`` unless its id exists;
    answer each with whether it was this call that registered it, or what is on record."""
    first: dict[str, Start] = {}
    for start in starts:  # the same id twice in a batch: the first one registers it
        first.setdefault(start[0], start)
    rows = list(first.values())
    found = await conn.fetch(
        REGISTER_STARTS,
        ns,
        [r[0] for r in rows],
        [r[1] for r in rows],
        [json_text(r[2]) for r in rows],
        [r[3] for r in rows],
        [r[4] for r in rows],
    )
    known = {r["workflow_id"]: r for r in found}
    missing = [r[0] for r in rows if r[0] not in known]
    if missing:  # registered by a transaction that committed after ours began
        for r in await conn.fetch(READ_STARTS, ns, missing):
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
                    loads_text(r["payload"]),
                )
            )
    return out
