"""The collector's first threshold while a process runs roles (``gc_threshold``).

The thresholds are process-wide, so every test compares with what it found, not with
the interpreter's default.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest

import hms_bus


@pytest.fixture(autouse=True)
def default_thresholds() -> Iterator[tuple[int, int, int]]:
    """The interpreter's thresholds around each test, put back whatever it did."""
    found = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    yield gc.get_threshold()
    gc.set_threshold(*found)


def node(**settings: Any) -> hms_bus.Management:
    mgmt = hms_bus.init("gc", namespace="gc", monitor={"heartbeat_interval": 0}, **settings)
    mgmt.define_workflow("wf", ["a"])

    @mgmt.on_step("wf.a")
    async def a(ctx: hms_bus.StepContext) -> Any:
        return ctx.payload

    return mgmt


async def test_a_node_with_roles_raises_the_threshold_while_it_runs() -> None:
    mgmt = node()
    async with mgmt:
        assert gc.get_threshold() == (10_000, 10, 10)
        assert (await mgmt.run("wf", {"n": 1}, timeout=5)).status == "completed"
    assert gc.get_threshold() == (700, 10, 10)


async def test_zero_a_pure_client_or_a_higher_threshold_is_left_alone() -> None:
    async with node(gc_threshold=0):
        assert gc.get_threshold() == (700, 10, 10)
    async with node(roles=()):
        assert gc.get_threshold() == (700, 10, 10)
    gc.set_threshold(50_000, 20, 20)
    async with node():
        assert gc.get_threshold() == (50_000, 20, 20)
    assert gc.get_threshold() == (50_000, 20, 20)


async def test_the_last_node_to_close_restores_it_unless_someone_else_changed_it() -> None:
    first, second = node(), node(bus="memory://other", store="memory://other")
    await first.connect()
    await second.connect()
    await first.close()
    assert gc.get_threshold() == (10_000, 10, 10)  # the second still runs
    await second.close()
    assert gc.get_threshold() == (700, 10, 10)

    async with node():
        gc.set_threshold(2_000, 10, 10)  # the application's own choice
    assert gc.get_threshold() == (2_000, 10, 10)


def test_the_environment_sets_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HMS_GC_THRESHOLD", "25000")
    assert node().settings.gc_threshold == 25_000
    with pytest.raises(hms_bus.ConfigError, match="gc_threshold"):
        hms_bus.init("gc", gc_threshold=-1)
