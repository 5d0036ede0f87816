"""The Postgres store's bookkeeping beside the workflows: the starts of the step commands
a worker took over (crash loops), the schedules' ticks, the monitor's health report, and
retention. One statement each.

Each function runs on a connection it is given; :class:`~hms_bus.store.postgres.PostgresStore`
owns the pools and errors, and which pool each call uses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

import asyncpg
import orjson
from pydantic import JsonValue

from ..transport import TopicPartition
from . import Pruned, RecordAt
from ._sql import (
    COUNT_START,
    LOAD_HEALTH,
    PRUNE,
    PRUNE_COUNT,
    SAVE_HEALTH,
    SAVE_SCHEDULE_TICKS,
    SCHEDULE_TICKS,
    TAKE_OVER_STARTS,
)

__all__ = [
    "count_start",
    "load_health",
    "prune",
    "save_health",
    "save_schedule_ticks",
    "schedule_ticks",
    "take_over_starts",
]


async def take_over_starts(
    conn: asyncpg.Connection,
    ns: str,
    commands: Sequence[RecordAt],
    committed: Mapping[TopicPartition, int],
) -> list[int]:
    """Earlier starts of each command, counting those never counted; what was counted
    below a partition's committed offset is forgotten."""
    rows = await conn.fetch(
        TAKE_OVER_STARTS,
        ns,
        [tp[0] for tp in committed],
        [tp[1] for tp in committed],
        list(committed.values()),
        [at[0] for at in commands],
        [at[1] for at in commands],
        [at[2] for at in commands],
    )
    return [r["starts"] for r in rows]


async def count_start(conn: asyncpg.Connection, ns: str, command: RecordAt) -> int:
    """One more start of ``command``; how many it has had."""
    n: int = await conn.fetchval(COUNT_START, ns, *command)
    return n


async def schedule_ticks(conn: asyncpg.Connection, ns: str) -> dict[str, datetime]:
    """The last tick of each schedule of the namespace."""
    rows = await conn.fetch(SCHEDULE_TICKS, ns)
    return {r["name"]: r["last_tick"] for r in rows}


async def save_schedule_ticks(
    conn: asyncpg.Connection, ns: str, ticks: Mapping[str, datetime], if_absent: bool
) -> dict[str, datetime]:
    """Keep the later tick per schedule (only new ones with ``if_absent``); answer what
    is stored."""
    names = list(ticks)
    rows = await conn.fetch(SAVE_SCHEDULE_TICKS, ns, names, [ticks[n] for n in names], if_absent)
    return {r["name"]: r["last_tick"] for r in rows}


async def save_health(conn: asyncpg.Connection, ns: str, report: dict[str, JsonValue]) -> None:
    """Replace the namespace's health report (one row)."""
    await conn.execute(SAVE_HEALTH, ns, orjson.dumps(report).decode())


async def load_health(conn: asyncpg.Connection, ns: str) -> dict[str, JsonValue] | None:
    """The namespace's last health report, or None."""
    try:
        text = await conn.fetchval(LOAD_HEALTH, ns)
    except asyncpg.UndefinedTableError:  # not migrated: no monitor has written
        return None
    return None if text is None else dict(orjson.loads(text))


async def prune(
    conn: asyncpg.Connection, ns: str, before: datetime, limit: int, dry_run: bool
) -> Pruned:
    """Delete one batch of finished workflows and all of theirs (with ``dry_run``, count
    every match instead), in one statement: the rows it locks are finished workflows,
    which no role writes any more."""
    if dry_run:
        row = await conn.fetchrow(PRUNE_COUNT, ns, before)
    else:
        row = await conn.fetchrow(PRUNE, ns, before, limit)
    assert row is not None
    return Pruned(row["workflows"], row["events"])
