"""What the processes say about themselves and about what they could not process.

Not workflow history (that is :mod:`hms_bus._events`), but the operational topics
(see :mod:`hms_bus._topics`), encoded by :mod:`hms_bus._codec`:

- ``hms.heartbeats``: :class:`Heartbeat` (every process that runs a role) and
  :class:`ProcessDown` (the monitor).
- ``hms.dead-letter``: :class:`DeadLetter` — what could not be processed, and why.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from ._envelope import Envelope
from ._events import ErrorInfo

__all__ = ["DeadLetter", "Heartbeat", "ProcessDown", "ProcessFacts"]


class ProcessFacts(BaseModel):
    """What a process says of itself in its heartbeats.

    ``steps`` are the ``workflow.step`` names its worker serves, ``in_flight`` the
    handlers running now, ``steps_done`` the attempts it has finished since it started,
    and ``lag`` the records each of its roles has not fetched yet.
    """

    process_id: str
    service: str
    roles: list[str]
    host: str
    pid: int
    steps: list[str] = Field(default_factory=list)
    in_flight: int = 0
    steps_done: int = 0
    lag: dict[str, int] = Field(default_factory=dict)


class Heartbeat(Envelope, ProcessFacts):
    """A process is alive: what it runs, how busy it is. Sent every ``interval`` seconds."""

    type: Literal["heartbeat"] = "heartbeat"
    interval: float
    stopping: bool = False


class ProcessDown(Envelope):
    """The monitor stopped hearing from a process."""

    type: Literal["processDown"] = "processDown"
    process_id: str
    service: str
    last_seen: datetime


class DeadLetter(Envelope):
    """What could not be processed, with the reason, on ``hms.dead-letter``.

    ``original`` holds the message as parsed JSON, or as text when it was not JSON.
    """

    type: Literal["deadLetter"] = "deadLetter"
    reason: str
    source_topic: str
    source_partition: int | None = None
    source_offset: int | None = None
    workflow_id: str | None = None
    workflow: str | None = None
    step: str | None = None
    error: ErrorInfo | None = None
    original: Any = None
