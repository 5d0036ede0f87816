"""The coordinator: decides every workflow transition, once.

It consumes ``hms.coordinator``, its own input topic: ``workflowStarted`` from clients
(and from parents, for a child), ``completeStep`` from workers, ``cancelRequested``,
``signalSent``, ``waitExpired`` (from timers) and ``childEnded``. The rules are
:mod:`hms_bus._routing`'s. Each decision is a :class:`~hms_bus.store.TransitionClaim`
keyed by (workflow_id, transition): the store records it once, so a redelivered or
duplicated event never advances a workflow twice, and a workflow that has ended refuses
every later transition.

Some decisions lead to a second transition that depends on what the ledger holds of
the workflow (its facts): a fork's branch that completes the set joins it, a wait meets
its signal. The first claims of a batch come back with the facts they asked for, and
the second transitions (``join:<seq>``, ``wake:<seq>``) are claimed in one more round
trip, only when a batch has any. A workflow's end also reads its facts: a child reports
to its parent (``childEnded``), a cancelled parent cancels its running children.

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
import hashlib
import logging
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import orjson
from opentelemetry.trace import Span, SpanKind

from .._codec import decode_event, encode, encode_line, pack_lines, split_lines
from .._definitions import Registry
from .._envelope import new_id, utcnow
from .._errors import SerializationError
from .._events import (
    DECIDED,
    CancelRequested,
    ChildEnded,
    ChildStarted,
    ErrorInfo,
    ParentRef,
    RetryScheduled,
    StepCommand,
    StepScheduled,
    StepWaiting,
    WaitEnded,
    WaitExpired,
    WorkflowCancelled,
    WorkflowCompleted,
    WorkflowFailed,
    WorkflowRedriven,
    WorkflowStarted,
)
from .._outage import retrying
from .._routing import (
    Abandon,
    Cancel,
    Contribute,
    Decision,
    Fail,
    Finish,
    Fork,
    Input,
    Keep,
    Park,
    Reopen,
    Retry,
    Schedule,
    Spawn,
    closes,
    decide,
    facts_read,
    facts_written,
    follow_up,
    transition_of,
)
from .._telemetry import Attr, Headers, end_span
from .._topics import Topics
from ..store import ClaimResult, ClaimState, Timer, TransitionClaim
from ..transport import Outgoing, Record, record_size
from . import BatchRole, Runtime

__all__ = ["Coordinator", "inboxes"]

_NONE: frozenset[tuple[str, str]] = frozenset()

log = logging.getLogger("hms_bus.coordinator")

_COMMAND_FIELDS = {"workflow_id", "workflow", "step", "seq", "attempt", "payload"}


class Coordinator(BatchRole):
    """Routes completed steps to what comes next (see module docs)."""

    name = "coordinator"

    def __init__(self, rt: Runtime) -> None:
        super().__init__(rt, [rt.topics.coordinator, *inboxes(rt.registry, rt.topics)])
        # Claims published, to mark so in the ledger, off the path of the next batch.
        self._published: list[tuple[str, str]] = []
        self._unmarked: set[tuple[str, str]] = set()  # published by us, mark pending
        self._marking: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._inboxes: set[str] = set()  # version inboxes known to exist
        self._warned: set[str] = set()

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
        steps: list[_Step] = []  # every transition of the batch, first ones then second
        dead: list[Outgoing] = []
        forwards: list[Outgoing] = []
        # Per input record: the lines it brought (kept for the history) and which of
        # ``steps`` it led to.
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
                if event is None:
                    lines.append(line)
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
                try:
                    decision = decide(
                        rt.registry, event, max_fanout=rt.settings.coordinator.max_fanout
                    )
                except KeyError:
                    # A version this process does not define: another coordinator will.
                    forwards.append(self._forward(record, line, event))
                    if span is not None:
                        span.end()
                    continue
                lines.append(line)
                claim = self._claim(event, transition_of(event), decision, headers)
                what = _operation(decision, event, rt.topics)
                if span is not None and span.is_recording():
                    operation, destination, *_ = what
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
                mine.append(len(steps))
                steps.append(_Step(event, decision, claim, span, what, headers))
            if lines:
                inputs.append((record, lines, mine, headers))
        # What we published and had not marked when the claims were read: a mark that
        # lands while they are read is not seen by them (they say UNPUBLISHED), so the
        # answer is judged against what was pending when they were sent.
        pending = self._unmarked.copy() if self._unmarked else _NONE
        spans = [st.span for st in steps]
        try:
            first = len(steps)
            if steps:
                results = await rt.store.claim_transitions([st.claim for st in steps])
                for st, result in zip(steps, results, strict=True):
                    st.result = result
                # Second transitions: joins and wakes, claimed together.
                seconds: list[_Step] = []
                for k, st in enumerate(steps):
                    try:
                        nxt = self._second(st)
                    except KeyError as exc:
                        # The wake of a wait of a version this process does not define:
                        # the input goes to the coordinators that define it.
                        _, version = exc.args[0]
                        forwards.append(self._forward_event(st.event, version))
                        continue
                    if nxt is not None:
                        nxt.after = k
                        seconds.append(nxt)
                if seconds:
                    results = await rt.store.claim_transitions([st.claim for st in seconds])
                    for st, result in zip(seconds, results, strict=True):
                        st.result = result
                    steps.extend(seconds)
            # Each input record's second transitions follow its first ones.
            for k in range(first, len(steps)):
                for _, _, mine, _ in inputs:
                    if steps[k].after in mine:
                        mine.append(k)
                        break
            history_out: list[Outgoing] = []
            out: list[Outgoing] = []  # commands, letters and notices, after the history
            keys: dict[tuple[str, str], None] = {}  # claims published now, in order
            for record, lines, mine, headers in inputs:
                history = list(lines)
                for k in mine:
                    st = steps[k]
                    claim, op = st.claim, st.what
                    assert st.result is not None
                    result = st.result
                    key = (claim.workflow_id, claim.transition_id)
                    # An input we decided and published in an earlier batch, redelivered
                    # before its mark landed, finds its claim UNPUBLISHED: it is done. A
                    # duplicate of an input earlier in this batch is caught by ``keys``.
                    state = result.state
                    if state is ClaimState.UNPUBLISHED and key in pending:
                        state = ClaimState.DONE  # we published it; the mark is on its way
                    if state in (ClaimState.NEW, ClaimState.UNPUBLISHED) and key not in keys:
                        history.extend(self._split(result.messages, out))
                        out.extend(self._notices(st))
                        keys[key] = None
                        if result.state is ClaimState.NEW:
                            self._log_failure(claim)
                            if op[0] == "retry" and tel.metrics:
                                attrs = tel.attrs(
                                    Attr.HMS_WORKFLOW, op[3], Attr.HMS_STEP, op[2] or ""
                                )
                                tel.retries.add(1, attrs)
                    else:
                        if st.after is None and st.event.type in _ONCE:
                            # A signal, timeout or child's end already handled: its input
                            # is not history again.
                            _drop_line(history, st.event.event_id)
                        if result.state is ClaimState.CLOSED:
                            log.debug(
                                "%s: %s ignored, workflow closed",
                                claim.workflow_id,
                                claim.transition_id,
                            )
                    if st.span is not None and result.state is not ClaimState.NEW:
                        # A redelivered event: its decision was taken (and traced) before.
                        st.span.set_attribute(Attr.HMS_DUPLICATE, True)
                if history:
                    history_out.extend(self._history(record, history, headers))
            if forwards:
                await self._ensure_inboxes(forwards)
            await rt.publish([*dead, *forwards, *history_out, *out])
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

    def _second(self, st: _Step) -> _Step | None:
        """The second transition of a first one (a join, a wake), if its facts call for one."""
        assert st.result is not None
        if st.result.state is ClaimState.CLOSED:
            return None
        ev = st.event
        nxt = follow_up(self._rt.registry, ev.workflow, st.decision, st.result.facts)
        if nxt is None:
            return None
        extra: list[Outgoing] = []
        if nxt.woke is not None:
            step, seq, signal, signal_id = nxt.woke
            ended = WaitEnded(
                workflow_id=ev.workflow_id,
                workflow=ev.workflow,
                step=step,
                seq=seq,
                signal=signal,
                signal_id=signal_id,
            )
            topic, key = self._rt.topics.events, ev.workflow_id.encode()
            extra.append(Outgoing(topic, encode_line(ended), key=key, headers=st.headers))
        claim = self._claim(
            ev,
            nxt.transition_id,
            nxt.decision,
            st.headers,
            facts=nxt.facts,
            version=nxt.version,
            extra=extra,
        )
        what = _operation(nxt.decision, ev, self._rt.topics)
        return _Step(ev, nxt.decision, claim, None, what, st.headers)

    def _notices(self, st: _Step) -> list[Outgoing]:
        """What a transition that ends a workflow tells others, from its facts: a child's
        end to its parent, a cancellation to the children still running. Made again
        whenever the transition is published (they are not recorded with it), the same
        each time."""
        assert st.result is not None
        if not closes(st.decision) or not st.result.facts:
            return []
        ev, facts, topics = st.event, st.result.facts, self._rt.topics
        out: list[Outgoing] = []
        parent = facts.get("parent")
        if isinstance(parent, Mapping):
            ref = ParentRef.model_validate(parent)
            status, result, error = _ending(st.decision)
            ended = ChildEnded(
                event_id=_derived_id("childEnded", ev.workflow_id),
                workflow_id=ref.workflow_id,
                workflow=ref.workflow,
                step=ref.step,
                seq=ref.seq,
                child_id=ev.workflow_id,
                status=status,
                result=result,
                error=error,
                then=ref.then,
                version=ref.version,
            )
            out.append(
                Outgoing(
                    topics.coordinator,
                    encode_line(ended),
                    key=ref.workflow_id.encode(),
                    headers=st.headers,
                )
            )
        if isinstance(st.decision, Cancel):
            for fact, child in facts.items():
                if fact.startswith("child:") and isinstance(child, Mapping):
                    cancel = CancelRequested(
                        event_id=_derived_id("cancel", str(child["id"])),
                        workflow_id=str(child["id"]),
                        workflow=str(child["workflow"]),
                        reason=f"its parent {ev.workflow_id!r} was cancelled",
                    )
                    out.append(
                        Outgoing(
                            topics.coordinator,
                            encode_line(cancel),
                            key=cancel.workflow_id.encode(),
                            headers=st.headers,
                        )
                    )
        return out

    def _forward(self, record: Record, line: bytes, event: Input) -> Outgoing:
        """The input, for the coordinators that define its workflow's version."""
        version = getattr(event, "version", None) or ""
        topic = self._rt.topics.inbox(event.workflow, version)
        self._warn_forward(topic, event.workflow, version)
        return Outgoing(topic, line + b"\n", key=record.key, headers=record.headers)

    def _forward_event(self, event: Input, version: str | None) -> Outgoing:
        """``event`` (already claimed here) for the coordinators that define ``version``."""
        topic = self._rt.topics.inbox(event.workflow, version or "")
        self._warn_forward(topic, event.workflow, version or "")
        key = event.workflow_id.encode()
        return Outgoing(topic, encode_line(event), key=key)

    def _warn_forward(self, topic: str, workflow: str, version: str) -> None:
        if topic not in self._warned:
            self._warned.add(topic)
            log.warning(
                "workflow %r version %r is not defined in this process: its transitions go "
                "to %s, for a coordinator that defines it (keep old versions defined while "
                "their instances run)",
                workflow,
                version,
                topic,
            )

    async def _ensure_inboxes(self, forwards: list[Outgoing]) -> None:
        new = sorted({m.topic for m in forwards} - self._inboxes)
        if new:
            await self._rt.transport.ensure_topics(new)
            self._inboxes.update(new)

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

    def _claim(
        self,
        ev: Input,
        tid: str,
        decision: Decision,
        headers: Headers,
        *,
        facts: Mapping[str, Any] | None = None,
        version: str | None = None,
        extra: list[Outgoing] | None = None,
    ) -> TransitionClaim:
        """The claim of ``decision``: its history events, commands, timers, letters and
        facts (``extra`` messages first)."""
        topics = self._rt.topics
        wid = ev.workflow_id
        key = wid.encode()
        version = version or _version(ev, self._rt)
        written = facts_written(decision, at=ev.ts)
        if facts:
            written = {**facts, **written}
        if isinstance(ev, ChildEnded):
            written[f"child:{ev.seq}"] = None  # no longer running
        elif isinstance(ev, WorkflowStarted) and ev.parent is not None:
            written["parent"] = ev.parent.model_dump(mode="json")

        def event(e: Any) -> Outgoing:
            return Outgoing(topics.events, encode_line(e), key=key, headers=headers)

        def command(run: Schedule | Retry, attempt: int) -> Outgoing:
            cmd = StepCommand(
                workflow_id=wid,
                workflow=ev.workflow,
                step=run.step,
                seq=run.seq,
                attempt=attempt,
                payload=run.payload,
                error=run.error if isinstance(run, Schedule) else run.cause,
                version=version,
                branch=run.branch,
                signal=run.signal,
            )
            return Outgoing(
                topics.step(ev.workflow, run.step), encode(cmd), key=key, headers=headers
            )

        ids = {"workflow_id": wid, "workflow": ev.workflow}
        messages: list[Outgoing] = list(extra or ())
        timers: list[Timer] = []

        def schedule(run: Schedule) -> None:
            due = utcnow() + timedelta(seconds=run.delay) if run.delay else None
            group = run.branch.group if run.branch is not None else None
            messages.append(
                event(StepScheduled(**ids, step=run.step, seq=run.seq, due_at=due, group=group))
            )
            cmd = command(run, 1)
            if due is None:
                messages.append(cmd)
            else:
                timers.append(Timer(new_id(), wid, due, cmd))

        if isinstance(ev, WaitExpired) and tid == transition_of(ev):
            ended = WaitEnded(**ids, step=ev.step, seq=ev.seq, signal=ev.signal, timed_out=True)
            messages.append(event(ended))
        closing = closes(decision)
        if isinstance(decision, Abandon):
            decision_now: Decision | None = None  # the fork's outcome is the join's
        elif isinstance(decision, Reopen):
            entry = decision.runs.runs[0] if isinstance(decision.runs, Fork) else decision.runs
            redriven = WorkflowRedriven(
                **ids, redrive=decision.redrive, step=entry.step, seq=entry.seq
            )
            messages.append(event(redriven))
            decision_now = decision.runs
        else:
            decision_now = decision
        if isinstance(decision_now, Schedule):
            schedule(decision_now)
        elif isinstance(decision_now, Fork):
            for run in decision_now.runs:
                schedule(run)
        elif isinstance(decision_now, Retry):
            due = utcnow() + timedelta(seconds=decision_now.delay)
            messages.append(
                event(
                    RetryScheduled(
                        **ids,
                        step=decision_now.step,
                        seq=decision_now.seq,
                        attempt=decision_now.attempt,
                        due_at=due,
                        error=decision_now.error,
                    )
                )
            )
            cmd = command(decision_now, decision_now.attempt)
            if decision_now.delay > 0:
                timers.append(Timer(new_id(), wid, due, cmd))
            else:
                messages.append(cmd)
        elif isinstance(decision_now, Park):
            timeout_at = (
                utcnow() + timedelta(seconds=decision_now.timeout) if decision_now.timeout else None
            )
            messages.append(
                event(
                    StepWaiting(
                        **ids,
                        step=decision_now.step,
                        seq=decision_now.seq,
                        signal=decision_now.signal,
                        timeout_at=timeout_at,
                    )
                )
            )
            if timeout_at is not None:
                expired = WaitExpired(
                    **ids,
                    step=decision_now.step,
                    seq=decision_now.seq,
                    signal=decision_now.signal,
                    payload=decision_now.payload,
                    on_timeout=decision_now.on_timeout,
                    version=version,
                )
                body = encode_line(expired)
                timers.append(
                    Timer(
                        new_id(), wid, timeout_at, Outgoing(topics.coordinator, body, key, headers)
                    )
                )
        elif isinstance(decision_now, Spawn):
            messages.append(
                event(
                    ChildStarted(
                        **ids,
                        step=decision_now.step,
                        seq=decision_now.seq,
                        child_id=decision_now.child_id,
                        child_workflow=decision_now.workflow,
                    )
                )
            )
            child_wf = self._rt.registry.workflows[decision_now.workflow]
            started = WorkflowStarted(
                event_id=_derived_id("start", decision_now.child_id),
                workflow_id=decision_now.child_id,
                workflow=decision_now.workflow,
                payload=decision_now.payload,
                service=self._rt.settings.service_name,
                version=child_wf.version,
                parent=decision_now.parent,
            )
            messages.append(
                Outgoing(
                    topics.coordinator,
                    encode_line(started),
                    key=decision_now.child_id.encode(),
                    headers=headers,
                )
            )
        elif isinstance(decision_now, Finish):
            messages.append(event(WorkflowCompleted(**ids, result=decision_now.result)))
        elif isinstance(decision_now, Cancel):
            messages.append(event(WorkflowCancelled(**ids, reason=decision_now.reason)))
        elif isinstance(decision_now, Fail):
            messages.append(event(WorkflowFailed(**ids, error=decision_now.error)))
            if decision_now.letter:
                messages.append(self._letter(ev, decision_now, headers))
        # Contribute and Keep publish nothing themselves: their second transition may.
        return TransitionClaim(
            wid,
            tid,
            tuple(messages),
            tuple(timers),
            closes=closing,
            facts=tuple(written.items()) if written else (),
            reads=facts_read(decision),
            reopens=isinstance(decision, Reopen),
        )

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


