"""Starting workflows: a caller-chosen id starts once (also when starts race); an id taken
by another workflow, an unknown workflow or a malformed id is a ConfigError."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from conftest import MakeMgmt

import hms_bus


async def test_start_with_the_same_id_is_idempotent(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["a", "b"])
    calls: Counter[str] = Counter()

    @mgmt.on_step("wf.a")
    async def a(ctx: hms_bus.StepContext) -> Any:
        calls["a"] += 1

    @mgmt.on_step("wf.b")
    async def b(ctx: hms_bus.StepContext) -> Any:
        calls["b"] += 1

    async with mgmt:
        first = await mgmt.start("wf", {"v": 1}, workflow_id="GR-2023-55")
        second = await mgmt.start("wf", {"v": 2}, workflow_id="GR-2023-55")
        final = await first.wait(timeout=5)
        third = await mgmt.start("wf", {"v": 3}, workflow_id="GR-2023-55")
        await asyncio.sleep(0.2)
        page = await mgmt.list()
        again = await mgmt.status("GR-2023-55")

    assert (first.created, second.created, third.created) == (True, False, False)
    assert first.workflow_id == second.workflow_id == third.workflow_id == "GR-2023-55"
    assert final.status == "completed"
    assert final.payload == {"v": 1}
    assert calls == {"a": 1, "b": 1}
    assert [w.workflow_id for w in page.items] == ["GR-2023-55"]
    assert again is not None
    assert [s.step for s in again.steps] == ["a", "b"]


async def test_concurrent_starts_of_one_id_start_it_once(make_mgmt: MakeMgmt) -> None:
    """Starts made at the same instant share one statement on Postgres; the same id
    among them still registers once, and every caller learns which call did."""
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["a"])
    calls: Counter[str] = Counter()

    @mgmt.on_step("wf.a")
    async def a(ctx: hms_bus.StepContext) -> Any:
        calls[ctx.workflow_id] += 1
        return ctx.payload

    async with mgmt:
        starts = await asyncio.gather(
            *(mgmt.start("wf", {"v": i}, workflow_id="SAME") for i in range(5)),
            *(mgmt.start("wf", {"v": i}, workflow_id=f"other-{i}") for i in range(20)),
        )
        finals = await asyncio.gather(*(mgmt.wait(s.workflow_id, 10) for s in starts))

    same = starts[:5]
    assert sum(s.created for s in same) == 1
    assert all(s.created for s in starts[5:])
    winner = next(i for i, s in enumerate(same) if s.created)
    assert finals[0].payload == {"v": winner}
    assert calls["SAME"] == 1
    assert all(calls[f"other-{i}"] == 1 for i in range(20))


async def test_an_id_used_by_another_workflow_is_a_config_error(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("one", ["a"])
    mgmt.define_workflow("two", ["a"])

    @mgmt.on_step("one.a")
    async def one_a(ctx: hms_bus.StepContext) -> Any:
        return None

    @mgmt.on_step("two.a")
    async def two_a(ctx: hms_bus.StepContext) -> Any:
        return None

    async with mgmt:
        await mgmt.start("one", {}, workflow_id="shared-id")
        with pytest.raises(hms_bus.ConfigError, match="'one'"):
            await mgmt.start("two", {}, workflow_id="shared-id")
        final = await mgmt.wait("shared-id", timeout=5)
    assert final.workflow == "one"


async def test_unknown_workflow_at_start_is_a_config_error(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("known", ["a"])

    @mgmt.on_step("known.a")
    async def a(ctx: hms_bus.StepContext) -> Any:
        return None

    async with mgmt:
        with pytest.raises(hms_bus.ConfigError, match=r"'nope'.*known"):
            await mgmt.start("nope", {})
        assert (await mgmt.list()).items == []


@pytest.mark.parametrize("bad_id", ["", "x" * 201, "tab\there"])
async def test_bad_workflow_id_is_a_config_error(make_mgmt: MakeMgmt, bad_id: str) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["a"])

    @mgmt.on_step("wf.a")
    async def a(ctx: hms_bus.StepContext) -> Any:
        return None

    async with mgmt:
        with pytest.raises(hms_bus.ConfigError, match="workflow_id"):
            await mgmt.start("wf", {}, workflow_id=bad_id)
