"""What only the Postgres store does, on a real server: migrations and schedulers racing
between processes, the database going away or unreachable, a bad schema in the URL,
payloads shaped like SQL injection.

Everything a store must do on every backend is the contract (``tests/contract/store.py``),
run on Postgres by ``tests/contract/test_stores.py``.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from contract.store import timer_claims

import hms_bus
from hms_bus._envelope import utcnow
from hms_bus._errors import StoreError
from hms_bus.store import ClaimState, create_store
from hms_bus.store.postgres import PostgresStore, migrate

pytestmark = pytest.mark.postgres


async def test_two_schedulers_racing_for_1000_timers_fire_each_once(pg_schema: str) -> None:
    async with PostgresStore(pg_schema, namespace="race") as setup:
        results = await setup.claim_transitions(timer_claims(1000))
        assert {r.state for r in results} == {ClaimState.NEW}

    fired: Counter[str] = Counter()

    async def scheduler(name: str) -> None:
        async with PostgresStore(pg_schema, namespace="race", pool_max=2) as store:
            while True:
                timers = await store.claim_due_timers(
                    now=utcnow(), limit=37, lease=60.0, owner=name
                )
                if not timers:
                    return
                fired.update(t.timer_id for t in timers)
                await store.delete_timers([t.timer_id for t in timers])

    await asyncio.gather(scheduler("s1"), scheduler("s2"))
    assert len(fired) == 1000
    assert set(fired.values()) == {1}


async def test_migrations_are_safe_when_processes_start_together(pg_schema: str) -> None:
    stores = [PostgresStore(pg_schema, pool_min=0) for _ in range(6)]
    await asyncio.gather(*(s.__aenter__() for s in stores))
    for s in stores:
        await s.__aexit__(None, None, None)
    url = pg_schema.split("?")[0]
    schema = pg_schema.split("schema=")[1]
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(f'SELECT version, name FROM "{schema}".hms_schema_migrations')
        assert await migrate(conn, schema) == []  # nothing left to apply
    finally:
        await conn.close()
    assert sorted((r["version"], r["name"]) for r in rows) == [
        (1, "0001_initial.sql"),
        (2, "0002_health.sql"),
        (3, "0003_workflow_status_index.sql"),
        (4, "0004_worker_starts.sql"),
        (5, "0005_shapes.sql"),
    ]


NASTY = [
    "'); DROP TABLE hms_workflows; --",
    'Robert"); DELETE FROM hms_steps WHERE ("1"="1',
    "\\x00 is not NUL, \\\\ backslashes \\n",
    "Ünïcödé — ☃ — 你好 — עברית — 𝔘𝔫𝔦",
    "emoji 👩‍👩‍👧‍👦 🇺🇳 🏳️‍🌈",
    "$1 $$ $tag$ %s %(x)s {0}",
]


async def test_payloads_shaped_like_injection_and_unicode_round_trip(pg_schema: str) -> None:
    mgmt = hms_bus.init(
        "odd",
        store=pg_schema,
        namespace="odd",
        monitor={"heartbeat_interval": 0},
        scheduler={"poll_interval": 0.02},
    )
    mgmt.define_workflow("wf", ["echo"])

    @mgmt.on_step("wf.echo")
    async def echo(ctx: hms_bus.StepContext) -> Any:
        return {"back": ctx.payload["texts"], "key": ctx.payload[NASTY[0]]}

    payload = {"texts": NASTY, NASTY[0]: NASTY[3]}
    wid = "id " + NASTY[0] + NASTY[3] + " 🎉"
    async with mgmt:
        final = await mgmt.run("wf", payload, workflow_id=wid, timeout=20)
        history = await mgmt.history(wid)
        page = await mgmt.list(workflow="wf")
    assert final.status == "completed"
    assert final.workflow_id == wid
    assert final.payload == payload
    assert final.result == {"back": NASTY, "key": NASTY[3]}
    # Byte for byte: through the bus, the handler, jsonb and back.
    assert [t.encode() for t in final.result["back"]] == [t.encode() for t in NASTY]
    assert [t.encode() for t in final.payload["texts"]] == [t.encode() for t in NASTY]
    assert history[0].payload == payload
    assert [w.workflow_id for w in page.items] == [wid]


async def test_an_unreachable_database_is_a_retriable_store_error() -> None:
    store = create_store("postgresql://postgres@127.0.0.1:1/test", command_timeout=2)
    with pytest.raises(StoreError) as info:
        await store.__aenter__()
    assert info.value.retriable
    assert "127.0.0.1:1" in str(info.value)


def test_bad_schema_in_the_url_is_a_config_error() -> None:
    with pytest.raises(hms_bus.ConfigError, match="schema"):
        create_store("postgresql://u:secret@h/db?schema=Robert'); DROP")


def _pg_restart() -> None:
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"],
        check=True,
        capture_output=True,
        timeout=120,
    )


@pytest.mark.slow
@pytest.mark.serial  # restarts the one server every other test uses
@pytest.mark.timeout(180)
@pytest.mark.skipif(not Path("/etc/postgresql").is_dir(), reason="no local Postgres cluster")
async def test_postgres_restarted_mid_run_loses_no_status(pg_schema: str) -> None:
    mgmt = hms_bus.init(
        "restart",
        store=pg_schema,
        namespace="restart",
        monitor={"heartbeat_interval": 0},
        scheduler={"poll_interval": 0.05},
    )
    mgmt.define_workflow("wf", ["a", "b", "c"])
    runs: Counter[tuple[str, str]] = Counter()

    for step in ("a", "b", "c"):

        @mgmt.on_step(f"wf.{step}")
        async def handler(ctx: hms_bus.StepContext) -> Any:
            runs[(ctx.workflow_id, ctx.step)] += 1
            await asyncio.sleep(0.3)  # steps are in flight when the database goes
            return ctx.payload

    async with mgmt:
        ids = [f"r{i}-{uuid.uuid4().hex[:6]}" for i in range(60)]
        for wid in ids[:30]:
            await mgmt.start("wf", {"w": wid}, workflow_id=wid)
        await asyncio.sleep(0.3)
        await asyncio.to_thread(_pg_restart)  # roles see the database vanish and return
        for wid in ids[30:]:
            for _ in range(100):  # the client retries its own calls while Postgres starts
                try:
                    await mgmt.start("wf", {"w": wid}, workflow_id=wid)
                    break
                except StoreError as exc:
                    assert exc.retriable
                    await asyncio.sleep(0.2)
        finals = await asyncio.gather(*(mgmt.wait(w, timeout=90) for w in ids))
        steps = {w: [s.step for s in (await mgmt.status(w)).steps] for w in ids}  # type: ignore[union-attr]
    assert [f.status for f in finals] == ["completed"] * 60
    assert all(v == ["a", "b", "c"] for v in steps.values())
    assert {k for k in runs} == {(w, s) for w in ids for s in "abc"}