_ONCE = frozenset({"signalSent", "waitExpired", "childEnded", "redriveRequested"})
"""Inputs whose line goes to the history only when their transition is new."""


class _Step:
    """One transition of a batch: its input, decision, claim and (once claimed) answer."""

    __slots__ = ("after", "claim", "decision", "event", "headers", "result", "span", "what")

    def __init__(
        self,
        event: Input,
        decision: Decision,
        claim: TransitionClaim,
        span: Span | None,
        what: tuple[str, str, str | None, str],
        headers: Headers,
    ) -> None:
        self.event = event
        self.decision = decision
        self.claim = claim
        self.span = span
        self.what = what
        self.headers = headers
        self.result: ClaimResult | None = None
        self.after: int | None = None
        """For a second transition: the index of the first one it follows."""


def inboxes(registry: Registry, topics: Topics) -> list[str]:
    """The version inboxes a coordinator of ``registry`` reads: one per version of each
    workflow it defines (see :meth:`~hms_bus._topics.Topics.inbox`)."""
    return [topics.inbox(wf.name, wf.version) for wf in registry.definitions()]


def _version(ev: Input, rt: Runtime) -> str | None:
    """The definition version the input's workflow runs by."""
    version = getattr(ev, "version", None)
    if version:
        return str(version)
    wf = rt.registry.workflows.get(ev.workflow)
    return wf.version if wf is not None else None


