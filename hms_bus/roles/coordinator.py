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
    CancelRequested,
    ErrorInfo,
    RetryScheduled,
    StepCommand,
    StepCompleted,
    StepScheduled,
    WorkflowCancelled,
    WorkflowCompleted,
    WorkflowFailed,
    WorkflowStarted,
    decode_event,
    encode,
    encode_line,
    new_id,
    pack_lines,
    split_lines,
    utcnow,
)
from .._telemetry import Headers, end_span
from ..store import ClaimState, Timer, TransitionClaim
from ..transport import Outgoing, Record
from . import BatchRole, Runtime

__all__ = ["Coordinator"]

log = logging.getLogger("hms_bus.coordinator")

_COMMAND_FIELDS = {"workflow_id", "workflow", "step", "seq", "attempt", "payload"}


class Coordinator(BatchRole):
    """Routes completed steps to what comes next (see module docs)."""

    name = "coordinator"

    def __init__(self, rt: Runtime) -> None:
        super().__init__(rt, [rt.topics.coordinator])
        # What the decision being built does, for its span: (operation, destination, step).
        self._op: tuple[str, str, str | None] = ("decide", rt.topics.events, None)
        # The trace headers every message of the decision being built carries.
        self._headers: Headers = ()
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
                    self._headers = tel.inject(span) if span.is_recording() else record.headers
                else:
                    self._headers = record.headers  # carry the trace on, if there is one
                headers = self._headers
                claim = self._decide(event)
                if span is not None and span.is_recording():
                    operation, destination, _ = self._op
                    span.update_name(f"{operation} {destination}")
                    span.set_attributes(
                        {
                            "messaging.system": tel.system,
                            "messaging.operation.type": "send",
                            "messaging.destination.name": destination,
                            "hms.workflow_id": event.workflow_id,
                            "hms.transition": claim.transition_id,
                        }
                    )
                mine.append(len(claims))
                claims.append(claim)
                spans.append(span)
                ops.append((*self._op, event.workflow))
            if lines:
                inputs.append((record, lines, mine, headers))
        try:
            results = await rt.store.claim_transitions(claims) if claims else []
            history_out: list[Outgoing] = []
            out: list[Outgoing] = []  # commands and letters, after the history
            keys: list[tuple[str, str]] = []
            for record, lines, mine, headers in inputs:
                history = list(lines)
                for k in mine:
                    claim, result, span, op = claims[k], results[k], spans[k], ops[k]
                    key = (claim.workflow_id, claim.transition_id)
                    # A duplicate of an event earlier in this batch finds that event's
                    # claim recorded but not yet published: its messages are in ``out``.
                    state = result.state
                    if state is ClaimState.UNPUBLISHED and key in self._unmarked:
                        state = ClaimState.DONE  # we published it; the mark is on its way
                    if state in (ClaimState.NEW, ClaimState.UNPUBLISHED) and key not in keys:
                        history.extend(self._split(result.messages, out))
                        keys.append(key)
                        if result.state is ClaimState.NEW:
                            self._log_failure(claim)
                            if op[0] == "retry" and tel.metrics:
                                attrs = tel.attrs("hms.workflow", op[3], "hms.step", op[2] or "")
                                tel.retries.add(1, attrs)
                    elif result.state is ClaimState.CLOSED:
                        log.debug(
                            "%s: %s ignored, workflow closed",
                            claim.workflow_id,
                            claim.transition_id,
                        )
                    if span is not None and result.state is not ClaimState.NEW:
                        # A redelivered event: its decision was taken (and traced) before.
                        span.set_attribute("hms.duplicate", True)
                history_out.extend(self._history(record, history, headers))
            await rt.publish([*dead, *history_out, *out])
            if keys:
                self._mark(keys)
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
        topic = self._rt.topics.events
        key = record.key
        room = self._rt.settings.transport.max_message_bytes - 512 - len(key or b"")
        room -= sum(len(k) + len(v) for k, v in headers)
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

    # -- decisions ----------------------------------------------------------------------

    def _decide(self, event: Any) -> TransitionClaim:
        if isinstance(event, WorkflowStarted):
            wf = self._rt.registry.workflows.get(event.workflow)
            if wf is None:
                return self._fail(event, "start", f"unknown workflow {event.workflow!r}", None)
            msgs, _ = self._next(event, wf.first_step, 1, 1, event.payload, None, None)
            return TransitionClaim(event.workflow_id, "start", msgs)
        if isinstance(event, StepCompleted):
            return self._completed(event)
        if isinstance(event, CancelRequested):
            cancelled = WorkflowCancelled(
                workflow_id=event.workflow_id,
                workflow=event.workflow,
                reason=event.reason or "cancelled",
            )
            self._op = ("cancel", event.workflow, None)
            return TransitionClaim(
                event.workflow_id, "cancel", (self._event(cancelled),), closes=True
            )
        raise AssertionError(f"not an input of the coordinator: {event.type}")

    def _completed(self, ev: StepCompleted) -> TransitionClaim:
        tid = f"{ev.step}:{ev.seq}:{ev.attempt}"
        wf = self._rt.registry.workflows.get(ev.workflow)
        if wf is None or ev.step not in wf.steps:
            return self._fail(ev, tid, f"unknown step {ev.workflow}.{ev.step}", ev.step)
        if ev.outcome == "succeeded":
            d = ev.directive or {"kind": "default", "data": ev.payload}
            data = d.get("data")
            if d.get("kind") == "complete":
                return self._complete(ev, tid, data)
            target = d.get("step") if d.get("kind") == "next" else wf.next_after(ev.step)
            if target is None:
                return self._complete(ev, tid, data)
            if target not in wf.steps:
                msg = f"step {ev.step!r} routed to unknown step {target!r}"
                return self._fail(ev, tid, msg, ev.step)
            delay = d.get("delay")
            msgs, timers = self._next(ev, target, ev.seq + 1, 1, data, None, delay)
            return TransitionClaim(ev.workflow_id, tid, msgs, timers)
        error = ev.error or ErrorInfo(message="step failed", type="Error")
        step = wf.steps[ev.step]
        if error.retriable and step.retry.allows_another(ev.attempt):
            delay = step.retry.delay(ev.attempt)
            due = utcnow() + timedelta(seconds=delay)
            notice = RetryScheduled(
                workflow_id=ev.workflow_id,
                workflow=ev.workflow,
                step=ev.step,
                seq=ev.seq,
                attempt=ev.attempt + 1,
                due_at=due,
                error=error,
            )
            command = self._command(ev, ev.step, ev.seq, ev.attempt + 1, ev.payload, None)
            self._op = ("retry", command.topic, ev.step)
            if delay > 0:
                timer = Timer(new_id(), ev.workflow_id, due, command)
                return TransitionClaim(ev.workflow_id, tid, (self._event(notice),), (timer,))
            return TransitionClaim(ev.workflow_id, tid, (self._event(notice), command))
        route = wf.error_route(ev.step)
        if route is not None:
            info = error.model_copy(update={"step": ev.step})
            msgs, timers = self._next(ev, route, ev.seq + 1, 1, ev.payload, info, None)
            return TransitionClaim(ev.workflow_id, tid, msgs, timers)
        return self._fail(ev, tid, error.message, ev.step, error, original=ev)

    # -- building blocks ----------------------------------------------------------------

    def _event(self, event: Any) -> Outgoing:
        """A history event of the decision (joined with the input's in one record)."""
        return Outgoing(
            self._rt.topics.events,
            encode_line(event),
            key=event.workflow_id.encode(),
            headers=self._headers,
        )

    def _command(
        self,
        ev: Any,
        step: str,
        seq: int,
        attempt: int,
        payload: Any,
        error: ErrorInfo | None,
    ) -> Outgoing:
        cmd = StepCommand(
            workflow_id=ev.workflow_id,
            workflow=ev.workflow,
            step=step,
            seq=seq,
            attempt=attempt,
            payload=payload,
            error=error,
        )
        return Outgoing(
            self._rt.topics.step(ev.workflow, step),
            encode(cmd),
            key=ev.workflow_id.encode(),
            headers=self._headers,
        )

    def _next(
        self,
        ev: Any,
        step: str,
        seq: int,
        attempt: int,
        payload: Any,
        error: ErrorInfo | None,
        delay: float | None,
    ) -> tuple[tuple[Outgoing, ...], tuple[Timer, ...]]:
        due = utcnow() + timedelta(seconds=delay) if delay else None
        notice = StepScheduled(
            workflow_id=ev.workflow_id,
            workflow=ev.workflow,
            step=step,
            seq=seq,
            attempt=attempt,
            due_at=due,
        )
        command = self._command(ev, step, seq, attempt, payload, error)
        self._op = ("schedule", command.topic, step)
        if due is None:
            return (self._event(notice), command), ()
        return (self._event(notice),), (Timer(new_id(), ev.workflow_id, due, command),)

    def _complete(self, ev: Any, tid: str, result: Any) -> TransitionClaim:
        done = WorkflowCompleted(workflow_id=ev.workflow_id, workflow=ev.workflow, result=result)
        self._op = ("complete", ev.workflow, None)
        return TransitionClaim(ev.workflow_id, tid, (self._event(done),), closes=True)

    def _fail(
        self,
        ev: Any,
        tid: str,
        message: str,
        step: str | None,
        error: ErrorInfo | None = None,
        original: StepCompleted | None = None,
    ) -> TransitionClaim:
        info = error or ErrorInfo(message=message, type="ConfigError", retriable=False)
        info = info.model_copy(update={"step": step})
        failed = WorkflowFailed(workflow_id=ev.workflow_id, workflow=ev.workflow, error=info)
        self._op = ("fail", ev.workflow, step)
        if original is not None:
            # The command of the attempt that failed, as the worker received it.
            command = StepCommand.model_validate(original.model_dump(include=_COMMAND_FIELDS))
            source = self._rt.topics.step(original.workflow, original.step)
            body: Any = command.model_dump(mode="json")
        else:
            source, body = self._rt.topics.coordinator, ev.model_dump(mode="json")
        reason = f"workflow failed at step {step!r}: {message}" if step else message
        letter = self._rt.dead_letter(
            None,
            reason,
            log_it=False,
            source_topic=source,
            original=body,
            workflow_id=ev.workflow_id,
            workflow=ev.workflow,
            step=step,
            error=info,
            headers=self._headers,
        )
        return TransitionClaim(ev.workflow_id, tid, (self._event(failed), letter), closes=True)
