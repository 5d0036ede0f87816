"""The coordinator: decides every workflow transition, once.

It consumes ``hms.coordinator``, its own input topic: ``workflowStarted`` from clients,
``completeStep`` from workers and ``cancelRequested``. For a start it schedules the
first step; for a ``completeStep`` the next step (now, or as a durable timer when a
delay was asked for), a retry with backoff, the error path, or the end of the
workflow; for ``cancelRequested`` it cancels. Each decision is a
:class:`~hms_bus.store.TransitionClaim` keyed by (workflow_id, step, seq, attempt):
the store records it once, so a redelivered or duplicated event never advances a
workflow twice, and a workflow that has ended refuses every later transition.

For every input record it writes one history record to ``hms.events``: the input's
events as it received them (bytes unchanged), followed by the events of what it
decided (``stepScheduled``, ``retryScheduled``, ``workflowCompleted``…). The history
is thus complete, in order, without the coordinator reading it back: one record per
step where the earlier event flow wrote three and read them all.

Order of effects per batch (at least once, nothing lost): claim in the store (timers
are stored with the claim) → publish the history records and commands → commit the
offsets; marking the claims published runs beside the next batch. A crash between any
two steps repeats the later ones only: a redelivered input finds its claim and
publishes what was recorded, never a new decision, and a repeated history record is
harmless (the projector keeps each event once, by event id).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from datetime import timedelta
from typing import Any

import orjson
from opentelemetry.trace import Span, SpanKind

from .._consume import retrying
from .._errors import SerializationError
from .._events import (
    DECIDED,
    RetryScheduled,
    StepCommand,
    StepScheduled,
    WorkflowCancelled,
    WorkflowCompleted,
    WorkflowFailed,
    decode_event,
    encode,
    encode_line,
    new_id,
    pack_lines,
    split_lines,
    utcnow,
)
from .._routing import Cancel, Decision, Fail, Finish, Input, Retry, Schedule, decide, transition_of
from .._telemetry import Attr, Headers, end_span
from .._topics import Topics
from ..store import ClaimState, Timer, TransitionClaim
from ..transport import Outgoing, Record, record_size
from . import BatchRole, Runtime

__all__ = ["Coordinator"]

_NONE: frozenset[tuple[str, str]] = frozenset()

log = logging.getLogger("hms_bus.coordinator")

_COMMAND_FIELDS = {"workflow_id", "workflow", "step", "seq", "attempt", "payload"}


class Coordinator(BatchRole):
    """Routes completed steps to what comes next (see module docs)."""

    name = "coordinator"

    def __init__(self, rt: Runtime) -> None:
        super().__init__(rt, [rt.topics.coordinator])
        # Claims published, to mark so in the ledger, off the path of the next batch.
        self._published: list[tuple[str, str]] = []
        self._unmarked: set[tuple[str, str]] = set()  # published by us, mark pending
        self._marking: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        """Consume until stopped; then mark what was published."""
        try:
            await super().run()
        finally:
            self._stopping.set()
            while self._marking is not None:
                await asyncio.shield(self._marking)

    def _mark(self, keys: list[tuple[str, str]]) -> None:
        """Mark claims published in the background, one call at a time, merged.

        The mark is bookkeeping, not a step of delivery: a claim left unmarked (the
        process died first) is answered UNPUBLISHED on a redelivery of its input, and
        its recorded messages are published again, which every reader tolerates. So
        the next batch does not wait for it, nor does the commit of this one.
        """
        self._published.extend(keys)
        self._unmarked.update(keys)
        if self._marking is None:
            self._marking = asyncio.create_task(self._mark_all(), name="hms-coordinator-mark")

    async def _mark_all(self) -> None:
        try:
            while self._published:
                keys, self._published = self._published, []
                await retrying(
                    "coordinator: mark published",
                    functools.partial(self._rt.store.mark_published, keys),
                    self._stopping,
                    recovery=self._rt.recovery,
                )
                self._unmarked.difference_update(keys)
        finally:
            self._marking = None

    # -- one batch ----------------------------------------------------------------------

    async def _process(self, records: list[Record]) -> None:
        rt = self._rt
        tel = rt.telemetry
        claims: list[TransitionClaim] = []
        spans: list[Span | None] = []
        ops: list[tuple[str, str, str | None, str]] = []
        dead: list[Outgoing] = []
        # Per input record: the lines it brought (kept for the history) and which of
        # ``claims`` it led to.
        inputs: list[tuple[Record, list[bytes], list[int], Headers]] = []
        for record in records:
            too_big = rt.oversized(record)
            if too_big is not None:
                dead.append(too_big)
                continue
            lines: list[bytes] = []
            mine: list[int] = []
            headers = record.headers
            for line in split_lines(record.value):
                try:
                    event = decode_event(line, DECIDED)
                except SerializationError as exc:
                    dead.append(rt.dead_letter(record, f"undecodable event: {exc}", original=line))
                    continue
                lines.append(line)
                if event is None:
                    continue  # history only (a quick step's stepStarted): passed on
                span = None
                if tel.tracing:
                    # Started before the decision so that its messages carry its context;
                    # named once the decision is known.
                    span = tel.span(
                        "decide",
                        kind=SpanKind.PRODUCER,
                        parent=tel.extract(record.headers),
                        attributes=None,
                    )
                    # An unsampled trace goes on with the context it came with.
                    headers = tel.inject(span) if span.is_recording() else record.headers
                else:
                    headers = record.headers  # carry the trace on, if there is one
                decision = decide(rt.registry.workflows, event)
                claim = self._claim(event, decision, headers)
                what = _operation(decision, event, rt.topics)
                if span is not None and span.is_recording():
                    operation, destination, _ = what
                    span.update_name(f"{operation} {destination}")
                    span.set_attributes(
                        {
                            Attr.MESSAGING_SYSTEM: tel.system,
                            Attr.MESSAGING_OPERATION_TYPE: Attr.SEND,
                            Attr.MESSAGING_DESTINATION_NAME: destination,
                            Attr.HMS_WORKFLOW_ID: event.workflow_id,
                            Attr.HMS_TRANSITION: claim.transition_id,
                        }
                    )
                mine.append(len(claims))
                claims.append(claim)
                spans.append(span)
                ops.append((*what, event.workflow))
            if lines:
                inputs.append((record, lines, mine, headers))
        # What we published and had not marked when the claims were read: a mark that
        # lands while they are read is not seen by them (they say UNPUBLISHED), so the
        # answer is judged against what was pending when they were sent.
        pending = self._unmarked.copy() if self._unmarked else _NONE
        try:
            results = await rt.store.claim_transitions(claims) if claims else []
            history_out: list[Outgoing] = []
            out: list[Outgoing] = []  # commands and letters, after the history
            keys: dict[tuple[str, str], None] = {}  # claims published now, in order
            for record, lines, mine, headers in inputs:
                history = list(lines)
                for k in mine:
                    claim, result, span, op = claims[k], results[k], spans[k], ops[k]
                    key = (claim.workflow_id, claim.transition_id)
                    # An input we decided and published in an earlier batch, redelivered
                    # before its mark landed, finds its claim UNPUBLISHED: it is done. A
                    # duplicate of an input earlier in this batch is caught by ``keys``.
                    state = result.state
                    if state is ClaimState.UNPUBLISHED and key in pending:
                        state = ClaimState.DONE  # we published it; the mark is on its way
                    if state in (ClaimState.NEW, ClaimState.UNPUBLISHED) and key not in keys:
                        history.extend(self._split(result.messages, out))
                        keys[key] = None
                        if result.state is ClaimState.NEW:
                            self._log_failure(claim)
                            if op[0] == "retry" and tel.metrics:
                                attrs = tel.attrs(
                                    Attr.HMS_WORKFLOW, op[3], Attr.HMS_STEP, op[2] or ""
                                )
                                tel.retries.add(1, attrs)
                    elif result.state is ClaimState.CLOSED:
                        log.debug(
                            "%s: %s ignored, workflow closed",
                            claim.workflow_id,
                            claim.transition_id,
                        )
                    if span is not None and result.state is not ClaimState.NEW:
                        # A redelivered event: its decision was taken (and traced) before.
                        span.set_attribute(Attr.HMS_DUPLICATE, True)
                history_out.extend(self._history(record, history, headers))
            await rt.publish([*dead, *history_out, *out])
            if keys:
                self._mark(list(keys))
        except BaseException as exc:
            for span in spans:
                if span is not None:
                    end_span(span, error=exc)
            raise
        for span in spans:
            if span is not None:
                span.end()

    def _split(self, messages: tuple[Outgoing, ...], out: list[Outgoing]) -> list[bytes]:
        """Put a claim's commands and letters in ``out``; return its history lines."""
        events = self._rt.topics.events
        lines: list[bytes] = []
        for m in messages:
            if m.topic == events:
                lines.extend(split_lines(m.value))
            else:
                out.append(m)
        return lines

    def _history(self, record: Record, lines: list[bytes], headers: Headers) -> list[Outgoing]:
        """The history record(s) of one input: as few as fit the bus's record limit."""
        topic, key = self._rt.topics.events, record.key
        # The value may take what its key and headers leave (record_size's measure).
        room = self._rt.settings.transport.max_message_bytes - record_size(
            Outgoing(topic, b"", key=key, headers=headers)
        )
        return [
            Outgoing(topic, value, key=key, headers=headers) for value in pack_lines(lines, room)
        ]

    def _log_failure(self, claim: TransitionClaim) -> None:
        # Logged once, when the decision is first recorded, not on every redelivery.
        for message in claim.messages:
            if message.topic == self._rt.topics.dead_letter:
                letter = orjson.loads(message.value)
                log.warning(
                    "workflow %s failed; dead-lettered: %s", claim.workflow_id, letter["reason"]
                )
                self._rt.count_dead_letter(letter["source_topic"])

    # -- from a decision to what it publishes ---------------------------------------------

    def _claim(self, ev: Input, decision: Decision, headers: Headers) -> TransitionClaim:
        """The claim of ``decision``: its history events, commands, timers and letters."""
        tid = transition_of(ev)
        topics = self._rt.topics
        key = ev.workflow_id.encode()

        def event(e: Any) -> Outgoing:
            return Outgoing(topics.events, encode_line(e), key=key, headers=headers)

        def command(step: str, seq: int, attempt: int, payload: Any, error: Any) -> Outgoing:
            cmd = StepCommand(
                workflow_id=ev.workflow_id,
                workflow=ev.workflow,
                step=step,
                seq=seq,
                attempt=attempt,
                payload=payload,
                error=error,
            )
            return Outgoing(topics.step(ev.workflow, step), encode(cmd), key=key, headers=headers)

        ids = {"workflow_id": ev.workflow_id, "workflow": ev.workflow}
        if isinstance(decision, Schedule):
            due = utcnow() + timedelta(seconds=decision.delay) if decision.delay else None
            notice = StepScheduled(**ids, step=decision.step, seq=decision.seq, due_at=due)
            cmd = command(decision.step, decision.seq, 1, decision.payload, decision.error)
            if due is None:
                return TransitionClaim(ev.workflow_id, tid, (event(notice), cmd))
            timer = Timer(new_id(), ev.workflow_id, due, cmd)
            return TransitionClaim(ev.workflow_id, tid, (event(notice),), (timer,))
        if isinstance(decision, Retry):
            due = utcnow() + timedelta(seconds=decision.delay)
            retry = RetryScheduled(
                **ids,
                step=decision.step,
                seq=decision.seq,
                attempt=decision.attempt,
                due_at=due,
                error=decision.error,
            )
            cmd = command(decision.step, decision.seq, decision.attempt, decision.payload, None)
            if decision.delay > 0:
                timer = Timer(new_id(), ev.workflow_id, due, cmd)
                return TransitionClaim(ev.workflow_id, tid, (event(retry),), (timer,))
            return TransitionClaim(ev.workflow_id, tid, (event(retry), cmd))
        if isinstance(decision, Finish):
            done = WorkflowCompleted(**ids, result=decision.result)
            return TransitionClaim(ev.workflow_id, tid, (event(done),), closes=True)
        if isinstance(decision, Cancel):
            cancelled = WorkflowCancelled(**ids, reason=decision.reason)
            return TransitionClaim(ev.workflow_id, tid, (event(cancelled),), closes=True)
        failed = WorkflowFailed(**ids, error=decision.error)
        letter = self._letter(ev, decision, headers)
        return TransitionClaim(ev.workflow_id, tid, (event(failed), letter), closes=True)

    def _letter(self, ev: Input, decision: Fail, headers: Headers) -> Outgoing:
        """The dead letter of a failed workflow: the failed attempt's command, as the
        worker received it, or the input that could not be routed."""
        error, attempt = decision.error, decision.attempt
        if attempt is not None:
            command = StepCommand.model_validate(attempt.model_dump(include=_COMMAND_FIELDS))
            source = self._rt.topics.step(attempt.workflow, attempt.step)
            body: Any = command.model_dump(mode="json")
        else:
            source, body = self._rt.topics.coordinator, ev.model_dump(mode="json")
        step = error.step
        reason = f"workflow failed at step {step!r}: {error.message}" if step else error.message
        return self._rt.dead_letter(
            None,
            reason,
            log_it=False,
            source_topic=source,
            original=body,
            workflow_id=ev.workflow_id,
            workflow=ev.workflow,
            step=step,
            error=error,
            headers=headers,
        )


def _operation(decision: Decision, ev: Input, topics: Topics) -> tuple[str, str, str | None]:
    """What a decision does, for its span: (operation, destination, step)."""
    if isinstance(decision, (Schedule, Retry)):
        kind = "schedule" if isinstance(decision, Schedule) else "retry"
        return kind, topics.step(ev.workflow, decision.step), decision.step
    if isinstance(decision, Finish):
        return "complete", ev.workflow, None
    if isinstance(decision, Cancel):
        return "cancel", ev.workflow, None
    return "fail", ev.workflow, decision.error.step
