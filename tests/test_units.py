"""Pure logic: retry delays, return forms, offsets, projection, topic names, settings."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from pydantic import BaseModel

import hms_bus
from hms_bus._backends import redact
from hms_bus._codec import decode_event, encode
from hms_bus._durations import seconds_of
from hms_bus._events import (
    ErrorInfo,
    RetryScheduled,
    SlaBreached,
    StepCompleted,
    StepScheduled,
    StepStarted,
    WorkflowCancelled,
    WorkflowCompleted,
    WorkflowFailed,
    WorkflowStarted,
)
from hms_bus._offsets import OffsetTracker
from hms_bus._projection import WorkflowRow, apply_event
from hms_bus._results import Directive, normalize_result
from hms_bus._settings import ALL_ROLES
from hms_bus._topics import Topics

# -- RetryPolicy ------------------------------------------------------------------------------


def test_retry_delays_grow_exponentially_up_to_the_cap() -> None:
    policy = hms_bus.RetryPolicy(initial_delay=1.0, multiplier=2.0, max_delay=5.0, jitter=0)
    assert [policy.delay(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert [policy.base_delay(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert policy.base_delay(10_000) == 5.0  # no overflow for absurd attempt numbers
    flat = hms_bus.RetryPolicy(initial_delay=0.5, multiplier=1.0, jitter=0)
    assert [flat.delay(n) for n in (1, 2, 3)] == [0.5, 0.5, 0.5]


@pytest.mark.parametrize("jitter", [0.1, 0.5, 1.0])
def test_jitter_stays_within_its_window_and_spreads_over_it(jitter: float) -> None:
    policy = hms_bus.RetryPolicy(initial_delay=1.0, multiplier=3.0, max_delay=100.0, jitter=jitter)
    rng = random.Random(1234)
    for attempt in (1, 2, 3):
        base = policy.base_delay(attempt)
        low = (1 - jitter) * base
        samples = [policy.delay(attempt, rng) for _ in range(2000)]
        assert all(low <= s <= base for s in samples)
        width = base - low
        assert min(samples) < low + 0.05 * width  # really random over the window,
        assert max(samples) > base - 0.05 * width  # not a constant
    assert all(0.0 <= policy.delay(1) <= 1.0 for _ in range(100))  # the global rng too


def test_attempts_allowed() -> None:
    policy = hms_bus.RetryPolicy(max_attempts=3)
    assert [policy.allows_another(n) for n in (1, 2, 3, 4)] == [True, True, False, False]
    assert hms_bus.RetryPolicy(max_attempts=1).allows_another(1) is False


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"initial_delay": -1}, "initial_delay"),
        ({"max_delay": -1}, "max_delay"),
        ({"multiplier": 0.5}, "multiplier"),
        ({"jitter": 1.5}, "jitter"),
        ({"jitter": -0.1}, "jitter"),
    ],
)
def test_bad_retry_policy_is_a_config_error(kwargs: dict[str, Any], named: str) -> None:
    with pytest.raises(hms_bus.ConfigError, match=named):
        hms_bus.RetryPolicy(**kwargs)


# -- normalize_result -------------------------------------------------------------------------


class Decision(BaseModel):
    approved: bool
    score: int = 0


PAYLOAD = {"applicationId": "GR-2023-55"}


def D(kind: Any, data: Any, **rest: Any) -> Directive:
    return Directive(kind=kind, data=data, **rest)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(None, D("default", PAYLOAD), id="none"),
        pytest.param({"a": 1}, D("default", {"a": 1}), id="dict"),
        pytest.param(
            Decision(approved=True),
            D("default", {"approved": True, "score": 0}),
            id="model",
        ),
        pytest.param(
            {"d": Decision(approved=False, score=3)},
            D("default", {"d": {"approved": False, "score": 3}}),
            id="nested-model",
        ),
        pytest.param([1, "x"], D("default", [1, "x"]), id="list"),
        pytest.param("ok", D("default", "ok"), id="str"),
        pytest.param(0, D("default", 0), id="zero"),
        pytest.param(False, D("default", False), id="false"),
        pytest.param(hms_bus.Next("b", {"x": 1}), D("next", {"x": 1}, step="b"), id="next-data"),
        pytest.param(hms_bus.Next("b"), D("next", PAYLOAD, step="b"), id="next-no-data"),
        pytest.param(
            hms_bus.Next("b", Decision(approved=True)),
            D("next", {"approved": True, "score": 0}, step="b"),
            id="next-model",
        ),
        pytest.param(
            hms_bus.Next("b", delay=timedelta(minutes=2)),
            D("next", PAYLOAD, step="b", delay=120.0),
            id="next-timedelta",
        ),
        pytest.param(
            hms_bus.Next("b", delay=3),
            D("next", PAYLOAD, step="b", delay=3.0),
            id="next-secs",
        ),
        pytest.param({"nextStep": "b", "data": {"y": 2}}, D("next", {"y": 2}, step="b"), id="seed"),
        pytest.param({"next_step": "b"}, D("next", PAYLOAD, step="b"), id="seed-snake"),
        pytest.param(
            {"nextStep": "b", "delay": 5},
            D("next", PAYLOAD, step="b", delay=5.0),
            id="seed-delay",
        ),
        pytest.param({"nextStep": None, "data": 7}, D("complete", 7), id="seed-end"),
        pytest.param(
            {"nextStep": "b", "reviewer": "Jane"},
            D("default", {"nextStep": "b", "reviewer": "Jane"}),
            id="next-step-among-other-keys-is-data",
        ),
        pytest.param(hms_bus.Complete({"r": 1}), D("complete", {"r": 1}), id="complete"),
        pytest.param(hms_bus.Complete(), D("complete", None), id="complete-empty"),
        pytest.param(
            hms_bus.Complete(Decision(approved=True)),
            D("complete", {"approved": True, "score": 0}),
            id="complete-model",
        ),
    ],
)
def test_every_return_form_normalizes(value: Any, expected: Directive) -> None:
    directive = normalize_result(value, PAYLOAD)
    assert directive == expected
    orjson.dumps(directive.data)  # always JSON-ready


@pytest.mark.parametrize(
    ("value", "error", "named"),
    [
        (hms_bus.Next(""), hms_bus.ConfigError, "step name"),
        (hms_bus.Next("b", delay=-1), hms_bus.ConfigError, "negative"),
        (hms_bus.Next("b", delay="soon"), hms_bus.ConfigError, "soon"),
        (hms_bus.Next("b", delay=True), hms_bus.ConfigError, "True"),
        ({"nextStep": 3}, hms_bus.ConfigError, "3"),
        (object(), hms_bus.SerializationError, "object"),
        ({1, 2}, hms_bus.SerializationError, "set"),
    ],
)
def test_malformed_return_values_are_refused(
    value: Any, error: type[Exception], named: str
) -> None:
    with pytest.raises(error, match=named):
        normalize_result(value, PAYLOAD)


# -- OffsetTracker ----------------------------------------------------------------------------


def test_offsets_commit_only_past_the_finished_prefix() -> None:
    tp = ("t", 0)
    tracker = OffsetTracker()
    for offset in range(10, 15):
        tracker.add(tp, offset)
    assert tracker.in_flight() == 5
    tracker.done(tp, 12)
    assert tracker.take_committable() == {}
    tracker.done(tp, 10)
    assert tracker.take_committable() == {tp: 11}
    assert tracker.take_committable() == {}  # each offset is handed out once
    tracker.done(tp, 11)
    assert tracker.in_flight() == 2
    assert tracker.take_committable() == {tp: 13}
    tracker.done(tp, 99)  # unknown offsets change nothing
    tracker.done(("other", 0), 10)
    tracker.done(tp, 14)
    assert tracker.take_committable() == {}
    tracker.done(tp, 13)
    assert tracker.take_committable() == {tp: 15}
    assert tracker.in_flight() == 0


def test_offsets_are_kept_per_partition() -> None:
    a, b = ("t", 0), ("t", 1)
    tracker = OffsetTracker()
    for tp in (a, b):
        tracker.add(tp, 0)
        tracker.add(tp, 1)
    tracker.done(a, 0)
    tracker.done(b, 0)
    tracker.done(b, 1)
    assert tracker.in_flight({a}) == 1
    assert tracker.in_flight({b}) == 0
    assert tracker.take_committable({b}) == {b: 2}
    assert tracker.take_committable({b}) == {}
    tracker.forget({a})
    assert tracker.in_flight() == 0
    assert tracker.take_committable() == {}


# -- projection -------------------------------------------------------------------------------

T0 = datetime(2024, 1, 1, tzinfo=UTC)
WF = {"workflow_id": "w1", "workflow": "wf"}


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def completed(attempt: int, outcome: str, ts: float, **kw: Any) -> StepCompleted:
    return StepCompleted(
        **WF,
        step="a",
        seq=1,
        attempt=attempt,
        outcome=outcome,
        started_at=at(ts - 0.5),
        finished_at=at(ts),
        ts=at(ts),
        **kw,
    )


def new_row() -> WorkflowRow:
    return WorkflowRow(workflow_id="w1", workflow="wf", created_at=T0, updated_at=T0)


def test_a_late_step_event_never_moves_a_step_backwards() -> None:
    row = new_row()
    assert apply_event(row, StepScheduled(**WF, step="a", seq=1, ts=at(1)))
    assert apply_event(row, completed(1, "succeeded", 3))
    assert not apply_event(row, StepStarted(**WF, step="a", seq=1, attempt=1, ts=at(2)))
    assert not apply_event(row, StepScheduled(**WF, step="a", seq=1, ts=at(1.5)))
    assert not apply_event(row, completed(1, "succeeded", 3))  # duplicate
    step = row.freeze().steps[0]
    assert (step.status, step.attempts) == ("succeeded", 1)
    assert step.started_at == at(2.5)
    assert step.finished_at == at(3)
    assert row.updated_at == at(3)


def test_a_retry_supersedes_the_failed_attempt_and_not_the_reverse() -> None:
    row = new_row()
    error = ErrorInfo(message="boom", type="RuntimeError")
    apply_event(row, StepStarted(**WF, step="a", seq=1, attempt=1, ts=at(1)))
    apply_event(row, completed(1, "failed", 2, error=error))
    assert row.freeze().steps[0].status == "failed"
    assert apply_event(
        row, RetryScheduled(**WF, step="a", seq=1, attempt=2, due_at=at(5), error=error, ts=at(2))
    )
    step = row.freeze().steps[0]
    assert (step.status, step.attempts, step.due_at, step.error) == ("pending", 2, at(5), "boom")
    assert not apply_event(row, completed(1, "failed", 2.1, error=error))  # late duplicate
    assert not apply_event(row, StepStarted(**WF, step="a", seq=1, attempt=1, ts=at(1.1)))
    assert apply_event(row, StepStarted(**WF, step="a", seq=1, attempt=2, ts=at(5)))
    assert apply_event(row, completed(2, "succeeded", 6))
    step = row.freeze().steps[0]
    assert (step.status, step.attempts, step.error, step.due_at) == ("succeeded", 2, None, None)


def test_a_terminal_workflow_status_is_final() -> None:
    row = new_row()
    assert apply_event(row, WorkflowStarted(**WF, payload={"p": 1}, ts=at(0)))
    assert not apply_event(row, WorkflowStarted(**WF, payload={"p": 2}, ts=at(0.1)))
    assert row.payload == {"p": 1}
    assert apply_event(row, WorkflowCompleted(**WF, result={"r": 1}, ts=at(5)))
    error = ErrorInfo(message="late", type="X", step="a")
    assert not apply_event(row, WorkflowFailed(**WF, error=error, ts=at(6)))
    assert not apply_event(row, WorkflowCancelled(**WF, reason="late", ts=at(7)))
    assert not apply_event(row, WorkflowCompleted(**WF, result={"r": 2}, ts=at(8)))
    status = row.freeze()
    assert (status.status, status.result, status.error) == ("completed", {"r": 1}, None)
    assert status.finished_at == at(5)
    assert status.updated_at == at(5)


def test_a_failed_workflow_names_the_step_and_sla_flags_are_set_once() -> None:
    row = new_row()
    apply_event(row, StepStarted(**WF, step="a", seq=1, attempt=1, ts=at(1)))
    assert apply_event(row, SlaBreached(**WF, step="a", seq=1, sla=0.5, elapsed=0.7, ts=at(2)))
    assert not apply_event(row, SlaBreached(**WF, step="a", seq=1, sla=0.5, elapsed=0.8, ts=at(2)))
    assert apply_event(row, SlaBreached(**WF, sla=1.0, elapsed=1.1, ts=at(2)))
    assert not apply_event(row, SlaBreached(**WF, sla=1.0, elapsed=1.2, ts=at(2)))
    error = ErrorInfo(message="boom", type="Fail", step="a")
    assert apply_event(row, WorkflowFailed(**WF, error=error, ts=at(3)))
    status = row.freeze()
    assert status.status == "failed"
    assert status.error == "step 'a': boom"
    assert status.sla_breached is True
    assert status.steps[0].sla_breached is True


def test_updated_at_never_goes_back() -> None:
    row = new_row()
    apply_event(row, StepStarted(**WF, step="a", seq=1, attempt=1, ts=at(5)))
    apply_event(row, StepScheduled(**WF, step="b", seq=2, ts=at(3)))  # out of order
    assert row.updated_at == at(5)


def test_events_round_trip_and_newer_versions_are_refused() -> None:
    event = WorkflowStarted(**WF, payload={"p": [1, 2]})
    assert decode_event(encode(event)) == event
    newer = orjson.loads(encode(event)) | {"v": 99}
    with pytest.raises(hms_bus.SerializationError, match="99"):
        decode_event(orjson.dumps(newer))
    with pytest.raises(hms_bus.SerializationError, match="JSON"):
        decode_event(b"not json")


# -- Topics -----------------------------------------------------------------------------------


def test_topic_and_group_names() -> None:
    plain = Topics()
    assert (plain.events, plain.dead_letter, plain.heartbeats) == (
        "hms.events",
        "hms.dead-letter",
        "hms.heartbeats",
    )
    assert plain.step("grantApproval", "validateApp") == "grantApproval.validateApp"
    assert plain.group("worker") == "hms.worker"
    ns = Topics("staging")
    assert (ns.events, ns.dead_letter, ns.heartbeats) == (
        "staging.hms.events",
        "staging.hms.dead-letter",
        "staging.hms.heartbeats",
    )
    assert ns.step("grantApproval", "validateApp") == "staging.grantApproval.validateApp"
    assert ns.group("coordinator") == "staging.hms.coordinator"


def test_management_topics_follow_the_namespace() -> None:
    mgmt = hms_bus.init("t", namespace="team-a")
    assert mgmt.topics.events == "team-a.hms.events"
    mgmt.configure(namespace="team-b")
    assert mgmt.topics.step("wf", "a") == "team-b.wf.a"
    with pytest.raises(hms_bus.ConfigError, match="namespace"):
        hms_bus.init("t", namespace="bad name")


# -- settings ---------------------------------------------------------------------------------


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HMS_BUS_URL", "memory://from-env")
    monkeypatch.setenv("HMS_STORE_URL", "memory://store-env")
    monkeypatch.setenv("HMS_NAMESPACE", "envns")
    monkeypatch.setenv("HMS_WORKER__CONCURRENCY", "7")
    monkeypatch.setenv("HMS_WORKER__STEPS", "wf.a, wf.b")
    monkeypatch.setenv("HMS_ROLES", "worker,coordinator")
    s = hms_bus.init("t").settings
    assert s.bus_url == "memory://from-env"
    assert s.store_url == "memory://store-env"
    assert s.namespace == "envns"
    assert s.worker.concurrency == 7
    assert s.worker.steps == ("wf.a", "wf.b")
    assert s.roles == ("worker", "coordinator")
    # keywords win over the environment
    s = hms_bus.init("t", bus="memory://kw", namespace="kwns", roles=("projector",)).settings
    assert (s.bus_url, s.namespace, s.roles) == ("memory://kw", "kwns", ("projector",))
    assert hms_bus.init("t", worker={"shutdown_grace": 1}).settings.worker.concurrency == 7


def test_defaults_without_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HMS_BUS_URL", "HMS_STORE_URL", "HMS_NAMESPACE", "HMS_ROLES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("HMS_WORKER__CONCURRENCY", raising=False)
    s = hms_bus.init().settings
    assert (s.bus_url, s.store_url, s.namespace) == ("memory://", "memory://", "")
    assert s.roles == ALL_ROLES
    assert s.worker.concurrency == 64


@pytest.mark.parametrize(
    ("value", "roles"),
    [("all", ALL_ROLES), ("worker,all", ALL_ROLES), ("monitor", ("monitor",)), ("", ())],
)
def test_roles_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, value: str, roles: tuple[str, ...]
) -> None:
    monkeypatch.setenv("HMS_ROLES", value)
    assert hms_bus.init("t").settings.roles == roles


def test_bad_environment_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HMS_ROLES", "worker,chef")
    with pytest.raises(hms_bus.ConfigError, match="chef"):
        hms_bus.init("t")
    monkeypatch.delenv("HMS_ROLES")
    monkeypatch.setenv("HMS_WORKER__CONCURRENCY", "many")
    with pytest.raises(hms_bus.ConfigError, match="concurrency"):
        hms_bus.init("t")
    monkeypatch.delenv("HMS_WORKER__CONCURRENCY")
    monkeypatch.setenv("HMS_BUS_URL", "amqp://rabbit")
    with pytest.raises(hms_bus.ConfigError, match="memory://, kafka://"):
        hms_bus.init("t")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("amqp://user:s3cret@host:5672/vh", "amqp://user:***@host:5672/vh"),
        ("memory://", "memory://"),
        ("kafka://a:9092,b:9092", "kafka://a:9092,b:9092"),
    ],
)
def test_urls_in_messages_never_show_passwords(url: str, shown: str) -> None:
    assert redact(url) == shown


def test_unknown_store_scheme_names_the_known_ones_without_the_password() -> None:
    with pytest.raises(hms_bus.ConfigError) as exc:
        hms_bus.init(store="mysql://root:pw@db/x")
    assert str(exc.value) == (
        "unknown store URL 'mysql://root:***@db/x': the scheme must be one of "
        "memory://, postgresql://, postgres://"
    )


def test_json_lines_split_and_pack_in_order_under_the_limit() -> None:
    from hms_bus._codec import is_legacy, pack_lines, split_lines

    lines = [b'{"a":1}', b'{"b":' + b"2" * 50 + b"}", b'{"c":3}']
    assert pack_lines(lines, 1000) == [b"\n".join(lines) + b"\n"]
    packed = pack_lines(lines, 60)
    assert [line for r in packed for line in split_lines(r)] == lines
    assert all(len(r) <= 60 or len(split_lines(r)) == 1 for r in packed)
    assert len(packed) == 3
    assert split_lines(b'{"legacy":true}') == [b'{"legacy":true}']
    assert is_legacy(b'{"legacy":true}') and not is_legacy(b'{"a":1}\n')
    assert split_lines(b"\n") == []


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("45s", 45.0), ("90m", 5400.0), ("1.5h", 5400.0), ("30d", 2592000.0), ("0m", 0.0)],
)
def test_a_duration_is_a_number_then_a_unit(text: str, seconds: float) -> None:
    assert seconds_of(text) == seconds


@pytest.mark.parametrize("text", ["", "d", "30", "30w", "-5m", "1..2m", "m30", "1e3s"])
def test_anything_else_is_not_a_duration(text: str) -> None:
    assert seconds_of(text) is None
