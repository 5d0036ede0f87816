"""The Postgres store under faults: every error a caller sees is typed, and a start that
failed part-way is safe to repeat.

Connections are terminated from the server side (``pg_terminate_backend``) while
workflows start and run, in a database of this module's own (``hms_faults``), so that no
other test's connections are touched. The errors that reach the caller must be
:class:`~hms_bus.HmsBusError` with ``retriable`` set and the driver's error as
``__cause__``; a broken connection must never be handed to the next caller; and every
workflow, started again after a failed ``start``, runs exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from conftest import FAST

import hms_bus
from hms_bus.transport import Outgoing

pytestmark = pytest.mark.postgres

DATABASE = "hms_faults"


@pytest.fixture
async def faults_url(postgres_url: str) -> AsyncIterator[str]:
    """A store URL on a fresh schema of the ``hms_faults`` database (created if needed)."""
    admin = await asyncpg.connect(postgres_url, timeout=10)
    try:
        with contextlib.suppress(asyncpg.DuplicateDatabaseError):
            await admin.execute(f'CREATE DATABASE "{DATABASE}"')
    finally:
        await admin.close()
    parts = urlsplit(postgres_url)
    base = urlunsplit(parts._replace(path=f"/{DATABASE}", query=""))
    schema = f"f_{uuid.uuid4().hex[:12]}"
    yield f"{base}?schema={schema}"
    conn = await asyncpg.connect(base, timeout=10)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def app(store: str) -> hms_bus.Management:
    mgmt = hms_bus.init(
        "faults",
        bus="memory://",
        store=store,
        namespace=f"f{uuid.uuid4().hex[:8]}",
        **FAST,
    )
    mgmt.define_workflow("wf", ["a", "b"])

    @mgmt.on_step("wf.a")
    async def a(ctx: hms_bus.StepContext) -> Any:
        return {"n": ctx.payload["n"] + 1}

    @mgmt.on_step("wf.b")
    async def b(ctx: hms_bus.StepContext) -> Any:
        return {"n": ctx.payload["n"] * 2}

    return mgmt


async def terminate_all(admin: asyncpg.Connection) -> int:
    """Terminate every hms-bus connection to the faults database; how many there were."""
    killed: int = await admin.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE datname = $1 AND application_name LIKE 'hms-bus%' AND pid <> pg_backend_pid()",
        DATABASE,
    )
    return killed


def check_typed(exc: BaseException, workflow_id: str | None = None) -> hms_bus.HmsBusError:
    """What a caller may see: a retriable HmsBusError caused by the original error."""
    assert isinstance(exc, hms_bus.HmsBusError), f"untyped {type(exc).__name__}: {exc}"
    assert exc.retriable, f"not retriable: {exc}"
    assert exc.__cause__ is not None, f"no cause: {exc}"
    assert not isinstance(exc.__cause__, hms_bus.HmsBusError), "the cause is the original error"
    if workflow_id is not None:
        assert exc.workflow_id == workflow_id
        assert "is safe" in str(exc) and workflow_id in str(exc)
    return exc


async def test_terminated_connections_give_typed_errors_and_repeated_starts_run_once(
    faults_url: str,
) -> None:
    mgmt = app(faults_url)
    ids = [f"w{i:03d}" for i in range(120)]
    errors: Counter[str] = Counter()
    killed = 0
    async with mgmt:
        admin = await asyncpg.connect(faults_url.split("?")[0], timeout=10)
        stop = asyncio.Event()

        async def killer() -> None:
            nonlocal killed
            while not stop.is_set():
                killed += await terminate_all(admin)
                await asyncio.sleep(0.03)

        async def start(i: int, wid: str) -> None:
            while True:
                try:
                    await mgmt.start("wf", {"n": i}, workflow_id=wid)
                    return
                except Exception as exc:  # every failure is checked, not only typed ones
                    errors[type(check_typed(exc, wid)).__name__] += 1
                    await asyncio.sleep(0.01)

        async def read(wid: str) -> None:
            for _ in range(20):
                try:
                    await mgmt.status(wid)
                except Exception as exc:  # every failure is checked, not only typed ones
                    errors["status: " + type(check_typed(exc)).__name__] += 1
                await asyncio.sleep(0.005)

        task = asyncio.create_task(killer())
        try:
            for chunk in range(0, len(ids), 20):
                part = ids[chunk : chunk + 20]
                await asyncio.gather(
                    *(start(chunk + k, wid) for k, wid in enumerate(part)),
                    *(read(wid) for wid in part),
                )
        finally:
            stop.set()
            await task
            await admin.close()

        # The faults reached the callers (else this test could not fail), every call
        # that failed was typed, and after them the store works on fresh connections.
        assert killed > 0 and sum(errors.values()) > 0, (killed, errors)
        done = await asyncio.gather(*(mgmt.wait(w, timeout=60) for w in ids))
        assert [s.status for s in done] == [hms_bus.WorkflowState.COMPLETED] * len(ids)
        assert [s.result for s in done] == [{"n": (i + 1) * 2} for i in range(len(ids))]
        for wid in ids:
            history = await mgmt.history(wid)
            starts = [e for e in history if e.type == "workflowStarted"]
            assert len(starts) == 1, (wid, [e.type for e in history])


async def test_a_start_that_failed_after_registering_is_repeated_with_its_id(
    faults_url: str,
) -> None:
    mgmt = app(faults_url)
    async with mgmt:
        bus = mgmt._transport
        assert bus is not None
        real = bus.publish
        failures = 0

        async def refuse_once(records: list[Outgoing]) -> None:
            nonlocal failures
            if failures == 0 and records and records[0].topic.endswith("hms.coordinator"):
                failures += 1
                raise hms_bus.TransportError("the bus went away", retriable=True) from OSError(
                    "connection reset"
                )
            await real(records)

        bus.publish = refuse_once  # type: ignore[method-assign]
        # No id given: the error carries the one the start made up.
        with pytest.raises(hms_bus.TransportError) as caught:
            await mgmt.start("wf", {"n": 1})
        exc = check_typed(caught.value)
        wid = exc.workflow_id
        assert wid is not None and f"workflow_id={wid!r}" in str(exc)
        # Registered, never published: it is running in the store and goes nowhere yet.
        status = await mgmt.status(wid)
        assert status is not None and status.status is hms_bus.WorkflowState.RUNNING

        again = await mgmt.start("wf", {"n": 1}, workflow_id=wid)
        assert again.workflow_id == wid and not again.created
        done = await mgmt.wait(wid, timeout=30)
        assert done.status is hms_bus.WorkflowState.COMPLETED and done.result == {"n": 4}
        # A third start of the same id, now confirmed, publishes nothing more.
        third = await mgmt.start("wf", {"n": 1}, workflow_id=wid)
        assert not third.created
        history = await mgmt.history(wid)
        assert [e.type for e in history].count("workflowStarted") == 1
        assert [e.type for e in history].count("workflowCompleted") == 1
