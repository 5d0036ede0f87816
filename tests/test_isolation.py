"""Isolation: private Managements, and namespaces sharing one bus or one store, never see
each other's workflows."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from conftest import Backend, MakeMgmt, read_topic

import hms_bus


async def test_two_private_managements_do_not_see_each_other(
    make_mgmt: MakeMgmt, backend: Backend
) -> None:
    if not backend.memory:
        pytest.skip("private brokers exist only on memory://")
    apps = []
    for label in ("first", "second"):
        mgmt = make_mgmt(label, bus="memory://", store="memory://")
        mgmt.define_workflow("wf", ["a"])

        @mgmt.on_step("wf.a")
        async def a(ctx: hms_bus.StepContext, label: str = label) -> Any:
            return {"by": label}

        apps.append(mgmt)
    first, second = apps
    async with first, second:
        r1 = await first.run("wf", {}, timeout=5)
        r2 = await second.run("wf", {}, timeout=5)
        assert await second.status(r1.workflow_id) is None
        assert await first.status(r2.workflow_id) is None
        assert [w.workflow_id for w in (await first.list()).items] == [r1.workflow_id]
    assert r1.result == {"by": "first"}
    assert r2.result == {"by": "second"}


async def test_namespaces_share_a_bus_unseen(make_mgmt: MakeMgmt, backend: Backend) -> None:
    apps: dict[str, hms_bus.Management] = {}
    calls: list[tuple[str, str]] = []
    for label in ("blue", "green"):
        # Same bus, own namespace; private stores, so only the bus could leak.
        mgmt = make_mgmt(label, namespace=f"{backend.namespace}-{label}", bus=backend.shared_bus)
        mgmt.define_workflow("wf", ["a"])

        @mgmt.on_step("wf.a")
        async def a(ctx: hms_bus.StepContext, label: str = label) -> Any:
            calls.append((label, ctx.workflow_id))
            return {"by": label}

        apps[label] = mgmt
    blue, green = apps["blue"], apps["green"]
    async with blue, green:
        assert blue.topics.events != green.topics.events
        assert blue.topics.events.startswith(f"{backend.namespace}-blue.")
        results = await asyncio.gather(
            *[blue.run("wf", {}, timeout=5) for _ in range(5)],
            *[green.run("wf", {}, timeout=5) for _ in range(5)],
        )
        blue_events = await read_topic(blue, blue.topics.events)

    by_label = {"blue": results[:5], "green": results[5:]}
    for label, finals in by_label.items():
        assert all(f.status == "completed" and f.result == {"by": label} for f in finals)
        assert sorted(w for lab, w in calls if lab == label) == sorted(
            f.workflow_id for f in finals
        )
    green_ids = {f.workflow_id.encode() for f in by_label["green"]}
    assert blue_events
    assert not {r.key for r in blue_events} & green_ids


async def test_namespaces_share_a_store_unseen(make_mgmt: MakeMgmt, backend: Backend) -> None:
    apps: dict[str, hms_bus.Management] = {}
    for label in ("blue", "green"):
        # Same bus and same store: the namespace alone keeps them apart.
        mgmt = make_mgmt(label, shared=True, namespace=f"{backend.namespace}-{label}")
        mgmt.define_workflow("wf", ["a"])

        @mgmt.on_step("wf.a")
        async def a(ctx: hms_bus.StepContext, label: str = label) -> Any:
            return {"by": label}

        apps[label] = mgmt
    blue, green = apps["blue"], apps["green"]
    async with blue, green:
        # One caller-chosen id in both namespaces: two workflows, each started anew.
        b = await blue.start("wf", {}, workflow_id="GR-SAME")
        g = await green.start("wf", {}, workflow_id="GR-SAME")
        assert (b.created, g.created) == (True, True)
        assert (await blue.wait("GR-SAME", 5)).result == {"by": "blue"}
        assert (await green.wait("GR-SAME", 5)).result == {"by": "green"}
        await blue.run("wf", {}, workflow_id="BLUE-ONLY", timeout=5)
        assert await green.status("BLUE-ONLY") is None
        assert {w.workflow_id for w in (await green.list()).items} == {"GR-SAME"}
        assert {w.workflow_id for w in (await blue.list()).items} == {"GR-SAME", "BLUE-ONLY"}
