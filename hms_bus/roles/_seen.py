"""What the monitor reads of each history event: :class:`Seen`, a small typed view built
by :func:`seen` from the fields the monitor acts on."""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple

import orjson

from .._envelope import ENVELOPE_VERSION

__all__ = ["ENDED", "Seen", "seen"]

# What the monitor reads of the history; the rest is not acted on.
_WATCHED = frozenset(
    {
        "workflowStarted",
        "stepScheduled",
        "stepStarted",
        "completeStep",
        "workflowCompleted",
        "workflowFailed",
        "workflowCancelled",
    }
)
_STEP_EVENTS = frozenset({"stepScheduled", "stepStarted", "completeStep"})
ENDED = frozenset({"workflowCompleted", "workflowFailed", "workflowCancelled"})


class Seen(NamedTuple):
    """What the monitor needs of a history event: the envelope and the step facts of
    :class:`~hms_bus._events.StepScheduled`, ``StepStarted``, ``StepCompleted`` and the
    workflow events. The monitor reads every event of the history; validating the whole
    event model (payloads, results, directives) for each would cost it about as much
    again as the projector, so :func:`seen` reads these fields alone, checking each.
    A named tuple: the monitor makes one per history event, and a tuple is made in a
    fraction of the time of a frozen dataclass."""

    type: str
    workflow_id: str
    workflow: str
    at: float
    """The event's ``ts``, in seconds since the epoch."""
    step: str | None = None
    seq: int = -1
    attempt: int = 1
    worker: str | None = None
    outcome: str | None = None


def _opt(value: object, kind: type) -> Any:
    if value is None or isinstance(value, kind):
        return value
    raise TypeError(f"expected {kind.__name__}, got {type(value).__name__}")


def seen(line: bytes) -> Seen | None:
    """The monitor's view of one history line; None for a type it does not act on, a
    newer envelope version, or a line that is not a valid event (the projector
    dead-letters those)."""
    try:
        obj = orjson.loads(line)
        kind = obj["type"]
        if kind not in _WATCHED or obj.get("v", 1) > ENVELOPE_VERSION:
            return None
        seq = obj.get("seq")
        if kind in _STEP_EVENTS and (not isinstance(seq, int) or isinstance(seq, bool)):
            return None
        wid, workflow, ts = obj["workflow_id"], obj["workflow"], obj["ts"]
        if not (isinstance(wid, str) and isinstance(workflow, str) and isinstance(ts, str)):
            return None
        attempt = obj.get("attempt", 1)
        return Seen(
            kind,
            wid,
            workflow,
            datetime.fromisoformat(ts).timestamp(),
            _opt(obj.get("step"), str),
            seq if isinstance(seq, int) else -1,
            attempt if isinstance(attempt, int) else 1,
            _opt(obj.get("worker"), str),
            _opt(obj.get("outcome"), str),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return None
