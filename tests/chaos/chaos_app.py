"""The app the chaos suite deploys: every role process imports it (``chaos_app:mgmt``).

``chaos`` has five steps: ``fetch``, ``check`` (its first attempt fails for one
workflow in four, so a retry is always in flight), ``hold`` (sends the workflow on to
``record`` after the durable delay its payload names), ``record`` and ``settle``.

Each successful attempt writes one row to the oracle table ``chaos_effects``, which has
no unique constraint: a step that ran twice leaves two rows, each with the process id
that ran it. The write is retried through Postgres outages under a token of its own, so
a retried write never counts twice; only a handler that ran twice does.

With ``CHAOS_CLOCK_FILE`` set, the process's hms-bus wall clock is the real one plus the
seconds that file holds, re-read every 0.2 s: the clock the suite jumps. (Debian's
libfaketime was tried first: with the monotonic clock left alone, Python's
``time.sleep`` fails under it with EINVAL; faking the monotonic clock as well moves
asyncio's own timers. So the suite injects the clock.)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

import hms_bus

STEPS = ["fetch", "check", "hold", "record", "settle"]

ORACLE = """
CREATE TABLE IF NOT EXISTS chaos_effects (
    workflow_id text NOT NULL,
    step text NOT NULL,
    attempt int NOT NULL,
    pid int NOT NULL,
    token uuid NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
)
"""

_INSERT = """
INSERT INTO chaos_effects (workflow_id, step, attempt, pid, token)
SELECT $1, $2, $3, $4, $5
WHERE NOT EXISTS (SELECT 1 FROM chaos_effects WHERE token = $5)
"""

_conn: asyncpg.Connection | None = None
_lock: asyncio.Lock | None = None


async def _effect(ctx: hms_bus.StepContext) -> None:
    """Write this attempt's row, retrying through outages (never twice: the token)."""
    global _conn, _lock
    _lock = _lock or asyncio.Lock()
    token = uuid.uuid4()
    for _ in range(600):
        try:
            async with _lock:
                if _conn is None or _conn.is_closed():
                    _conn = await asyncpg.connect(os.environ["CHAOS_ORACLE_URL"], timeout=2)
                await _conn.execute(
                    _INSERT, ctx.workflow_id, ctx.step, ctx.attempt, os.getpid(), token, timeout=5
                )
            return
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            if _conn is not None:
                _conn.terminate()
                _conn = None
            await asyncio.sleep(0.2)
    raise RuntimeError("the oracle stayed unreachable for two minutes")


def _inject_clock(path: Path) -> None:
    """Make hms-bus read the wall clock through ``path``'s offset (see module docs)."""
    import hms_bus._client
    import hms_bus._envelope
    import hms_bus._launch
    import hms_bus.roles._claims
    import hms_bus.roles.scheduler
    import hms_bus.roles.worker

    real = hms_bus._envelope.utcnow
    read_at, offset = -1.0, 0.0

    def utcnow() -> datetime:
        nonlocal read_at, offset
        if time.monotonic() - read_at > 0.2:
            read_at = time.monotonic()
            with contextlib.suppress(OSError, ValueError):
                offset = float(path.read_text() or 0)
        return real() + timedelta(seconds=offset)

    for module in (
        hms_bus._envelope,
        hms_bus._client,
        hms_bus._launch,
        hms_bus.roles._claims,
        hms_bus.roles.scheduler,
        hms_bus.roles.worker,
    ):
        if getattr(module, "utcnow", None) is real:
            module.utcnow = utcnow  # type: ignore[attr-defined]


def make() -> hms_bus.Management:
    mgmt = hms_bus.init("chaos")
    mgmt.define_workflow("chaos", STEPS)
    steady = {"timeout": 300.0}

    @mgmt.on_step("chaos.fetch", **steady)
    async def fetch(ctx: hms_bus.StepContext) -> Any:
        await _effect(ctx)
        return ctx.payload

    @mgmt.on_step(
        "chaos.check",
        retry=hms_bus.RetryPolicy(max_attempts=5, initial_delay=0.2, jitter=0),
        **steady,
    )
    async def check(ctx: hms_bus.StepContext) -> Any:
        if ctx.payload["n"] % 4 == 0 and ctx.attempt == 1:
            raise RuntimeError("first attempts of every fourth workflow fail")
        await _effect(ctx)
        return ctx.payload

    @mgmt.on_step("chaos.hold", **steady)
    async def hold(ctx: hms_bus.StepContext) -> Any:
        await _effect(ctx)
        return hms_bus.Next("record", ctx.payload, delay=ctx.payload["delay"])

    @mgmt.on_step("chaos.record", **steady)
    async def record(ctx: hms_bus.StepContext) -> Any:
        await _effect(ctx)
        return ctx.payload

    @mgmt.on_step("chaos.settle", **steady)
    async def settle(ctx: hms_bus.StepContext) -> Any:
        await _effect(ctx)
        return {"n": ctx.payload["n"], "settled": True}

    return mgmt


if os.environ.get("CHAOS_CLOCK_FILE"):
    _inject_clock(Path(os.environ["CHAOS_CLOCK_FILE"]))
mgmt = make()
