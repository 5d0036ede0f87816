"""How an outage reads in the log: pure logic, on an injected clock."""

from __future__ import annotations

import logging

import pytest

from hms_bus._errors import StoreError
from hms_bus._outage import Outage, Repeats


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_outage_is_logged_when_it_starts_once_a_minute_and_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    outage = Outage("store: ping", logging.getLogger("test.outage"), clock=clock)
    caplog.set_level(logging.INFO, "test.outage")
    down = StoreError("ping: ConnectionRefusedError", retriable=True)
    for _ in range(600):  # ten attempts a second for a minute
        outage.failed(down, retry_in=0.1)
        clock.now += 0.1
    clock.now = 1060.0
    outage.failed(down)
    assert outage.attempts == 601 and outage.lasted == pytest.approx(60.0)
    outage.ok()
    outage.ok()  # no outage any more: nothing to say
    said = [r.getMessage() for r in caplog.records]
    assert said == [
        "store: ping failed (StoreError: ping: ConnectionRefusedError); retrying in 0.1s",
        "store: ping still failing after 60s and 601 attempts "
        "(StoreError: ping: ConnectionRefusedError)",
        "store: ping succeeded again after 60.0s and 601 failed attempts",
    ]
    assert caplog.records[0].exc_info is None  # an expected outage: no traceback
    assert outage.attempts == 0 and outage.error.startswith("StoreError")


def test_an_unexpected_error_starts_its_outage_with_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outage = Outage("projector", logging.getLogger("test.outage"), clock=Clock())
    caplog.set_level(logging.INFO, "test.outage")
    try:
        raise KeyError("bug")
    except KeyError as exc:
        outage.failed(exc)
    (record,) = caplog.records
    assert record.levelno == logging.ERROR and record.exc_info is not None


def test_a_library_warning_repeated_is_let_through_once_a_minute_with_a_count() -> None:
    clock = Clock()
    repeats = Repeats(clock=clock)

    def record(msg: str, *args: object, level: int = logging.ERROR) -> logging.LogRecord:
        return logging.LogRecord("aiokafka", level, __file__, 1, msg, args, None)

    first = record("Unable connect to node with id %s: %s", 1, "refused")
    assert repeats.filter(first)
    held = [
        repeats.filter(record("Unable connect to node with id %s: %s", 1, f"try {i}"))
        for i in range(99)
    ]
    assert not any(held)
    assert repeats.filter(record("Unable to update metadata from %s", [1]))  # another line
    assert repeats.filter(record("joined group %s", "g", level=logging.INFO))  # not a warning
    clock.now += 60
    again = record("Unable connect to node with id %s: %s", 1, "refused")
    assert repeats.filter(again)
    assert again.getMessage() == (
        "Unable connect to node with id 1: refused (and 99 more like it in the last 60s)"
    )
