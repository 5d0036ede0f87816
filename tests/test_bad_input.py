"""The bad-input catalogue, on Kafka: each bad record ends in a dead letter with its
reason (or a clear error), the consumer keeps going, and nothing else is lost.

Every case puts its record on a step topic between two good workflows, with the raw
bus of a second Management (the way another producer, or an attacker, would), then
checks that both workflows complete, that one dead letter names the reason, and that
the letter itself fits on the bus.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from conftest import KAFKA, MakeMgmt, eventually, read_topic, transport

import hms_bus
from hms_bus.transport import Outgoing

pytestmark = pytest.mark.kafka

ON_KAFKA = pytest.mark.parametrize(
    "backend", [pytest.param((KAFKA, "memory://"), id="kafka")], indirect=True
)
LIMIT = 1_048_576


def _command(**fields: Any) -> dict[str, Any]:
    return {
        "v": 1,
        "type": "runStep",
        "event_id": "e1",
        "ts": "2026-01-01T00:00:00Z",
        "workflow_id": "w-bad",
        "workflow": "wf",
        "step": "a",
        "seq": 1,
        "attempt": 1,
        **fields,
    }


GOOD = orjson.dumps(_command())
CASES = {
    "truncated JSON": (GOOD[: len(GOOD) // 2], "undecodable command"),
    "invalid UTF-8": (GOOD.replace(b'"w-bad"', b'"w-\xff\xfe"'), "undecodable command"),
    "JSON nested 100,000 deep": (b"[" * 100_000 + b"]" * 100_000, "undecodable command"),
    "2 MiB against the 1 MiB limit": (
        orjson.dumps(_command(payload={"blob": "x" * (2 * LIMIT)})),
        f"over the bus limit of {LIMIT} bytes",
    ),
    "valid JSON of the wrong types": (
        orjson.dumps(_command(seq="first", attempt=[1])),
        "not a valid step command: seq",
    ),
    "an unknown workflow": (orjson.dumps(_command(workflow="nope")), "unknown step nope.a"),
    "an unknown step": (orjson.dumps(_command(step="zzz")), "unknown step wf.zzz"),
}


@ON_KAFKA
@pytest.mark.parametrize("case", list(CASES))
async def test_a_bad_record_is_dead_lettered_with_its_reason_and_work_goes_on(
    make_mgmt: MakeMgmt, case: str
) -> None:
    value, reason = CASES[case]
    app = make_mgmt(shared=True)
    app.define_workflow("wf", ["a", "b"])
    ran: list[str] = []

    @app.on_step("wf.a")
    async def a(ctx: hms_bus.StepContext) -> Any:
        return ctx.payload

    @app.on_step("wf.b")
    async def b(ctx: hms_bus.StepContext) -> Any:
        ran.append(ctx.workflow_id)

    # Another producer, whose own limit lets the big record through.
    other = make_mgmt("other", shared=True, roles=(), transport={"max_message_bytes": 4 * LIMIT})
    async with app, other:
        before = await app.start("wf", {"n": 1})
        await transport(other).publish([Outgoing(app.topics.step("wf", "a"), value, key=b"w-bad")])
        after = await app.start("wf", {"n": 2})
        finals = [await before.wait(timeout=30), await after.wait(timeout=30)]
        # The letter's partition is not the workflows': it may land after they end.
        letters = await eventually(
            lambda: read_topic(app, app.topics.dead_letter), within=30, what="the dead letter"
        )

    assert [f.status for f in finals] == ["completed", "completed"]
    assert sorted(ran) == sorted([before.workflow_id, after.workflow_id])
    assert len(letters) == 1, [orjson.loads(r.value)["reason"] for r in letters]
    letter = orjson.loads(letters[0].value)
    assert reason in letter["reason"]
    assert letter["source_topic"] == app.topics.step("wf", "a")
    assert letter["source_offset"] is not None  # where the whole record still is
    assert len(letters[0].value) <= LIMIT


@ON_KAFKA
async def test_an_oversized_result_fails_its_step_with_a_clear_error(make_mgmt: MakeMgmt) -> None:
    app = make_mgmt()
    app.define_workflow("wf", ["big", "after"])

    @app.on_step("wf.big")
    async def big(ctx: hms_bus.StepContext) -> Any:
        return {"blob": "x" * (2 * LIMIT)}

    @app.on_step("wf.after")
    async def after(ctx: hms_bus.StepContext) -> Any:
        raise AssertionError("runs only after a step that succeeded")

    async with app:
        final = await app.run("wf", {}, timeout=30)
    assert final.status == "failed"
    assert f"over the bus limit of {LIMIT}" in (final.error or "")
