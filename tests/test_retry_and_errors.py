"""Failures: Fail, retries with backoff, timeouts, error paths and the dead-letter topic."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest
from conftest import MakeMgmt, read_topic

import hms_bus


def quick(max_attempts: int = 3, initial_delay: float = 0.05, **kw: Any) -> hms_bus.RetryPolicy:
    """A retry policy without jitter, so delays are exact lower bounds."""
    return hms_bus.RetryPolicy(
        max_attempts=max_attempts, initial_delay=initial_delay, jitter=0, **kw
    )


async def dead_letters(mgmt: hms_bus.Management) -> list[dict[str, Any]]:
    return [orjson.loads(r.value) for r in await read_topic(mgmt, mgmt.topics.dead_letter)]


async def test_fail_is_not_retried_and_goes_to_dead_letter(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["check", "pay"])
    attempts: list[int] = []

    @mgmt.on_step("wf.check", retry=quick(max_attempts=5, initial_delay=0.01))
    async def check(ctx: hms_bus.StepContext) -> Any:
        attempts.append(ctx.attempt)
        raise hms_bus.Fail("applicant name is missing")

    @mgmt.on_step("wf.pay")
    async def pay(ctx: hms_bus.StepContext) -> Any:
        raise AssertionError("not reached")

    async with mgmt:
        final = await mgmt.run("wf", {"id": "GR-7"}, timeout=5)
        letters = await dead_letters(mgmt)
        history = await mgmt.history(final.workflow_id)

    assert attempts == [1]
    assert final.status == "failed"
    assert "check" in (final.error or "")
    assert "applicant name is missing" in (final.error or "")
    step = final.step("check")
    assert step.status == "failed"
    assert step.attempts == 1
    assert step.error == "applicant name is missing"
    assert final.step("pay") is None
    assert len(letters) == 1
    letter = letters[0]
    assert letter["workflow_id"] == final.workflow_id
    assert letter["step"] == "check"
    assert "check" in letter["reason"]
    assert "applicant name is missing" in letter["reason"]
    assert letter["error"]["type"] == "Fail"
    assert letter["error"]["retriable"] is False
    assert letter["original"]["payload"] == {"id": "GR-7"}
    assert letter["source_topic"] == mgmt.topics.step("wf", "check")
    assert history[-1].type == "workflowFailed"
    assert not [e for e in history if e.type == "retryScheduled"]


async def test_a_step_failing_twice_then_succeeding_completes(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["flaky", "after"])
    attempts: list[int] = []

    @mgmt.on_step("wf.flaky", retry=quick())
    async def flaky(ctx: hms_bus.StepContext) -> Any:
        attempts.append(ctx.attempt)
        if ctx.attempt < 3:
            raise ConnectionError(f"down on attempt {ctx.attempt}")
        return {"ok": ctx.payload["n"]}

    @mgmt.on_step("wf.after")
    async def after(ctx: hms_bus.StepContext) -> Any:
        return ctx.payload

    async with mgmt:
        final = await mgmt.run("wf", {"n": 4}, timeout=5)
        letters = await dead_letters(mgmt)
        history = await mgmt.history(final.workflow_id)

    assert attempts == [1, 2, 3]
    assert final.status == "completed"
    assert final.result == {"ok": 4}
    step = final.step("flaky")
    assert step.attempts == 3
    assert step.status == "succeeded"
    assert step.error is None
    assert [s.step for s in final.steps] == ["flaky", "after"]
    retries = [e for e in history if e.type == "retryScheduled"]
    assert [e.attempt for e in retries] == [2, 3]
    assert retries[0].error.message == "down on attempt 1"
    assert retries[0].error.type == "ConnectionError"
    assert letters == []


async def test_exhausted_retries_fail_the_workflow(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["broken"])
    attempts: list[int] = []

    @mgmt.on_step("wf.broken", retry=quick(max_attempts=3, initial_delay=0.02))
    async def broken(ctx: hms_bus.StepContext) -> Any:
        attempts.append(ctx.attempt)
        raise KeyError("applicationId")

    async with mgmt:
        final = await mgmt.run("wf", {"x": 1}, timeout=5)
        letters = await dead_letters(mgmt)

    assert attempts == [1, 2, 3]
    assert final.status == "failed"
    assert "broken" in (final.error or "")
    assert "applicationId" in (final.error or "")
    assert final.step("broken").attempts == 3
    assert final.step("broken").status == "failed"
    assert len(letters) == 1
    assert letters[0]["error"]["type"] == "KeyError"
    assert letters[0]["original"]["attempt"] == 3
    assert letters[0]["original"]["payload"] == {"x": 1}


async def test_retries_back_off_exponentially(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["flaky"])
    policy = quick(max_attempts=4, initial_delay=0.05, multiplier=2.0)
    starts: list[float] = []
    ctx_starts: list[Any] = []

    @mgmt.on_step("wf.flaky", retry=policy)
    async def flaky(ctx: hms_bus.StepContext) -> Any:
        starts.append(time.monotonic())
        ctx_starts.append(ctx.started_at)
        if ctx.attempt < 4:
            raise RuntimeError("again")
        return "done"

    async with mgmt:
        final = await mgmt.run("wf", {}, timeout=5)

    assert final.status == "completed"
    assert len(starts) == 4
    expected = [0.05, 0.1, 0.2]
    assert [policy.delay(n) for n in (1, 2, 3)] == expected
    for n, delay in enumerate(expected):
        assert starts[n + 1] - starts[n] >= delay
        assert (ctx_starts[n + 1] - ctx_starts[n]).total_seconds() >= delay


async def test_on_error_step_runs_after_fail_with_the_error(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["validate", "pay"], error_steps=["notify"])
    seen: list[hms_bus.StepContext] = []

    @mgmt.on_step("wf.validate")
    async def validate(ctx: hms_bus.StepContext) -> Any:
        return {"validated": ctx.payload["id"]}

    @mgmt.on_step("wf.pay", on_error="notify")
    async def pay(ctx: hms_bus.StepContext) -> Any:
        raise hms_bus.Fail("account closed")

    @mgmt.on_step("wf.notify")
    async def notify(ctx: hms_bus.StepContext) -> Any:
        seen.append(ctx)
        return {"notified": True}

    async with mgmt:
        final = await mgmt.run("wf", {"id": "GR-9"}, timeout=5)
        letters = await dead_letters(mgmt)

    assert len(seen) == 1
    ctx = seen[0]
    assert ctx.error is not None
    assert ctx.error.step == "pay"
    assert ctx.error.message == "account closed"
    assert ctx.error.type == "Fail"
    assert ctx.payload == {"validated": "GR-9"}
    assert final.status == "completed"
    assert final.result == {"notified": True}
    assert [(s.step, s.status) for s in final.steps] == [
        ("validate", "succeeded"),
        ("pay", "failed"),
        ("notify", "succeeded"),
    ]
    assert letters == []


async def test_on_error_step_runs_after_retries_run_out(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["pay"], error_steps=["refund"])
    attempts: list[int] = []
    seen: list[hms_bus.StepContext] = []

    @mgmt.on_step("wf.pay", retry=quick(max_attempts=2, initial_delay=0.02), on_error="refund")
    async def pay(ctx: hms_bus.StepContext) -> Any:
        attempts.append(ctx.attempt)
        raise ValueError("gateway said no")

    @mgmt.on_step("wf.refund")
    async def refund(ctx: hms_bus.StepContext) -> Any:
        seen.append(ctx)

    async with mgmt:
        final = await mgmt.run("wf", {"amount": 10}, timeout=5)

    assert attempts == [1, 2]
    assert len(seen) == 1
    assert seen[0].error is not None
    assert (seen[0].error.step, seen[0].error.message) == ("pay", "gateway said no")
    assert seen[0].error.type == "ValueError"
    assert seen[0].payload == {"amount": 10}
    assert final.status == "completed"
    assert final.result == {"amount": 10}


async def test_workflow_on_error_is_the_default_error_path(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["a", "b"], error_steps=["cleanup"], on_error="cleanup")
    handled: list[tuple[str | None, Any]] = []

    @mgmt.on_step("wf.a")
    async def a(ctx: hms_bus.StepContext) -> Any:
        return {"step": "a"}

    @mgmt.on_step("wf.b")
    async def b(ctx: hms_bus.StepContext) -> Any:
        raise hms_bus.Fail("b broke")

    @mgmt.on_step("wf.cleanup")
    async def cleanup(ctx: hms_bus.StepContext) -> Any:
        assert ctx.error is not None
        handled.append((ctx.error.step, ctx.payload))
        return hms_bus.Complete({"cleaned": True})

    async with mgmt:
        final = await mgmt.run("wf", {}, timeout=5)

    assert handled == [("b", {"step": "a"})]
    assert final.status == "completed"
    assert final.result == {"cleaned": True}


async def test_a_failing_error_step_fails_the_workflow(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["a"], error_steps=["cleanup"], on_error="cleanup")
    calls: list[str] = []

    @mgmt.on_step("wf.a")
    async def a(ctx: hms_bus.StepContext) -> Any:
        calls.append("a")
        raise hms_bus.Fail("a broke")

    @mgmt.on_step("wf.cleanup")
    async def cleanup(ctx: hms_bus.StepContext) -> Any:
        calls.append("cleanup")
        raise hms_bus.Fail("cleanup broke too")

    async with mgmt:
        final = await mgmt.run("wf", {}, timeout=5)
        letters = await dead_letters(mgmt)

    assert calls == ["a", "cleanup"]
    assert final.status == "failed"
    assert "cleanup" in (final.error or "")
    assert "cleanup broke too" in (final.error or "")
    assert [letter["step"] for letter in letters] == ["cleanup"]


async def test_a_step_past_its_timeout_fails_as_timeout_and_is_retried(
    make_mgmt: MakeMgmt,
) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["slow"])
    starts: list[float] = []
    timeout, delay = 0.05, 0.1

    @mgmt.on_step("wf.slow", timeout=timeout, retry=quick(max_attempts=3, initial_delay=delay))
    async def slow(ctx: hms_bus.StepContext) -> Any:
        starts.append(time.monotonic())
        if ctx.attempt < 3:
            await asyncio.sleep(5)
        return {"attempt": ctx.attempt}

    async with mgmt:
        final = await mgmt.run("wf", {}, timeout=5)
        history = await mgmt.history(final.workflow_id)

    assert final.status == "completed"
    assert final.result == {"attempt": 3}
    assert final.step("slow").attempts == 3
    failures = [e for e in history if e.type == "completeStep" and e.outcome == "failed"]
    assert [e.attempt for e in failures] == [1, 2]
    assert all(e.error.type == "TimeoutError" and e.error.retriable for e in failures)
    assert "0.05" in failures[0].error.message
    assert starts[1] - starts[0] >= timeout + delay
    assert starts[2] - starts[1] >= timeout + 2 * delay


async def test_timeout_exhausting_retries_fails_the_workflow(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["slow"])

    @mgmt.on_step("wf.slow", timeout=0.03, retry=quick(max_attempts=2, initial_delay=0.01))
    async def slow(ctx: hms_bus.StepContext) -> Any:
        await asyncio.sleep(5)

    async with mgmt:
        final = await mgmt.run("wf", {}, timeout=5)
        letters = await dead_letters(mgmt)

    assert final.status == "failed"
    assert "timed out" in (final.error or "")
    assert final.step("slow").attempts == 2
    assert [letter["error"]["type"] for letter in letters] == ["TimeoutError"]


async def test_idempotency_key_is_stable_across_retries_only(make_mgmt: MakeMgmt) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["charge", "confirm"])
    keys: list[tuple[str, int, str]] = []

    @mgmt.on_step("wf.charge", retry=quick(initial_delay=0.01))
    async def charge(ctx: hms_bus.StepContext) -> Any:
        keys.append((ctx.step, ctx.attempt, ctx.idempotency_key))
        if ctx.attempt < 3:
            raise RuntimeError("gateway timeout")

    @mgmt.on_step("wf.confirm", retry=quick(initial_delay=0.01))
    async def confirm(ctx: hms_bus.StepContext) -> Any:
        keys.append((ctx.step, ctx.attempt, ctx.idempotency_key))
        if ctx.attempt < 2:
            raise RuntimeError("again")

    async with mgmt:
        first = await mgmt.run("wf", {}, timeout=5)
        second = await mgmt.run("wf", {}, timeout=5)

    assert first.status == second.status == "completed"
    assert [(s, a) for s, a, _ in keys] == [
        ("charge", 1),
        ("charge", 2),
        ("charge", 3),
        ("confirm", 1),
        ("confirm", 2),
    ] * 2
    run1, run2 = keys[:5], keys[5:]
    for run in (run1, run2):
        assert len({k for s, _, k in run if s == "charge"}) == 1
        assert len({k for s, _, k in run if s == "confirm"}) == 1
        assert len({k for _, _, k in run}) == 2
    assert not {k for *_, k in run1} & {k for *_, k in run2}


@pytest.mark.parametrize(
    "returned",
    [object(), {"nextStep": 7}, hms_bus.Next("b", delay=-1)],
    ids=["not-json", "bad-next-step", "negative-delay"],
)
async def test_an_invalid_return_value_fails_without_retry(
    make_mgmt: MakeMgmt, returned: Any
) -> None:
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["a", "b"])
    attempts: list[int] = []

    @mgmt.on_step("wf.a", retry=quick(initial_delay=0.01))
    async def a(ctx: hms_bus.StepContext) -> Any:
        attempts.append(ctx.attempt)
        return returned

    @mgmt.on_step("wf.b")
    async def b(ctx: hms_bus.StepContext) -> Any:
        raise AssertionError("not reached")

    async with mgmt:
        final = await mgmt.run("wf", {}, timeout=5)

    assert attempts == [1]
    assert final.status == "failed"
    assert "'a'" in (final.error or "")


async def test_a_result_with_a_next_step_key_among_others_is_data(make_mgmt: MakeMgmt) -> None:
    """The seed's ``{"nextStep": …, "data": …}`` routes only when those (and ``next_step``,
    ``delay``) are its only keys; a result of its own that carries a ``nextStep`` field
    goes to the next step in order, as any other dict."""
    mgmt = make_mgmt()
    mgmt.define_workflow("wf", ["a", "b", "c"])
    seen: dict[str, Any] = {}
    result = {"nextStep": "c", "reviewer": "Jane", "data": {"note": "seed-like"}}

    @mgmt.on_step("wf.a")
    async def a(ctx: hms_bus.StepContext) -> Any:
        return result

    @mgmt.on_step("wf.b")
    async def b(ctx: hms_bus.StepContext) -> Any:
        seen["b"] = ctx.payload
        return {"nextStep": "c", "data": {"routed": True}, "delay": 0}

    @mgmt.on_step("wf.c")
    async def c(ctx: hms_bus.StepContext) -> Any:
        seen["c"] = ctx.payload

    async with mgmt:
        final = await mgmt.run("wf", {}, timeout=10)

    assert final.status == "completed"
    assert seen == {"b": result, "c": {"routed": True}}
    assert [s.step for s in final.steps] == ["a", "b", "c"]
