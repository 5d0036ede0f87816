"""The coordinator: decides every workflow transition, once.

It consumes ``hms.coordinator``, its own input topic: ``workflowStarted`` from clients
(and from parents, for a child), ``completeStep`` from workers, ``cancelRequested``,
``signalSent``, ``waitExpired`` (from timers) and ``childEnded``. The rules are
:mod:`hms_bus._routing`'s and :mod:`hms_bus._follow_up`'s. Each decision is a
:class:`~hms_bus.store.TransitionClaim` (built by :mod:`hms_bus.roles._claims`) keyed by
(workflow_id, transition): the store records it once, so a redelivered or duplicated
event never advances a workflow twice, and a workflow that has ended refuses every later
transition.

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
import logging

import orjson
from opentelemetry.trace import Span, SpanKind

from .._codec import decode_event, encode_line, pack_lines, split_lines
from .._decisions import Decision, Input
from .._definitions import Registry
from .._errors import SerializationError
from .._events import DECIDED, WaitEnded
from .._follow_up import follow_up
from .._outage import retrying
from .._routing import decide, transition_of
from .._telemetry import Attr, Headers, end_span
from .._topics import Topics
from ..store import ClaimResult, ClaimState, TransitionClaim
from ..transport import Outgoing, Record, record_size
from . import BatchRole, Runtime
from ._claims import claim_of, notices, operation_of

__all__ = ["Coordinator", "inboxes"]

_NONE: frozenset[tuple[str, str]] = frozenset()

log = logging.getLogger("hms_bus.coordinator")


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
                claim = claim_of(rt, event, transition_of(event), decision, headers)
                what = operation_of(decision, event, rt.topics)
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
                        out.extend(
                            notices(rt.topics, st.event, st.decision, result.facts, st.headers)
                        )
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
        claim = claim_of(
            self._rt,
            ev,
            nxt.transition_id,
            nxt.decision,
            st.headers,
            facts=nxt.facts,
            version=nxt.version,
            extra=extra,
        )
        what = operation_of(nxt.decision, ev, self._rt.topics)
        return _Step(ev, nxt.decision, claim, None, what, st.headers)

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


def _drop_line(history: list[bytes], event_id: str) -> None:
    needle = f'"event_id":"{event_id}"'.encode()
    history[:] = [line for line in history if needle not in line]
