"""The worker: runs step handlers and reports each attempt as a ``completeStep`` event.

For every command on its step topics it publishes ``stepStarted``, validates the
payload against the step's ``input=`` model, runs the handler under the concurrency
limit and the step's timeout, reads the return value (see :mod:`hms_bus._results`) and
publishes ``completeStep`` with the outcome. The command's offset is committed only
after ``completeStep`` is published. Commands that cannot be read (not JSON, not an
envelope, an unknown workflow or step) go to ``hms.dead-letter`` with the reason, and
so does a command that keeps killing its worker process (a crash loop, see
:class:`~hms_bus._keyed_loop.CrashGuard`), whose attempt then fails as ``CrashLoop``.

Failures are classified here: ``Fail``, invalid input, an invalid return value and
``HmsBusError(retriable=False)`` are not retriable; anything else (including the
timeout) is, and the coordinator decides whether attempts remain.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from typing import Any, NoReturn

from opentelemetry.trace import Span, SpanKind

from .._codec import decode_command, encode_line
from .._context import StepContext, StepLogger
from .._definitions import StepDefinition, WorkflowDefinition, validate_payload
from .._envelope import utcnow
from .._errors import Fail, HmsBusError, PayloadValidationError, SerializationError
from .._events import Directive, ErrorInfo, StepCommand, StepCompleted, StepStarted
from .._keyed_loop import CrashGuard, KeyedLoop
from .._outage import retrying
from .._pii import Sealer, mask_text
from .._results import normalize_result
from .._telemetry import Attr, attach, detach, end_span
from ..transport import Outgoing, Record, TopicPartition, oversized
from . import RoleStats, Runtime

__all__ = ["Worker"]

log = logging.getLogger("hms_bus.worker")


class Worker:
    """Runs the handlers of ``steps`` (see module docs)."""

    name = "worker"

    def __init__(self, rt: Runtime, steps: list[StepDefinition]) -> None:
        self._rt = rt
        cfg = rt.settings.worker
        self._steps = {rt.topics.step(s.workflow, s.name): s for s in steps}
        # Each step's handler logger, looked up once rather than per attempt.
        self._step_logs = {
            s.qualname: logging.getLogger(f"hms_bus.step.{s.qualname}") for s in steps
        }
        self._semaphore = asyncio.Semaphore(cfg.concurrency)
        self._stopping = asyncio.Event()
        self._never = asyncio.Event()  # what a publish that must not give up stops on
        self.running = 0
        self._loop = KeyedLoop(
            rt.transport,
            rt.topics.group("worker"),
            list(self._steps),
            self._handle,
            name="worker",
            max_in_flight=cfg.max_in_flight or 2 * cfg.concurrency,
            grace=cfg.shutdown_grace,
            # While every slot is busy, fetch nothing this often to stay in the group.
            keepalive=min(1.0, rt.settings.transport.max_poll_interval / 4),
            # A crash loop can only be seen across processes: the store must outlive them.
            guard=CrashGuard(rt.store, cfg.max_deliveries, self._quarantine)
            if cfg.max_deliveries and rt.store.durable
            else None,
            recovery=rt.recovery,
        )
        self._announce_after = cfg.announce_after
        self.done = 0
        """Step attempts finished by this process."""
        self._group = rt.topics.group("worker")

    @property
    def steps(self) -> list[str]:
        """``workflow.step`` names served."""
        return [s.qualname for s in self._steps.values()]

    @property
    def in_flight(self) -> int:
        """Commands fetched and not yet finished."""
        return self._loop.in_flight

    async def ready(self) -> None:
        """Return once the worker's consumer has joined its group."""
        await self._loop.joined.wait()

    @property
    def is_ready(self) -> bool:
        """True once the worker's consumer has joined its group."""
        return self._loop.joined.is_set()

    def stats(self) -> RoleStats:
        """Handlers running now, step attempts finished, and the steps served."""
        return RoleStats(
            in_flight=self.running, done=self.done, steps=tuple(self.steps), left=self._loop.left
        )

    def lag(self) -> dict[TopicPartition, int]:
        """Commands published on the served topics but not yet fetched, per partition."""
        consumer = self._loop.consumer
        return consumer.lag() if consumer is not None else {}

    async def run(self) -> None:
        """Consume step topics until stopped, then drain in-flight steps."""
        await self._loop.run()

    def stop(self) -> None:
        """Stop fetching; in-flight steps get ``worker.shutdown_grace`` seconds."""
        self._stopping.set()
        self._loop.stop()

    async def _publish(self, what: str, messages: list[Outgoing]) -> None:
        # Never give up on a publish that acknowledges work: retry until the bus is back.
        # If stopping cuts this short the offset stays uncommitted and the command is
        # delivered again, which the coordinator's ledger makes harmless.
        await retrying(
            f"worker: publish {what}",
            lambda: self._rt.publish(messages),
            self._never,
            recovery=self._rt.recovery,
        )

    async def _read(self, record: Record) -> tuple[StepDefinition, StepCommand] | None:
        """The step and command of ``record``; None once an unreadable one is dead-lettered."""
        rt = self._rt
        step = self._steps.get(record.topic)
        too_big = rt.oversized(record)
        if too_big is not None:
            await self._publish("dead letter", [too_big])
            return None
        try:
            cmd = decode_command(record.value)
        except SerializationError as exc:
            await self._publish(
                "dead letter", [rt.dead_letter(record, f"undecodable command: {exc}")]
            )
            return None
        if step is None or (cmd.workflow, cmd.step) != (step.workflow, step.name):
            reason = f"unknown step {cmd.workflow}.{cmd.step} on topic {record.topic}"
            letter = rt.dead_letter(
                record, reason, workflow_id=cmd.workflow_id, workflow=cmd.workflow, step=cmd.step
            )
            await self._publish("dead letter", [letter])
            return None
        return step, cmd

    async def _quarantine(self, record: Record, starts: int) -> None:
        """Fail the attempt of a command that keeps killing its worker (a crash loop):
        a dead letter with the record, and a ``completeStep`` that is not retriable."""
        read = await self._read(record)
        if read is None:
            return
        _, cmd = read
        rt = self._rt
        error = ErrorInfo(
            message=(
                f"crash loop: step {cmd.workflow}.{cmd.step} was started {starts} times "
                "by worker processes that were lost before it finished (killed, out of "
                "memory, os._exit); quarantined after worker.max_deliveries="
                f"{rt.settings.worker.max_deliveries}"
            ),
            type="CrashLoop",
            retriable=False,
        )
        letter = rt.dead_letter(
            record,
            error.message,
            workflow_id=cmd.workflow_id,
            workflow=cmd.workflow,
            step=cmd.step,
            error=error,
        )
        completed = _completed(cmd, utcnow(), outcome="failed", error=error)
        key = cmd.workflow_id.encode()
        done = Outgoing(rt.topics.coordinator, encode_line(completed), key, record.headers)
        await self._publish("quarantine", [letter, done])

    async def _handle(self, record: Record) -> None:
        rt = self._rt
        read = await self._read(record)
        if read is None:
            return
        step, cmd = read
        key = cmd.workflow_id.encode()
        tel = rt.telemetry
        # Take a slot first: a step waiting for one is still pending, not started.
        async with self._semaphore:
            t0 = time.perf_counter()
            span: Span | None = None
            headers = record.headers  # passed on unchanged when this process does not trace
            if tel.tracing:
                span = tel.span(
                    f"process {record.topic}",
                    kind=SpanKind.CONSUMER,
                    parent=tel.extract(record.headers),
                    attributes={
                        Attr.MESSAGING_SYSTEM: tel.system,
                        Attr.MESSAGING_OPERATION_TYPE: Attr.PROCESS,
                        Attr.MESSAGING_DESTINATION_NAME: record.topic,
                        Attr.MESSAGING_DESTINATION_PARTITION_ID: str(record.partition),
                        Attr.MESSAGING_KAFKA_OFFSET: record.offset,
                        Attr.HMS_WORKFLOW_ID: cmd.workflow_id,
                        Attr.HMS_ATTEMPT: cmd.attempt,
                    },
                )
                if span.is_recording():
                    headers = tel.inject(span)
            started = StepStarted(
                workflow_id=cmd.workflow_id,
                workflow=cmd.workflow,
                step=cmd.step,
                seq=cmd.seq,
                attempt=cmd.attempt,
                worker=rt.process_id,
            )
            started_line = encode_line(started)
            # Announced on its own, a slow step's start is history only.
            started_out = Outgoing(rt.topics.events, started_line, key=key, headers=headers)
            announcer = _Announcer(rt, started_out, self._announce_after)
            self.running += 1
            try:
                completed = await self._execute(step, cmd, started.ts, span)
            except BaseException as exc:
                if span is not None:
                    end_span(span, error=exc)
                raise
            finally:
                self.running -= 1
                announcer.cancel()
        elapsed = time.perf_counter() - t0
        announced = await announcer.announced()
        # One record for the coordinator: the step's start (unless it was announced on
        # its own), then its completion, as JSON lines.
        limit = rt.settings.transport.max_message_bytes
        head = b"" if announced else started_line
        try:
            out = [Outgoing(rt.topics.coordinator, head + encode_line(completed), key, headers)]
            found = oversized(out, limit)
            if found is not None:
                raise SerializationError(
                    f"step result is {found[1]} bytes encoded, over the bus limit of {limit} "
                    "(transport.max_message_bytes): keep large data elsewhere and pass a "
                    "reference"
                )
        except SerializationError as exc:
            completed = self._failure(cmd, started.ts, exc, retriable=False)
            body = head + encode_line(completed)
            out = [Outgoing(rt.topics.coordinator, body, key=key, headers=headers)]
        try:
            await self._publish("completeStep", out)
        finally:
            self.done += 1
            failed = completed.error if completed.outcome == "failed" else None
            if span is not None:
                span.set_attribute(Attr.HMS_OUTCOME, completed.outcome)
                if failed is not None:
                    span.set_attribute(Attr.ERROR_TYPE, failed.type)
                end_span(span, error=failed.message if failed is not None else None)
            if tel.metrics:
                tel.step_duration.record(
                    elapsed,
                    tel.attrs(
                        Attr.HMS_WORKFLOW,
                        cmd.workflow,
                        Attr.HMS_STEP,
                        cmd.step,
                        Attr.HMS_OUTCOME,
                        completed.outcome,
                    ),
                )

    async def _execute(
        self, step: StepDefinition, cmd: StepCommand, started_at: Any, span: Span | None
    ) -> StepCompleted:
        assert step.handler is not None
        registry = self._rt.registry
        # The instance's own version of the definition, where this process has it.
        wf = registry.version(step.workflow, cmd.version) or registry.workflows[step.workflow]
        where = f"step {step.qualname}"
        t0 = time.perf_counter()
        sealer = self._rt.sealer
        opened: list[str] = []  # sensitive values in clear: scrubbed from errors and logs
        try:
            clear = sealer.open(cmd.payload, opened)
            payload = validate_payload(wf.input_model(step.name), clear, where)
            ctx = StepContext(
                payload=payload,
                workflow_id=cmd.workflow_id,
                workflow=cmd.workflow,
                step=cmd.step,
                seq=cmd.seq,
                attempt=cmd.attempt,
                idempotency_key=cmd.idempotency_key,
                started_at=started_at,
                error=cmd.error,
                signal=sealer.open(cmd.signal, opened) if cmd.signal is not None else None,
                log=StepLogger(
                    self._step_logs[step.qualname],
                    {
                        "workflow_id": cmd.workflow_id,
                        "step": cmd.step,
                        "seq": cmd.seq,
                        "attempt": cmd.attempt,
                    },
                    secrets=opened,
                ),
            )
            # The handler's own spans (HTTP calls, queries) nest under the step's span.
            token = attach(span) if span is not None else None
            scope: asyncio.Timeout | None = None
            try:
                if step.timeout is None:
                    # No deadline, no scope: entering asyncio.timeout(None) costs a few
                    # microseconds a step and can never expire.
                    value = await step.handler(ctx)
                else:
                    async with asyncio.timeout(step.timeout) as scope:
                        value = await step.handler(ctx)
            except TimeoutError:
                if scope is not None and scope.expired():
                    raise _StepTimeout(f"timed out after {step.timeout:g}s") from None
                raise
            finally:
                if token is not None:
                    detach(token)
            directive = normalize_result(value, cmd.payload)
            _check_directive(wf, cmd, directive, self._rt.settings.coordinator.max_fanout)
        except asyncio.CancelledError:
            raise
        except PayloadValidationError as exc:
            return self._failure(cmd, started_at, exc, opened, retriable=False)
        except _StepTimeout as exc:
            log.warning("%s %s attempt %d: %s", step.qualname, cmd.workflow_id, cmd.attempt, exc)
            return self._failure(
                cmd, started_at, exc, opened, retriable=True, type_name="TimeoutError"
            )
        except Fail as exc:
            return self._failure(cmd, started_at, exc, opened, retriable=False)
        except Exception as exc:
            retriable = exc.retriable if isinstance(exc, HmsBusError) else True
            trace = ""
            if not isinstance(exc, HmsBusError):
                # The traceback, with the step's sensitive values masked in it.
                trace = "\n" + "".join(traceback.format_exception(exc)).rstrip()
            log.warning(
                "%s %s attempt %d raised %s: %s%s",
                step.qualname,
                cmd.workflow_id,
                cmd.attempt,
                type(exc).__name__,
                mask_text(str(exc), opened),
                mask_text(trace, opened),
            )
            return self._failure(cmd, started_at, exc, opened, retriable=retriable)
        log.debug(
            "%s %s done in %.1f ms",
            step.qualname,
            cmd.workflow_id,
            1e3 * (time.perf_counter() - t0),
        )
        return _completed(
            cmd,
            started_at,
            outcome="succeeded",
            directive=directive if not sealer.active else _sealed(sealer, directive, opened),
        )

    @staticmethod
    def _failure(
        cmd: StepCommand,
        started_at: Any,
        exc: BaseException,
        secrets: list[str] | None = None,
        *,
        retriable: bool,
        type_name: str | None = None,
    ) -> StepCompleted:
        message = mask_text(str(exc) or repr(exc), secrets or ())
        error = ErrorInfo(
            message=message, type=type_name or type(exc).__name__, retriable=retriable
        )
        return _completed(cmd, started_at, outcome="failed", error=error)


