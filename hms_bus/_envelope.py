"""The envelope every message on the bus shares: its version, id and timestamp.

Workflow events (:mod:`hms_bus._events`) and the processes' own messages
(:mod:`hms_bus._process_messages`) are pydantic models built on :class:`Envelope`, so
each carries ``v`` (the envelope version; readers accept what they know, see
:mod:`hms_bus._codec`), a unique ``event_id`` and a UTC timestamp ``ts``.
"""

from __future__ import annotations

import itertools
import os
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ENVELOPE_VERSION", "Envelope", "new_id", "utcnow"]

ENVELOPE_VERSION = 1


_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count(int.from_bytes(os.urandom(4)))


def new_id() -> str:
    """A fresh unique event id: 32 hex characters (the shape of ``uuid4().hex``).

    64 random bits drawn once per process, then a 64-bit counter: unique across
    processes without a system call per id (ids are made several times per step).
    """
    return f"{_ID_PREFIX}{next(_ID_COUNTER) & 0xFFFFFFFFFFFFFFFF:016x}"


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class Envelope(BaseModel):
    """The fields of every message: ``v``, ``event_id`` and ``ts``, filled in when not
    given. Frozen; unknown fields from newer writers are ignored, so readers keep
    working."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    v: int = ENVELOPE_VERSION
    event_id: str = Field(default_factory=new_id)
    ts: datetime = Field(default_factory=utcnow)