def _derived_id(kind: str, of: str) -> str:
    """An event id made from what the event is, so that each time it is made again (a
    redelivery) it is the same event."""
    return hashlib.sha256(f"{kind}:{of}".encode()).hexdigest()[:32]


def _drop_line(history: list[bytes], event_id: str) -> None:
    needle = f'"event_id":"{event_id}"'.encode()
    history[:] = [line for line in history if needle not in line]


def _ending(decision: Decision) -> tuple[Any, Any, ErrorInfo | None]:
    """How a workflow ended, for its parent: (status, result, error)."""
    if isinstance(decision, Finish):
        return "completed", decision.result, None
    if isinstance(decision, Fail):
        return "failed", None, decision.error
    assert isinstance(decision, Cancel)
    return "cancelled", None, ErrorInfo(message=decision.reason, type="Cancelled", retriable=False)


def _operation(decision: Decision, ev: Input, topics: Topics) -> tuple[str, str, str | None, str]:
    """What a decision does, for its span and metrics: (operation, destination, step,
    workflow)."""
    wf = ev.workflow
    if isinstance(decision, (Schedule, Retry)):
        kind = "schedule" if isinstance(decision, Schedule) else "retry"
        return kind, topics.step(wf, decision.step), decision.step, wf
    if isinstance(decision, Fork):
        step = decision.runs[0].step
        return "fork", topics.step(wf, step), step, wf
    if isinstance(decision, Finish):
        return "complete", wf, None, wf
    if isinstance(decision, Cancel):
        return "cancel", wf, None, wf
    if isinstance(decision, Fail):
        return "fail", wf, decision.error.step, wf
    if isinstance(decision, Park):
        return "wait", wf, decision.step, wf
    if isinstance(decision, Spawn):
        return "start", decision.workflow, decision.step, wf
    if isinstance(decision, (Contribute, Abandon)):
        return "join", wf, decision.branch.group, wf
    if isinstance(decision, Reopen):
        return "redrive", wf, None, wf
    assert isinstance(decision, Keep)
    return "signal", wf, None, wf