def _check_directive(
    wf: WorkflowDefinition, cmd: StepCommand, directive: Directive, max_fanout: int
) -> None:
    """Refuse, as a non-retriable failure of the step, a return value that cannot be
    routed: an unknown step or group, a branch that routes, too many items."""

    def refuse(message: str) -> NoReturn:
        raise HmsBusError(message, retriable=False)

    kind = directive.kind
    if cmd.branch is not None and kind != "default":
        refuse(
            f"step {cmd.step!r} is a branch of {cmd.branch.group!r}, so it must return data "
            f"(or None), not a routing result ({kind}): the join decides where the workflow "
            "goes"
        )
    targets = [directive.step]
    if kind == "wait":
        targets.append(directive.on_timeout)
    for target in targets:
        if target is None or wf.has_target(target):
            continue
        group = wf.group_of(target)
        if group is not None:
            refuse(
                f"returned next step {target!r}, a branch of the parallel group "
                f"{group.name!r}: route to the group instead"
            )
        known = ", ".join([*(s for s in wf.steps if wf.group_of(s) is None), *wf.groups])
        refuse(
            f"returned next step {target!r}, which workflow {wf.name!r} does not have "
            f"(its steps: {known})"
        )
    if kind == "each":
        name = directive.target or ""
        if name not in wf.steps or wf.group_of(name) is not None:
            refuse(
                f"Each() names step {name!r}, which is "
                + ("a parallel branch" if name in wf.steps else f"not a step of {wf.name!r}")
            )
        if len(directive.items or ()) > max_fanout:
            refuse(
                f"Each() got {len(directive.items or ())} items, over the limit of "
                f"{max_fanout} (coordinator.max_fanout)"
            )


