"""The Management API end to end: return forms, starts, routing, queries, isolation."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from typing import Any

import pytest
from conftest import Backend, MakeMgmt, eventually, publish, read_topic
from pydantic import BaseModel

import hms_bus


class Amount(BaseModel):
    amount: int


# -- handler return forms -------------------------------------------------------------------


async def test_next_with_data_jumps_to_the_named_step(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["a", "b", "c"])
    seen: dict[str, Any] = {}

    @mgmt.on_step("wf.a")
    async def a(ctx: hms_bus.StepContext) -> Any:
        return hms_bus.Next("c", data={"from": "a"})

    @mgmt.on_step("wf.b")
    async def b(ctx: hms_bus.StepContext) -> Any:
        seen["b"] = ctx.payload

    @mgmt.on_step("wf.c")
    async def c(ctx: hms_bus.StepContext) -> Any:
        seen["c"] = ctx.payload
        return {"done": ctx.payload["from"]}

    async with mgmt:
        final = await mgmt.run("wf", {"start": 1}, timeout=5)

    assert final.status == "completed"
    assert final.result == {"done": "a"}
    assert seen == {"c": {"from": "a"}}
    assert [s.step for s in final.steps] == ["a", "c"]
    assert all(s.status == "succeeded" and s.attempts == 1 for s in final.steps)


async def test_next_without_data_passes_the_payload_on(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["a", "b", "c"])
    seen: list[Any] = []

    @mgmt.on_step("wf.a")
    async def a(ctx: hms_bus.StepContext) -> Any:
        return hms_bus.Next("c")

    @mgmt.on_step("wf.b")
    async def b(ctx: hms_bus.StepContext) -> Any:
        raise AssertionError("b is skipped")

    @mgmt.on_step("wf.c")
    async def c(ctx: hms_bus.StepContext) -> Any:
        seen.append(ctx.payload)

    async with mgmt:
        final = await mgmt.run("wf", {"id": "GR-1"}, timeout=5)

    assert seen == [{"id": "GR-1"}]
    assert final.status == "completed"
    assert final.result == {"id": "GR-1"}
    assert [s.step for s in final.steps] == ["a", "c"]


@pytest.mark.parametrize("key", ["nextStep", "next_step"])
async def test_seed_dict_routes_like_next(make_mgmt: MakeMgmt, key: str) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["a", "b", "c"])
    seen: list[Any] = []

    @mgmt.on_step("wf.a")
    async def a(ctx: hms_bus.StepContext) -> Any:
        return {key: "c", "data": {"checked": True}}

    @mgmt.on_step("wf.b")
    async def b(ctx: hms_bus.StepContext) -> Any:
        raise AssertionError("b is skipped")

    @mgmt.on_step("wf.c")
    async def c(ctx: hms_bus.StepContext) -> Any:
        seen.append(ctx.payload)
        return ctx.payload

    async with mgmt:
        final = await mgmt.run("wf", {"id": 1}, timeout=5)

    assert seen == [{"checked": True}]
    assert final.status == "completed"
    assert final.result == {"checked": True}
    assert [s.step for s in final.steps] == ["a", "c"]


@pytest.mark.parametrize(
    ("returned", "expected"),
    [
        pytest.param({"n": 1}, {"n": 1}, id="dict"),
        pytest.param(Amount(amount=7), {"amount": 7}, id="model"),
        pytest.param(None, {"start": True}, id="none"),
    ],
)
async def test_plain_data_goes_to_the_next_step_in_order(
    make_mgmt: MakeMgmt, returned: Any, expected: Any
) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["a", "b", "c"])
    seen: dict[str, Any] = {}

    @mgmt.on_step("wf.a")
    async def a(ctx: hms_bus.StepContext) -> Any:
        return returned

    @mgmt.on_step("wf.b")
    async def b(ctx: hms_bus.StepContext) -> Any:
        seen["b"] = ctx.payload
        return None

    @mgmt.on_step("wf.c")
    async def c(ctx: hms_bus.StepContext) -> Any:
        seen["c"] = ctx.payload
        return {"last": ctx.payload}

    async with mgmt:
        final = await mgmt.run("wf", {"start": True}, timeout=5)

    assert seen == {"b": expected, "c": expected}
    assert final.status == "completed"
    assert final.result == {"last": expected}
    assert [s.step for s in final.steps] == ["a", "b", "c"]
    assert [s.seq for s in final.steps] == [1, 2, 3]


async def test_after_the_last_step_the_result_is_its_data(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["only"])

    @mgmt.on_step("wf.only")
    async def only(ctx: hms_bus.StepContext) -> Any:
        return Amount(amount=ctx.payload["amount"] * 2)

    async with mgmt:
        final = await mgmt.run("wf", {"amount": 21}, timeout=5)

    assert final.status == "completed"
    assert final.result == {"amount": 42}
    assert final.error is None
    assert final.payload == {"amount": 21}
    assert final.finished_at is not None


async def test_complete_ends_the_workflow_early(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["a", "b"])
    ran: list[str] = []

    @mgmt.on_step("wf.a")
    async def a(ctx: hms_bus.StepContext) -> Any:
        return hms_bus.Complete({"approved": False})

    @mgmt.on_step("wf.b")
    async def b(ctx: hms_bus.StepContext) -> Any:
        ran.append("b")

    async with mgmt:
        final = await mgmt.run("wf", {}, timeout=5)
        await asyncio.sleep(0.1)

    assert final.status == "completed"
    assert final.result == {"approved": False}
    assert [s.step for s in final.steps] == ["a"]
    assert ran == []


async def test_error_step_ends_the_workflow_when_it_returns(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["check", "pay"], error_steps=["reject"])
    ran: list[str] = []

    @mgmt.on_step("wf.check")
    async def check(ctx: hms_bus.StepContext) -> Any:
        return hms_bus.Next("reject", {"reason": "score"})

    @mgmt.on_step("wf.pay")
    async def pay(ctx: hms_bus.StepContext) -> Any:
        ran.append("pay")

    @mgmt.on_step("wf.reject")
    async def reject(ctx: hms_bus.StepContext) -> Any:
        ran.append("reject")
        return {"rejected": ctx.payload["reason"]}

    async with mgmt:
        final = await mgmt.run("wf", {}, timeout=5)
        await asyncio.sleep(0.1)

    assert final.status == "completed"
    assert final.result == {"rejected": "score"}
    assert ran == ["reject"]
    assert [s.step for s in final.steps] == ["check", "reject"]


async def test_ctx_fields_describe_the_attempt(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["a", "b"])
    contexts: list[hms_bus.StepContext] = []

    @mgmt.on_step("wf.a")
    async def a(ctx: hms_bus.StepContext) -> Any:
        contexts.append(ctx)

    @mgmt.on_step("wf.b")
    async def b(ctx: hms_bus.StepContext) -> Any:
        contexts.append(ctx)

    async with mgmt:
        started = await mgmt.start("wf", {"x": 1}, workflow_id="ctx-1")
        await started.wait(timeout=5)

    assert [(c.workflow_id, c.workflow, c.step, c.seq, c.attempt) for c in contexts] == [
        ("ctx-1", "wf", "a", 1, 1),
        ("ctx-1", "wf", "b", 2, 1),
    ]
    assert all(c.error is None for c in contexts)
    assert all(c.started_at.tzinfo is not None for c in contexts)


# -- delays -----------------------------------------------------------------------------------


async def test_delayed_next_step_waits_and_is_pending_meanwhile(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["a", "b"])
    times: dict[str, float] = {}

    @mgmt.on_step("wf.a")
    async def a(ctx: hms_bus.StepContext) -> Any:
        times["a_done"] = time.monotonic()
        return hms_bus.Next("b", {"later": True}, delay=0.3)

    @mgmt.on_step("wf.b")
    async def b(ctx: hms_bus.StepContext) -> Any:
        times["b_start"] = time.monotonic()
        return ctx.payload

    async with mgmt:
        started = await mgmt.start("wf", {})

        async def b_pending() -> hms_bus.StepStatus | None:
            st = await mgmt.status(started.workflow_id)
            return st.step("b") if st is not None else None

        pending = await eventually(b_pending, within=2, what="step b scheduled")
        assert "b_start" not in times
        assert pending.status == "pending"
        assert pending.due_at is not None
        assert pending.due_at > pending.scheduled_at
        final = await started.wait(timeout=5)

    assert final.status == "completed"
    assert final.result == {"later": True}
    assert times["b_start"] - times["a_done"] >= 0.3
    assert final.step("b").due_at is None


async def test_ctx_schedule_is_a_durable_delay(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["a", "check"])
    times: dict[str, float] = {}

    @mgmt.on_step("wf.a")
    async def a(ctx: hms_bus.StepContext) -> Any:
        times["a"] = time.monotonic()
        return ctx.schedule("check", {"n": 1}, delay=0.2)

    @mgmt.on_step("wf.check")
    async def check(ctx: hms_bus.StepContext) -> Any:
        times["check"] = time.monotonic()
        return ctx.payload

    async with mgmt:
        final = await mgmt.run("wf", {}, timeout=5)

    assert final.result == {"n": 1}
    assert times["check"] - times["a"] >= 0.2


async def test_delayed_step_fires_when_a_scheduler_starts_later(make_mgmt: MakeMgmt) -> None:
    calls: Counter[str] = Counter()

    def app(**settings: Any) -> hms_bus.Management:
        mgmt = make_mgmt(shared=True, **settings)
        mgmt.define_workflow("wf", ["a", "b"])

        @mgmt.on_step("wf.a")
        async def a(ctx: hms_bus.StepContext) -> Any:
            calls["a"] += 1
            return hms_bus.Next("b", {"x": 1}, delay=0.1)

        @mgmt.on_step("wf.b")
        async def b(ctx: hms_bus.StepContext) -> Any:
            calls["b"] += 1
            return {"fired": True}

        return mgmt

    without_scheduler = app(roles=("worker", "coordinator", "projector"))
    async with without_scheduler:
        started = await without_scheduler.start("wf", {})

        async def timed() -> bool:
            st = await without_scheduler.status(started.workflow_id)
            b = st.step("b") if st is not None else None
            return b is not None and b.due_at is not None

        await eventually(timed, within=2, what="timer for b stored")
    await asyncio.sleep(0.2)  # the timer falls due while no scheduler runs
    assert calls == {"a": 1}

    async with app() as with_scheduler:
        final = await with_scheduler.wait(started.workflow_id, timeout=5)

    assert final.status == "completed"
    assert final.result == {"fired": True}
    assert calls == {"a": 1, "b": 1}


# -- starting ---------------------------------------------------------------------------------


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


async def test_payload_not_matching_the_input_model_is_refused_at_start(
    make_mgmt: MakeMgmt,
) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["a"], input=Amount)
    seen: list[Any] = []

    @mgmt.on_step("wf.a")
    async def a(ctx: hms_bus.StepContext) -> Any:
        seen.append(ctx.payload)
        return ctx.payload

    async with mgmt:
        with pytest.raises(hms_bus.PayloadValidationError, match="amount") as caught:
            await mgmt.start("wf", {"amount": "lots"})
        assert isinstance(caught.value, hms_bus.ConfigError)
        assert [e["loc"] for e in caught.value.errors] == [("amount",)]
        assert (await mgmt.list()).items == []
        final = await mgmt.run("wf", {"amount": 5}, timeout=5)

    assert final.status == "completed"
    assert seen == [Amount(amount=5)]
    assert final.result == {"amount": 5}


async def test_step_input_model_violation_fails_at_once_to_dead_letter(
    make_mgmt: MakeMgmt,
) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["a", "pay"])
    paid: list[Any] = []

    @mgmt.on_step("wf.a")
    async def a(ctx: hms_bus.StepContext) -> Any:
        return {"amount": "not a number"}

    @mgmt.on_step(
        "wf.pay",
        input=Amount,
        retry=hms_bus.RetryPolicy(max_attempts=3, initial_delay=0.01, jitter=0),
    )
    async def pay(ctx: hms_bus.StepContext) -> Any:
        paid.append(ctx.payload)

    async with mgmt:
        final = await mgmt.run("wf", {}, timeout=5)
        letters = await read_topic(mgmt, mgmt.topics.dead_letter)

    assert final.status == "failed"
    assert "pay" in (final.error or "")
    assert "amount" in (final.error or "")
    assert final.step("pay").attempts == 1
    assert final.step("pay").status == "failed"
    assert paid == []
    assert len(letters) == 1
    assert letters[0].key == final.workflow_id.encode()
    assert b"amount" in letters[0].value


# -- definitions and configuration errors ---------------------------------------------------


def test_unknown_and_malformed_names_are_config_errors() -> None:
    mgmt = hms_bus.init("t")
    mgmt.define_workflow("wf", ["a", "b"])

    async def handler(ctx: hms_bus.StepContext) -> Any:
        return None

    with pytest.raises(hms_bus.ConfigError, match=r"'zzz'.*a, b"):
        mgmt.on_step("wf.zzz")(handler)
    with pytest.raises(hms_bus.ConfigError, match="'other'"):
        mgmt.on_step("other.a")(handler)
    with pytest.raises(hms_bus.ConfigError, match="'nodot'"):
        mgmt.on_step("nodot")(handler)
    with pytest.raises(hms_bus.ConfigError, match=r"'wf\.a\.b'"):
        mgmt.on_step("wf.a.b")(handler)
    for bad in ["has.dot", "", "1abc", "sp ace", "x" * 101]:
        with pytest.raises(hms_bus.ConfigError, match="invalid workflow name"):
            mgmt.define_workflow(bad, ["a"])
        with pytest.raises(hms_bus.ConfigError, match="invalid step name"):
            mgmt.define_workflow("ok", ["a", bad])
    with pytest.raises(hms_bus.ConfigError, match="already defined"):
        mgmt.define_workflow("wf", ["a"])
    with pytest.raises(hms_bus.ConfigError, match="twice"):
        mgmt.define_workflow("dup", ["a", "a"])
    with pytest.raises(hms_bus.ConfigError, match="non-empty"):
        mgmt.define_workflow("empty", [])
    with pytest.raises(hms_bus.ConfigError, match="'missing'"):
        mgmt.define_workflow("errs", ["a"], on_error="missing")
    mgmt.on_step("wf.a")(handler)
    with pytest.raises(hms_bus.ConfigError, match="already has a handler"):
        mgmt.on_step("wf.a")(handler)
    with pytest.raises(hms_bus.ConfigError, match="own on_error"):
        mgmt.on_step("wf.b", on_error="b")(handler)


def test_a_handler_that_is_not_async_is_a_config_error() -> None:
    mgmt = hms_bus.init("t")
    mgmt.define_workflow("wf", ["a"])

    def sync_handler(ctx: hms_bus.StepContext) -> Any:
        return None

    with pytest.raises(hms_bus.ConfigError, match="async def"):
        mgmt.on_step("wf.a")(sync_handler)
    assert mgmt.workflows["wf"].steps["a"].handler is None


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"bus": "rabbitmq://localhost"}, "memory://, kafka://"),
        ({"store": "mysql://localhost/db"}, "memory://, postgresql://"),
        ({"bus": "localhost:9092"}, "memory://, kafka://"),
    ],
)
def test_unknown_url_scheme_is_a_config_error_naming_the_schemes(
    kwargs: dict[str, str], named: str
) -> None:
    with pytest.raises(hms_bus.ConfigError) as caught:
        hms_bus.init("t", **kwargs)
    assert named in str(caught.value)
    assert next(iter(kwargs.values())) in str(caught.value)


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"colour": "blue"}, "colour"),
        ({"worker": {"concurency": 3}}, "concurency"),
        ({"roles": ("worker", "chef")}, "chef"),
        ({"worker": {"concurrency": 0}}, "concurrency"),
    ],
)
def test_unknown_or_bad_setting_is_a_config_error(settings: dict[str, Any], named: str) -> None:
    with pytest.raises(hms_bus.ConfigError, match=named):
        hms_bus.init("t", **settings)


def test_errors_share_one_root() -> None:
    for error in (
        hms_bus.ConfigError,
        hms_bus.PayloadValidationError,
        hms_bus.NotFoundError,
        hms_bus.WaitTimeoutError,
        hms_bus.SerializationError,
        hms_bus.TransportError,
        hms_bus.StoreError,
        hms_bus.StepError,
        hms_bus.Fail,
    ):
        assert issubclass(error, hms_bus.HmsBusError)
    assert issubclass(hms_bus.WaitTimeoutError, TimeoutError)
    assert issubclass(hms_bus.NotFoundError, LookupError)
    assert issubclass(hms_bus.Fail, hms_bus.StepError)


async def test_next_to_an_unknown_step_fails_the_workflow(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["a", "b"])
    attempts: list[int] = []

    @mgmt.on_step("wf.a", retry=hms_bus.RetryPolicy(max_attempts=3, initial_delay=0.01))
    async def a(ctx: hms_bus.StepContext) -> Any:
        attempts.append(ctx.attempt)
        return hms_bus.Next("nowhere")

    @mgmt.on_step("wf.b")
    async def b(ctx: hms_bus.StepContext) -> Any:
        raise AssertionError("not reached")

    async with mgmt:
        final = await mgmt.run("wf", {}, timeout=5)

    assert final.status == "failed"
    assert "'nowhere'" in (final.error or "")
    assert attempts == [1]


async def test_client_api_needs_async_with(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["a"])
    with pytest.raises(hms_bus.HmsBusError, match="async with"):
        await mgmt.start("wf", {})


# -- queries ----------------------------------------------------------------------------------


async def test_list_filters_orders_newest_first_and_pages(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("good", ["a"])
    mgmt.define_workflow("bad", ["a"])

    @mgmt.on_step("good.a")
    async def good(ctx: hms_bus.StepContext) -> Any:
        return ctx.payload

    @mgmt.on_step("bad.a")
    async def bad(ctx: hms_bus.StepContext) -> Any:
        raise hms_bus.Fail("no")

    async with mgmt:
        ids = []
        for i in range(7):
            name = "bad" if i % 3 == 0 else "good"
            started = await mgmt.start(name, {"i": i}, workflow_id=f"w-{i:02d}")
            ids.append((name, started.workflow_id))
        for _, wid in ids:
            await mgmt.wait(wid, timeout=5)

        everything = await mgmt.list()
        goods = await mgmt.list("good")
        failed = await mgmt.list(status="failed")
        good_completed = await mgmt.list("good", hms_bus.WorkflowState.COMPLETED)
        none = await mgmt.list("good", "failed")

        pages, cursor = [], None
        while True:
            page = await mgmt.list(limit=3, cursor=cursor)
            pages.append([w.workflow_id for w in page.items])
            cursor = page.next_cursor
            if cursor is None:
                break
        with pytest.raises(hms_bus.ConfigError, match="'finished'"):
            await mgmt.list(status="finished")
        with pytest.raises(hms_bus.ConfigError, match="limit"):
            await mgmt.list(limit=0)

    newest_first = [wid for _, wid in reversed(ids)]
    assert [w.workflow_id for w in everything.items] == newest_first
    assert everything.next_cursor is None
    assert [w.workflow_id for w in goods.items] == [w for n, w in reversed(ids) if n == "good"]
    assert [w.workflow_id for w in failed.items] == [w for n, w in reversed(ids) if n == "bad"]
    assert all(w.status == "failed" for w in failed.items)
    assert [w.workflow_id for w in good_completed.items] == [w.workflow_id for w in goods.items]
    assert none.items == []
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [wid for p in pages for wid in p] == newest_first


async def test_history_is_the_workflows_events_in_order(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["a", "b"])

    @mgmt.on_step("wf.a")
    async def a(ctx: hms_bus.StepContext) -> Any:
        return {"x": 1}

    @mgmt.on_step("wf.b")
    async def b(ctx: hms_bus.StepContext) -> Any:
        return None

    async with mgmt:
        final = await mgmt.run("wf", {}, timeout=5)
        history = await mgmt.history(final.workflow_id)
        assert await mgmt.history("unknown-id") == []

    types = [e.type for e in history]
    assert types == [
        "workflowStarted",
        "stepScheduled",
        "stepStarted",
        "completeStep",
        "stepScheduled",
        "stepStarted",
        "completeStep",
        "workflowCompleted",
    ]
    assert [getattr(e, "step", None) for e in history[1:7]] == ["a"] * 3 + ["b"] * 3
    assert all(e.workflow_id == final.workflow_id for e in history)
    assert len({e.event_id for e in history}) == len(history)


async def test_cancel_stops_a_workflow_waiting_on_a_delayed_step(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["a", "later"])
    ran: list[str] = []

    @mgmt.on_step("wf.a")
    async def a(ctx: hms_bus.StepContext) -> Any:
        return hms_bus.Next("later", delay=0.3)

    @mgmt.on_step("wf.later")
    async def later(ctx: hms_bus.StepContext) -> Any:
        ran.append("later")

    async with mgmt:
        started = await mgmt.start("wf", {})

        async def waiting() -> bool:
            st = await started.status()
            return st is not None and st.step("later") is not None

        await eventually(waiting, within=2, what="delayed step scheduled")
        assert await mgmt.cancel(started.workflow_id, reason="withdrawn") is True
        final = await started.wait(timeout=5)
        await asyncio.sleep(0.5)  # past the delay
        assert await mgmt.cancel(started.workflow_id) is False
        after = await started.status()

    assert final.status == "cancelled"
    assert final.error == "withdrawn"
    assert ran == []
    assert after is not None
    assert after.status == "cancelled"
    assert after.step("later").status == "pending"


async def test_cancel_while_a_step_runs_ignores_its_result(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["a", "b"])
    gate = asyncio.Event()
    ran: list[str] = []

    @mgmt.on_step("wf.a")
    async def a(ctx: hms_bus.StepContext) -> Any:
        ran.append("a")
        await gate.wait()
        return {"late": True}

    @mgmt.on_step("wf.b")
    async def b(ctx: hms_bus.StepContext) -> Any:
        ran.append("b")

    async with mgmt:
        started = await mgmt.start("wf", {})
        await eventually(lambda: ran == ["a"], what="step a running")
        assert await mgmt.cancel(started.workflow_id) is True
        final = await started.wait(timeout=5)
        gate.set()
        await asyncio.sleep(0.2)
        after = await started.status()

    assert final.status == "cancelled"
    assert final.error == "cancelled"
    assert ran == ["a"]
    assert after is not None
    assert after.status == "cancelled"
    assert after.result is None
    assert after.step("b") is None


async def test_finished_unknown_and_slow_workflows(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["a"])
    gate = asyncio.Event()

    @mgmt.on_step("wf.a")
    async def a(ctx: hms_bus.StepContext) -> Any:
        if ctx.payload.get("slow"):
            await gate.wait()

    async with mgmt:
        done = await mgmt.run("wf", {}, timeout=5)
        assert await mgmt.cancel(done.workflow_id) is False
        with pytest.raises(hms_bus.NotFoundError, match="'no-such-id'"):
            await mgmt.cancel("no-such-id")
        with pytest.raises(hms_bus.NotFoundError, match="'no-such-id'"):
            await mgmt.wait("no-such-id", timeout=1)
        assert await mgmt.status("no-such-id") is None

        slow = await mgmt.start("wf", {"slow": True})
        t0 = time.monotonic()
        with pytest.raises(hms_bus.WaitTimeoutError) as caught:
            await slow.wait(timeout=0.2)
        assert isinstance(caught.value, TimeoutError)
        assert time.monotonic() - t0 >= 0.2
        assert "running" in str(caught.value)
        gate.set()
        assert (await slow.wait(timeout=5)).status == "completed"


# -- isolation and deployment shapes ------------------------------------------------------------


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


async def test_pure_client_starts_while_another_management_runs_everything(
    make_mgmt: MakeMgmt,
) -> None:
    runner = make_mgmt("runner", shared=True)
    client = make_mgmt("client", shared=True, roles=())
    for mgmt in (runner, client):
        mgmt.define_workflow("wf", ["a", "b"])

    @runner.on_step("wf.a")
    async def a(ctx: hms_bus.StepContext) -> Any:
        return {"n": ctx.payload["n"] + 1}

    @runner.on_step("wf.b")
    async def b(ctx: hms_bus.StepContext) -> Any:
        return {"n": ctx.payload["n"] * 10}

    async with runner, client:
        assert client.role("worker") is None
        final = await client.run("wf", {"n": 1}, timeout=5)
        seen_by_runner = await runner.status(final.workflow_id)

    assert final.status == "completed"
    assert final.result == {"n": 20}
    assert seen_by_runner is not None
    assert seen_by_runner.status == "completed"


async def test_roles_split_across_managements_complete_a_workflow(make_mgmt: MakeMgmt) -> None:
    workers = make_mgmt("workers", shared=True, roles=("worker",))
    control = make_mgmt("control", shared=True, roles=("coordinator", "projector", "scheduler"))
    calls: Counter[str] = Counter()
    for mgmt in (workers, control):
        mgmt.define_workflow("wf", ["a", "b"])

    @workers.on_step("wf.a", retry=hms_bus.RetryPolicy(initial_delay=0.05, jitter=0))
    async def a(ctx: hms_bus.StepContext) -> Any:
        calls["a"] += 1
        if ctx.attempt == 1:
            raise RuntimeError("flaky")
        return hms_bus.Next("b", {"ok": True}, delay=0.05)

    @workers.on_step("wf.b")
    async def b(ctx: hms_bus.StepContext) -> Any:
        calls["b"] += 1
        return ctx.payload

    async with workers, control:
        assert set(workers.settings.roles) == {"worker"}
        assert workers.role("coordinator") is None
        final = await control.run("wf", {}, timeout=5)

    assert final.status == "completed"
    assert final.result == {"ok": True}
    assert calls == {"a": 2, "b": 1}


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


async def test_many_concurrent_workflows_run_each_step_once(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["a", "b", "c"])
    calls: Counter[tuple[str, str]] = Counter()

    for step in ("a", "b", "c"):

        @mgmt.on_step(f"wf.{step}")
        async def handler(ctx: hms_bus.StepContext) -> Any:
            calls[(ctx.workflow_id, ctx.step)] += 1
            await asyncio.sleep(0)
            return {"n": ctx.payload["n"] + 1}

    async with mgmt:
        starts = await asyncio.gather(*[mgmt.start("wf", {"n": 0}) for _ in range(300)])
        finals = await asyncio.gather(*[s.wait(timeout=30) for s in starts])
        await asyncio.sleep(0.1)

    assert len({s.workflow_id for s in starts}) == 300
    assert all(f.status == "completed" and f.result == {"n": 3} for f in finals)
    assert len(calls) == 900
    assert set(calls.values()) == {1}


async def test_worker_concurrency_limit(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt(worker={"concurrency": 2})
    mgmt.define_workflow("wf", ["work"])
    running = 0
    peak = 0

    @mgmt.on_step("wf.work")
    async def work(ctx: hms_bus.StepContext) -> Any:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.05)
        running -= 1

    async with mgmt:
        # Distinct ids spread the workflows over partitions, so many arrive at once.
        finals = await asyncio.gather(
            *[mgmt.run("wf", {}, workflow_id=uuid.uuid4().hex, timeout=10) for _ in range(10)]
        )

    assert all(f.status == "completed" for f in finals)
    assert peak == 2
    # A step waiting for a free slot is not running yet: the recorded attempts (from
    # started_at to finished_at) never overlap more than the limit either.
    edges = sorted(
        [(f.steps[0].started_at, 1) for f in finals]
        + [(f.steps[0].finished_at, -1) for f in finals],
        key=lambda e: (e[0], e[1]),
    )
    level, most = 0, 0
    for _, delta in edges:
        level += delta
        most = max(most, level)
    assert most <= 2


async def test_duplicate_complete_step_does_not_advance_twice(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["a", "b", "c"])
    calls: Counter[str] = Counter()
    gate = asyncio.Event()

    @mgmt.on_step("wf.a")
    async def a(ctx: hms_bus.StepContext) -> Any:
        calls["a"] += 1
        return {"from": "a"}

    @mgmt.on_step("wf.b")
    async def b(ctx: hms_bus.StepContext) -> Any:
        calls["b"] += 1
        await gate.wait()

    @mgmt.on_step("wf.c")
    async def c(ctx: hms_bus.StepContext) -> Any:
        calls["c"] += 1

    async with mgmt:
        started = await mgmt.start("wf", {})
        await eventually(lambda: calls["b"] == 1, what="step b running")
        inputs = await read_topic(mgmt, mgmt.topics.coordinator)
        completes = [r for r in inputs if b'"completeStep"' in r.value]
        assert len(completes) == 1  # a's
        original = completes[0]
        await publish(mgmt, original.topic, original.value, original.key)
        await publish(mgmt, original.topic, original.value, original.key)
        await asyncio.sleep(0.2)
        gate.set()
        final = await started.wait(timeout=5)
        await asyncio.sleep(0.2)
        b_commands = await read_topic(mgmt, mgmt.topics.step("wf", "b"))
        inputs = await read_topic(mgmt, mgmt.topics.coordinator)

    assert final.status == "completed"
    assert calls == {"a": 1, "b": 1, "c": 1}
    assert len(b_commands) == 1
    assert sum(r.value == original.value for r in inputs) == 3
    assert [s.step for s in final.steps] == ["a", "b", "c"]


@pytest.mark.parametrize("announce_after", [0.0, 0.05])
async def test_a_running_step_is_announced_and_a_quick_one_keeps_its_real_start(
    make_mgmt: MakeMgmt, announce_after: float
) -> None:
    """A slow step shows ``running`` while it runs; a quick one, whose ``stepStarted``
    travels with its ``completeStep``, still has its true start time and order."""
    mgmt = make_mgmt(worker={"announce_after": announce_after})
    mgmt.define_workflow("wf", ["quick", "slow"])
    release = asyncio.Event()

    @mgmt.on_step("wf.quick")
    async def quick(ctx: hms_bus.StepContext) -> Any:
        return None

    @mgmt.on_step("wf.slow")
    async def slow(ctx: hms_bus.StepContext) -> Any:
        await release.wait()

    async with mgmt:
        started = await mgmt.start("wf", {})

        async def slow_running() -> bool:
            st = await started.status()
            return (
                st is not None
                and st.step("slow") is not None
                and st.step("slow").status == "running"
            )  # type: ignore[union-attr]

        await eventually(slow_running, within=10, what="the slow step shown running")
        release.set()
        final = await started.wait(timeout=10)
        history = await mgmt.history(started.workflow_id)

    assert final.status == "completed"
    quick_events = [e for e in history if getattr(e, "step", None) == "quick"]
    assert [e.type for e in quick_events] == ["stepScheduled", "stepStarted", "completeStep"]
    began, done = quick_events[1], quick_events[2]
    assert began.ts == done.started_at  # the real start, not when it was published
    assert final.step("quick").started_at == began.ts  # type: ignore[union-attr]
