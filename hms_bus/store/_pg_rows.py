"""What the Postgres store's clients read and register, row by row: workflows with their
steps, and new starts. The statements of :mod:`hms_bus.store._sql` with their arguments
built and their rows decoded; the projector's reads and writes are in
:mod:`hms_bus.store._pg_projection`.

Each function runs on a connection it is given, in whatever transaction the caller
holds; :class:`~hms_bus.store.postgres.PostgresStore` owns the pools, transactions and
errors.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from .._errors import StoreError
from .._projection import WorkflowRow
from . import StartResult
from ._sql import (
    LOAD_STEPS,
    LOAD_WORKFLOWS,
    READ_STARTS,
    REGISTER_STARTS,
    json_text,
    loads_text,
    step_row,
    workflow_row,
)

__all__ = ["Start", "load", "register_starts"]

Start = tuple[str, str, Any, str, datetime]
"""What ``register_start`` was called with: (workflow_id, workflow, payload,
start_event_id, now)."""


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