def _sealed(sealer: Sealer, directive: Directive, opened: list[str]) -> Directive:
    """The directive with its data (and a fan-out's items) sealed."""
    update: dict[str, Any] = {"data": sealer.seal(directive.data, opened)}
    if directive.items is not None:
        update["items"] = [sealer.seal(item, opened) for item in directive.items]
    return directive.model_copy(update=update)


def _completed(cmd: StepCommand, started_at: Any, **outcome: Any) -> StepCompleted:
    """The ``completeStep`` event of ``cmd``'s attempt, finished now."""
    return StepCompleted(
        workflow_id=cmd.workflow_id,
        workflow=cmd.workflow,
        step=cmd.step,
        seq=cmd.seq,
        attempt=cmd.attempt,
        payload=cmd.payload,
        started_at=started_at,
        finished_at=utcnow(),
        version=cmd.version,
        branch=cmd.branch,
        cause=cmd.error,
        signal=cmd.signal,
        **outcome,
    )


class _Announcer:
    """Publishes a step's ``stepStarted`` once it has run for ``after`` seconds.

    A step that finishes sooner sends ``stepStarted`` together with its
    ``completeStep``, in one call and in that order: the history is the same (the
    event carries the real start time), but a fast step costs one send instead of two,
    and its coordinator does not wake for a ``stepStarted`` just before the
    ``completeStep`` it is waiting for. ``after=0`` announces every step at once.
    """

    __slots__ = ("_handle", "_message", "_rt", "_task")

    def __init__(self, rt: Runtime, message: Outgoing, after: float) -> None:
        self._rt = rt
        self._message = message
        self._task: asyncio.Task[bool] | None = None
        self._handle: asyncio.TimerHandle | None = None
        if after <= 0:
            self._fire()
        else:
            self._handle = asyncio.get_running_loop().call_later(after, self._fire)

    def _fire(self) -> None:
        self._handle = None
        self._task = asyncio.create_task(self._send(), name="hms-worker-step-started")

    async def _send(self) -> bool:
        try:
            await self._rt.publish([self._message])
            return True
        except Exception as exc:
            log.warning("worker: stepStarted not published (%s); it goes with completeStep", exc)
            return False

    def cancel(self) -> None:
        """The step ended: do not announce it separately any more."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    async def announced(self) -> bool:
        """True once ``stepStarted`` is durably published on its own; False if it was
        not sent (the step was quick) or failed, so the caller must send it."""
        if self._task is None:
            return False
        return await self._task


class _StepTimeout(Exception):
    """The step's own ``timeout=`` ran out (not a TimeoutError raised by the handler)."""
