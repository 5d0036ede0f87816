"""Dead letters, for people: read ``hms.dead-letter``, and redrive what it holds.

What fails for good goes to the dead-letter topic with its reason (see
:class:`~hms_bus._process_messages.DeadLetter`). Once the cause is fixed, an operator
sends it back (``hms-bus dead-letters redrive``, or the console): the letter of a
workflow that failed redrives that workflow (:meth:`~hms_bus.Management.redrive`, from
the step the letter names); any other letter (a record no role could read: truncated,
of an unknown step) is published again, as it was, to the topic it came from.

A letter's id is ``<partition>:<offset>`` on the dead-letter topic.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from ._errors import ConfigError, HmsBusError
from ._management import Management
from ._process_messages import DeadLetter
from ._status import WorkflowState
from .transport import Outgoing, Record

__all__ = ["Letter", "letters", "redrive_letter"]


@dataclass(frozen=True, slots=True)
class Letter:
    """One dead letter, where it sits on the topic.

    Attributes:
        id: ``<partition>:<offset>``.
        letter: the letter itself (its ``original`` holds sealed values only).
    """

    id: str
    letter: DeadLetter

    def summary(self) -> dict[str, Any]:
        """The letter as JSON-ready data, with its id."""
        return {"id": self.id, **self.letter.model_dump(mode="json")}


async def letters(
    mgmt: Management,
    *,
    reason: str | None = None,
    since: datetime | None = None,
    ids: frozenset[str] = frozenset(),
    idle: float = 1.0,
    most: float = 30.0,
) -> list[Letter]:
    """Every dead letter of ``mgmt``'s namespace, oldest first, filtered.

    Read with a consumer group of its own (which commits nothing) until nothing more
    arrives for ``idle`` seconds, or ``most`` seconds have passed.

    Args:
        reason: only letters whose reason contains this text (case-insensitive).
        since: only letters written at or after this time.
        ids: only these letters (``<partition>:<offset>``).
    """
    transport = mgmt._require()
    topic = mgmt.topics.dead_letter
    group = mgmt.topics.group(f"dead-letter-reader-{uuid.uuid4().hex[:8]}")
    found: list[Record] = []
    deadline = time.monotonic() + most
    async with transport.consumer(group, [topic]) as consumer:
        while time.monotonic() < deadline:
            batch = await consumer.fetch(max_records=1000, timeout=idle)
            if not batch:
                break
            found.extend(batch)
    out: list[Letter] = []
    needle = reason.lower() if reason else None
    for record in sorted(found, key=lambda r: (r.timestamp, r.partition, r.offset)):
        lid = f"{record.partition}:{record.offset}"
        if ids and lid not in ids:
            continue
        try:
            letter = DeadLetter.model_validate(orjson.loads(record.value))
        except (orjson.JSONDecodeError, ValueError):
            continue  # not a letter hms-bus wrote
        if needle and needle not in letter.reason.lower():
            continue
        if since is not None and letter.ts < since:
            continue
        out.append(Letter(lid, letter))
    return out


async def redrive_letter(mgmt: Management, item: Letter) -> tuple[bool, str]:
    """Send one letter back (see module docs): (done, what happened)."""
    letter = item.letter
    wid = letter.workflow_id
    if wid:
        status = await mgmt.status(wid)
        if status is not None and status.status in (
            WorkflowState.FAILED,
            WorkflowState.CANCELLED,
        ):
            wf = mgmt.workflows.get(status.workflow)
            step = letter.step if wf is not None and letter.step in wf.steps else None
            try:
                await mgmt.redrive(wid, from_step=step)
            except ConfigError as exc:
                return False, f"workflow {wid} not redriven: {exc}"
            return True, f"workflow {wid} redriven" + (f" from step {step!r}" if step else "")
        if status is not None and letter.error is not None:
            # The letter of a workflow that failed and has been redriven since.
            return False, f"workflow {wid} is {status.status.value}: nothing to redrive"
    if not letter.source_topic or letter.original is None:
        return False, "the letter holds no record to publish again"
    if isinstance(letter.original, str):
        value = letter.original.encode()
    else:
        value = orjson.dumps(letter.original)
    if letter.source_topic == mgmt.topics.coordinator and not value.endswith(b"\n"):
        value += b"\n"  # the coordinator's input is JSON Lines
    key = wid.encode() if wid else None
    try:
        await mgmt._require().publish([Outgoing(letter.source_topic, value, key=key)])
    except HmsBusError as exc:
        return False, f"not published again: {exc}"
    return True, f"published again to {letter.source_topic}"
