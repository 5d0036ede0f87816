"""Poison input on the bus goes to the dead-letter topic with its reason; the consumer
carries on and nothing else is lost (on every backend)."""

from __future__ import annotations

from typing import Any

import orjson
from conftest import MakeMgmt, publish, read_topic

import hms_bus


def _app(mgmt: hms_bus.Management, done: list[str]) -> None:
    mgmt.define_workflow("wf", ["a", "b"])

    @mgmt.on_step("wf.a")
    async def a(ctx: hms_bus.StepContext) -> Any:
        return ctx.payload

    @mgmt.on_step("wf.b")
    async def b(ctx: hms_bus.StepContext) -> Any:
        done.append(ctx.workflow_id)
        return ctx.payload


def _command(**fields: Any) -> bytes:
    base = {"v": 1, "type": "runStep", "event_id": "e1", "ts": "2026-01-01T00:00:00Z"}
    return orjson.dumps({**base, **fields})


async def test_poison_on_a_step_topic_is_dead_lettered_and_work_goes_on(
    make_mgmt: MakeMgmt,
) -> None:
    done: list[str] = []
    mgmt = make_mgmt()
    _app(mgmt, done)
    async with mgmt:
        before = await mgmt.start("wf", {"n": 1})
        topic = mgmt.topics.step("wf", "a")
        poison = [
            (b"\xff\xfe not json at all", b"k1"),
            (_command(workflow_id="w-bad"), b"w-bad"),  # misses workflow, step, seq
            (_command(workflow_id="w-x", workflow="nope", step="a", seq=1), b"w-x"),
            (_command(workflow_id="w-y", workflow="wf", step="zzz", seq=1), b"w-y"),
        ]
        for value, key in poison:
            await publish(mgmt, topic, value, key)
        after = await mgmt.start("wf", {"n": 2})
        finals = [await before.wait(timeout=20), await after.wait(timeout=20)]
        letters = [orjson.loads(r.value) for r in await read_topic(mgmt, mgmt.topics.dead_letter)]

    assert [f.status for f in finals] == ["completed", "completed"]
    assert sorted(done) == sorted([before.workflow_id, after.workflow_id])
    assert len(letters) == 4
    by_reason = sorted(letters, key=lambda letter: letter["source_offset"] or 0)
    assert all(letter["type"] == "deadLetter" for letter in letters)
    assert all(letter["source_topic"] == topic for letter in letters)
    reasons = " | ".join(letter["reason"] for letter in by_reason)
    assert "undecodable command" in reasons
    assert "unknown step nope.a" in reasons
    assert "unknown step wf.zzz" in reasons
    # The original travels with the reason: as JSON when it parses, else as text.
    originals = [letter["original"] for letter in letters]
    assert any(isinstance(o, str) and "not json at all" in o for o in originals)
    assert {"workflow_id": "w-x", "workflow": "nope"}.items() <= next(
        o for o in originals if isinstance(o, dict) and o.get("workflow_id") == "w-x"
    ).items()


async def test_poison_on_the_events_topic_is_dead_lettered_once_unknown_types_skipped(
    make_mgmt: MakeMgmt,
) -> None:
    done: list[str] = []
    mgmt = make_mgmt()
    _app(mgmt, done)
    async with mgmt:
        await publish(mgmt, mgmt.topics.events, b"{broken", b"w-1")
        await publish(mgmt, mgmt.topics.events, orjson.dumps({"type": "noSuchEvent"}), b"w-2")
        final = await mgmt.run("wf", {"n": 3}, timeout=20)
        letters = [orjson.loads(r.value) for r in await read_topic(mgmt, mgmt.topics.dead_letter)]

    assert final.status == "completed"
    # The projector owns the history and letters what does not parse there; the
    # monitor, reading the same topic, skips it. An event type this version does not
    # know is skipped, not lettered, so a newer producer does not fill the dead letters
    # of older consumers.
    assert len(letters) == 1
    assert letters[0]["source_topic"] == mgmt.topics.events
    assert "undecodable event" in letters[0]["reason"]
    assert letters[0]["original"] == "{broken"


async def test_poison_on_the_coordinator_topic_is_dead_lettered_and_work_goes_on(
    make_mgmt: MakeMgmt,
) -> None:
    done: list[str] = []
    mgmt = make_mgmt()
    _app(mgmt, done)
    wrong_types = orjson.dumps(
        {
            "v": 1,
            "type": "completeStep",
            "event_id": "e9",
            "ts": "2026-01-01T00:00:00Z",
            "workflow_id": "w-3",
            "workflow": "wf",
            "step": "a",
            "seq": "first",
        }
    )
    async with mgmt:
        topic = mgmt.topics.coordinator
        await publish(mgmt, topic, b"{broken\n", b"w-1")
        await publish(mgmt, topic, orjson.dumps({"type": "noSuchEvent"}) + b"\n", b"w-2")
        await publish(mgmt, topic, wrong_types + b"\n", b"w-3")
        final = await mgmt.run("wf", {"n": 4}, timeout=20)
        letters = [orjson.loads(r.value) for r in await read_topic(mgmt, mgmt.topics.dead_letter)]

    assert final.status == "completed"
    assert sorted(letter["source_topic"] for letter in letters) == [topic, topic]
    assert all("undecodable event" in letter["reason"] for letter in letters)
    assert any("seq" in letter["reason"] for letter in letters)
