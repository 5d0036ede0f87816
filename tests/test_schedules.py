"""Schedules: one workflow per tick, once per tick however many schedulers run.

The tick arithmetic (cron in a time zone, intervals, catch-up) is pure and tested on its
own; the rest runs on every backend, with several scheduler Managements at once.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from conftest import MakeMgmt, eventually

import hms_bus
from hms_bus._schedules import make_schedule


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_cron_ticks_are_read_in_the_schedule_time_zone_across_dst() -> None:
    s = make_schedule(
        "nightly", "wf", cron="0 2 * * *", every=None, payload=None,
        timezone="Europe/Paris", catchup="latest",
    )  # fmt: skip
    # 02:00 in Paris is 01:00 UTC in winter and 00:00 UTC in summer.
    assert s.next_after(at("2026-12-07T12:00:00")) == at("2026-12-08T01:00:00")
    assert s.next_after(at("2026-07-07T12:00:00")) == at("2026-07-08T00:00:00")
    assert s.workflow_id(at("2026-12-08T01:00:00")) == "nightly@2026-12-08T01:00:00Z"


def test_interval_ticks_fall_on_multiples_since_the_epoch() -> None:
    s = make_schedule(
        "sweep", "wf", cron=None, every=timedelta(minutes=5), payload=None,
        timezone="UTC", catchup="all",
    )  # fmt: skip
    assert s.next_after(at("2026-12-07T12:03:10")) == at("2026-12-07T12:05:00")
    assert s.next_after(at("2026-12-07T12:05:00")) == at("2026-12-07T12:10:00")
    assert s.spec == "every 300s"


@pytest.mark.parametrize(
    ("catchup", "started"),
    [
        ("all", ["12:05", "12:10", "12:15", "12:20"]),
        ("latest", ["12:20"]),
        ("skip", ["12:20"]),  # the only tick not yet late
    ],
)
def test_ticks_missed_while_no_scheduler_ran_follow_catchup(
    catchup: str, started: list[str]
) -> None:
    s = make_schedule(
        "sweep", "wf", cron="*/5 * * * *", every=None, payload=None,
        timezone="UTC", catchup=catchup,
    )  # fmt: skip
    ticks, newest = s.due(at("2026-12-07T12:00:00"), at("2026-12-07T12:20:30"), grace=60)
    assert [f"{t:%H:%M}" for t in ticks] == started
    assert newest == at("2026-12-07T12:20:00")
    late, _ = s.due(at("2026-12-07T12:00:00"), at("2026-12-07T12:23:00"), grace=60)
    expected_late = {"all": ["12:05", "12:10", "12:15", "12:20"], "latest": ["12:20"], "skip": []}
    assert [f"{t:%H:%M}" for t in late] == expected_late[catchup]


def test_bad_schedules_are_config_errors() -> None:
    mgmt = hms_bus.init("t")
    mgmt.define_workflow("wf", ["a"])
    cases: list[tuple[dict[str, Any], str]] = [
        ({}, "exactly one of cron= and every="),
        ({"cron": "* * * * *", "every": 5}, "exactly one of cron= and every="),
        ({"cron": "61 * * * *"}, "invalid cron expression '61 \\* \\* \\* \\*'"),
        ({"every": 0}, "every= must be positive"),
        ({"every": 5, "timezone": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
        ({"every": 5, "catchup": "some"}, "catchup must be one of latest, all, skip"),
    ]
    for kwargs, message in cases:
        with pytest.raises(hms_bus.ConfigError, match=message):
            mgmt.schedule("s", "wf", **kwargs)
    with pytest.raises(hms_bus.ConfigError, match="unknown workflow 'nope'"):
        mgmt.schedule("s", "nope", every=5)
    mgmt.schedule("s", "wf", every=5)
    with pytest.raises(hms_bus.ConfigError, match="already defined"):
        mgmt.schedule("s", "wf", every=5)


def app(
    make_mgmt: MakeMgmt, ran: Counter[str], catchup: str = "all", **settings: Any
) -> hms_bus.Management:
    mgmt = make_mgmt(shared=True, **settings)
    mgmt.define_workflow("sweep", ["look"])
    mgmt.schedule("sweep", "sweep", every=0.5, payload={"what": "breaches"}, catchup=catchup)

    @mgmt.on_step("sweep.look")
    async def look(ctx: hms_bus.StepContext) -> Any:
        ran[ctx.workflow_id] += 1
        return {"swept": ctx.payload["what"]}

    return mgmt


def tick_of(workflow_id: str) -> datetime:
    return datetime.fromisoformat(workflow_id.split("@", 1)[1])


async def test_two_schedulers_start_each_tick_once(make_mgmt: MakeMgmt) -> None:
    ran: Counter[str] = Counter()
    one = app(make_mgmt, ran)  # every role
    two = app(make_mgmt, ran, roles=("scheduler",))
    async with one, two:
        await eventually(lambda: len(ran) >= 4, within=20, what="four ticks")
        listed = await eventually(
            lambda: _listed(one, datetime.min.replace(tzinfo=UTC), done=3),
            within=20,
            what="three ticks' workflows completed",
        )
    assert all(w.workflow_id.startswith("sweep@") for w in listed)
    assert max(ran.values()) == 1  # no tick's workflow ran twice
    ticks = sorted(tick_of(w.workflow_id) for w in listed)
    assert all(b - a == timedelta(seconds=0.5) for a, b in itertools.pairwise(ticks))


@pytest.mark.parametrize("catchup", ["all", "latest"])
async def test_ticks_missed_while_no_scheduler_ran_are_caught_up(
    make_mgmt: MakeMgmt, catchup: str
) -> None:
    ran: Counter[str] = Counter()
    first = app(make_mgmt, ran, catchup, roles=("scheduler",))
    async with first:
        await eventually(lambda: first.role("scheduler").ticks >= 1, within=20, what="a tick")
    stopped = datetime.now(UTC)
    await asyncio.sleep(2.2)  # four ticks or more pass with no scheduler
    resumed = datetime.now(UTC)
    second = app(make_mgmt, ran, catchup, scheduler={"misfire_grace": 0.2})
    async with second:
        listed = await eventually(
            lambda: _listed(second, resumed + timedelta(seconds=0.5)), within=20, what="ticks"
        )
    ticks = sorted(tick_of(w.workflow_id) for w in listed)
    last = max(t for t in ticks if t <= stopped)  # the first scheduler's last tick
    missed = [last + timedelta(seconds=0.5 * i) for i in range(1, 20)]
    missed = [t for t in missed if t <= resumed]
    started = [t for t in missed if t in ticks]
    assert len(missed) >= 4
    if catchup == "all":
        assert started == missed, ticks  # every one, none twice
    else:
        assert len(started) <= 1, ticks  # the newest missed tick only (or a later one)
    assert len(ticks) == len(set(ticks))


async def _listed(
    mgmt: hms_bus.Management, after: datetime, *, done: int = 1
) -> list[hms_bus.WorkflowStatus]:
    """The sweep workflows, once ``done`` of those ticked after ``after`` have completed."""
    page = await mgmt.list(workflow="sweep", limit=200)
    ended = [w for w in page.items if w.status == "completed" and tick_of(w.workflow_id) > after]
    return page.items if len(ended) >= done else []
