"""The :class:`Management` object: definitions, handlers, roles and the client API."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Self

from opentelemetry import metrics as otel_metrics
from opentelemetry import trace as otel_trace
from opentelemetry.trace import SpanKind
from pydantic import BaseModel

from ._backends import redact
from ._definitions import Handler, Registry, StepDefinition, WorkflowDefinition, validate_payload
from ._errors import ConfigError, HmsBusError, NotFoundError, TransportError
from ._events import CancelRequested, Heartbeat, WorkflowStarted, encode, encode_line, utcnow
from ._pii import Sealer, sensitive_names
from ._results import to_jsonable
from ._retry import RetryPolicy
from ._settings import Settings, build_settings
from ._status import WorkflowPage, WorkflowState, WorkflowStatus
from ._telemetry import Telemetry, configure_from_environment, end_span, prometheus_reader
from ._topics import Topics
from ._waiting import Waiters
from .roles import Role, Runtime
from .roles.coordinator import Coordinator
from .roles.monitor import Monitor
from .roles.projector import Projector
from .roles.scheduler import Scheduler
from .roles.worker import Worker
from .store import ListQuery, StateStore, create_store
from .transport import Outgoing, Transport, create_transport

__all__ = ["Management", "Started", "init"]

log = logging.getLogger("hms_bus")

_MAX_ID = 200


@dataclass(frozen=True, slots=True)
class Started:
    """What :meth:`Management.start` returns.

    Attributes:
        workflow_id: the instance id (caller-chosen or generated).
        workflow: the workflow's name.
        created: False when a workflow with this id existed already (idempotent start).
    """

    workflow_id: str
    workflow: str
    created: bool
    _mgmt: Management = field(repr=False, compare=False)

    async def wait(self, timeout: float | None = None) -> WorkflowStatus:
        """Same as ``mgmt.wait(self.workflow_id, timeout)``."""
        return await self._mgmt.wait(self.workflow_id, timeout)

    async def status(self) -> WorkflowStatus | None:
        """Same as ``mgmt.status(self.workflow_id)``."""
        return await self._mgmt.status(self.workflow_id)


class Management:
    """One application's workflows, handlers and connections.

    Create it with :func:`hms_bus.init`. Define workflows and register handlers, then
    ``async with mgmt:`` connects to the bus and store and runs the roles this process
    is configured for (``roles=``); leaving the block stops them gracefully. Every
    registration lives on this object: two Managements never see each other's.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        tracer_provider: otel_trace.TracerProvider | None = None,
        meter_provider: otel_metrics.MeterProvider | None = None,
    ) -> None:
        self._settings = settings
        self._tracer_provider = tracer_provider
        self._meter_provider = meter_provider
        self._telemetry: Telemetry | None = None
        self._server: Any = None
        self._sealer: Sealer | None = None
        self._registry = Registry()
        self._topics = Topics(settings.namespace)
        self._transport: Transport | None = None
        self._store: StateStore | None = None
        self._roles: dict[str, Role] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._process_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._stop = asyncio.Event()
        self._failure: BaseException | None = None
        self._waiters: Waiters | None = None
        self._watching: asyncio.Lock | None = None

    def __repr__(self) -> str:
        return (
            f"<Management {self._settings.service_name!r} bus={redact(self._settings.bus_url)!r} "
            f"roles={','.join(self._settings.roles) or '()'}>"
        )

    # -- configuration ------------------------------------------------------------------

    @property
    def settings(self) -> Settings:
        """The settings in force."""
        return self._settings

    @property
    def workflows(self) -> dict[str, WorkflowDefinition]:
        """Defined workflows by name (read-only use)."""
        return dict(self._registry.workflows)

    @property
    def topics(self) -> Topics:
        """Topic and group names in this namespace."""
        return self._topics

    def required_topics(self) -> list[str]:
        """Every topic this app uses: ``hms.coordinator``, ``hms.events``,
        ``hms.dead-letter``, ``hms.heartbeats`` and one per defined step, namespace
        included. They are created on connect (and by ``hms-bus topics --create``)."""
        t = self._topics
        steps = [t.step(d.workflow, d.name) for d in self._registry.all_steps()]
        return [t.coordinator, t.events, t.dead_letter, t.heartbeats, *steps]

    @property
    def process_id(self) -> str:
        """This process's id in heartbeats and ``stepStarted`` events."""
        return self._process_id

    def configure(self, **settings: Any) -> None:
        """Change settings before the Management is entered (the CLI sets roles this way).

        Takes the same keywords as :func:`init`: ``roles=``, ``bus=``, ``store=``,
        ``namespace=``, ``worker={"steps": [...]}``…
        """
        if self._transport is not None:
            raise HmsBusError("configure() must be called before 'async with mgmt'")
        current = self._settings.model_dump()
        sections = ("worker", "coordinator", "scheduler", "monitor", "transport", "postgres")
        for section in (*sections, "telemetry", "pii"):
            if isinstance(settings.get(section), dict):
                settings[section] = {**current[section], **settings[section]}
        renamed = {"bus": "bus_url", "store": "store_url"}
        updates = {renamed.get(k, k): v for k, v in settings.items() if v is not None}
        self._settings = build_settings(**{**current, **updates})
        self._topics = Topics(self._settings.namespace)

    def define_workflow(
        self,
        name: str,
        steps: Sequence[str],
        *,
        error_steps: Iterable[str] = (),
        input: type[BaseModel] | None = None,
        sla: timedelta | float | None = None,
        on_error: str | None = None,
        retry: RetryPolicy | None = None,
    ) -> WorkflowDefinition:
        """Define a workflow: its main path of steps, run in order.

        Args:
            name: the workflow's name (letters, digits, ``_``, ``-``).
            steps: the main path. A handler that returns plain data (or None) moves
                the workflow to the next step of this list; after the last one the
                workflow is ``completed`` with the last data as its result.
            error_steps: steps off the main path, reached only through ``on_error=``
                or ``Next(...)``; when one returns plain data the workflow completes.
            input: pydantic model the start payload must match (checked at ``start``).
            sla: the workflow should be terminal this long after it starts; a breach
                raises an ``slaBreached`` event and a log line (it does not fail it).
            on_error: default error-path step for steps that set no ``on_error``.
            retry: default :class:`RetryPolicy` for the workflow's steps.

        Raises:
            ConfigError: for bad or duplicate names, or an unknown ``on_error`` step.
        """
        return self._registry.define(
            name,
            steps,
            error_steps=error_steps,
            input=input,
            sla=sla,
            on_error=on_error,
            retry=retry,
        )

    def on_step(
        self,
        name: str,
        *,
        retry: RetryPolicy | None = None,
        timeout: timedelta | float | None = None,
        on_error: str | None = None,
        input: type[BaseModel] | None = None,
        sla: timedelta | float | None = None,
    ) -> Callable[[Handler], Handler]:
        """Register the decorated ``async def`` as the handler of ``"workflow.step"``.

        Args:
            name: ``"<workflow>.<step>"`` of a defined workflow.
            retry: attempts and backoff for exceptions other than :class:`Fail`.
            timeout: seconds (or timedelta) one attempt may run; a timeout is retried.
            on_error: step to route to when this step fails for good (the error path).
            input: pydantic model the step's payload must match; the handler then gets
                an instance in ``ctx.payload``. A payload that does not match fails the
                step at once (and, for the first step, is refused at ``start``).
            sla: report (not fail) the step if it runs longer than this.

        Raises:
            ConfigError: unknown workflow or step, a second handler for one step, a
                handler that is not ``async def``, or a bad option.
        """

        def register(handler: Handler) -> Handler:
            self._registry.register(
                name, handler, retry=retry, timeout=timeout, on_error=on_error, input=input, sla=sla
            )
            return handler

        return register

    # -- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        """True between :meth:`connect` and :meth:`close`."""
        return self._transport is not None

    async def connect(self) -> None:
        """Open the bus and store, create topics and start this process's roles."""
        if self._transport is not None:
            raise HmsBusError("this Management is already running")
        s = self._settings
        served = self._served_steps()
        transport = create_transport(s.bus_url, **s.transport.options())
        store = create_store(s.store_url, namespace=s.namespace, **s.postgres.model_dump())
        await transport.__aenter__()
        try:
            await store.__aenter__()
        except BaseException:
            await transport.__aexit__(None, None, None)
            raise
        self._transport, self._store = transport, store
        self._stop.clear()
        self._failure = None
        try:
            telemetry = self._telemetry = self._make_telemetry(transport.url)
            sealer = self._sealer = self._make_sealer(transport.url)
            await transport.ensure_topics(self.required_topics())
            rt = Runtime(
                s,
                self._registry,
                transport,
                store,
                self._topics,
                self._process_id,
                telemetry,
                sealer,
            )
            factories: dict[str, Callable[[], Role]] = {
                "projector": lambda: Projector(rt),
                "coordinator": lambda: Coordinator(rt),
                "scheduler": lambda: Scheduler(rt),
                "monitor": lambda: Monitor(rt),
                "worker": lambda: Worker(rt, served),
            }
            for name in s.roles:
                if name == "worker" and not served:
                    log.warning("worker role: no step handlers registered; not consuming")
                    continue
                self._roles[name] = factories[name]()
            for role in self._roles.values():
                self._tasks.append(self._spawn(role))
            self._observe(telemetry)
            if s.telemetry.http_port is not None:
                await self._serve_http()
            await self._until_ready()
            if self._roles and s.monitor.heartbeat_interval > 0:
                self._tasks.append(asyncio.create_task(self._heartbeats(), name="hms-heartbeat"))
        except BaseException:
            await self.close()
            raise
        log.info(
            "%s connected (bus %s, store %s, roles %s)",
            s.service_name,
            redact(transport.url),
            redact(store.url),
            ",".join(self._roles) or "none",
        )

    def _make_telemetry(self, bus_url: str) -> Telemetry:
        t = self._settings.telemetry
        if self._tracer_provider is None or self._meter_provider is None:
            configure_from_environment(
                self._settings.service_name, prometheus=t.http_port is not None and t.metrics
            )
        return Telemetry(
            service_name=self._settings.service_name,
            system="kafka" if bus_url.startswith("kafka") else "memory",
            tracing=t.tracing,
            metrics=t.metrics,
            tracer_provider=self._tracer_provider,
            meter_provider=self._meter_provider,
        )

    def _make_sealer(self, bus_url: str) -> Sealer:
        s = self._settings
        names = sensitive_names(self._registry.models()) | set(s.pii.fields)
        sealer = Sealer(names, s.pii.key_list())
        if names and sealer.generated and not bus_url.startswith("memory:"):
            log.warning(
                "sensitive fields (%s) are sealed with a key of this process only: set the "
                "same HMS_PII__KEYS on every process, or workers elsewhere cannot open them",
                ", ".join(sorted(names)),
            )
        return sealer

    @property
    def sealer(self) -> Sealer:
        """Seals, opens and masks sensitive values (while connected)."""
        self._require()
        assert self._sealer is not None
        return self._sealer

    def lag(self) -> dict[str, dict[str, int]]:
        """Records not yet fetched by each role of this process, per topic."""
        out: dict[str, dict[str, int]] = {}
        for name, role in self._roles.items():
            per_topic: dict[str, int] = {}
            lag = getattr(role, "lag", None)
            for (topic, _), n in (lag() if lag is not None else {}).items():
                per_topic[topic] = per_topic.get(topic, 0) + n
            out[name] = per_topic
        return out

    def _observe(self, telemetry: Telemetry) -> None:
        if not telemetry.metrics:
            return
        role_attr = "hms.role"

        def in_flight() -> list[tuple[float, dict[str, Any]]]:
            worker = self._roles.get("worker")
            return [(worker.running, {})] if isinstance(worker, Worker) else []

        def lag() -> list[tuple[float, dict[str, Any]]]:
            return [
                (n, {role_attr: role, "messaging.destination.name": topic})
                for role, topics in self.lag().items()
                for topic, n in topics.items()
            ]

        telemetry.observe_in_flight(in_flight)
        telemetry.observe_lag(lag)
        monitor = self.monitor
        if monitor is not None:
            telemetry.observe_processes(monitor.process_counts)

    def health(self) -> tuple[bool, dict[str, Any]]:
        """This process's health, as ``/healthz`` reports it: (healthy, details).

        Healthy once every role has joined its group and while none has crashed and the
        process is not stopping.
        """
        running = self._transport is not None and not self._stop.is_set()
        crashed = [t.get_name() for t in self._tasks if t.done() and not t.cancelled()]
        joined = {name: _is_ready(role) for name, role in self._roles.items()}
        healthy = running and not crashed and all(joined.values())
        worker = self._roles.get("worker")
        details: dict[str, Any] = {
            "status": "ok" if healthy else ("stopping" if self._stop.is_set() else "unhealthy"),
            "service": self._settings.service_name,
            "process_id": self._process_id,
            "roles": {name: ("ready" if ok else "starting") for name, ok in joined.items()},
            "in_flight": worker.running if isinstance(worker, Worker) else 0,
            "lag": {role: sum(t.values()) for role, t in self.lag().items()},
        }
        if crashed:
            details["crashed"] = crashed
        if self._failure is not None:
            details["error"] = repr(self._failure)
        return healthy, details

    async def _serve_http(self) -> None:
        from ._http import StatusServer

        t = self._settings.telemetry
        reader = prometheus_reader()
        if t.http_port is None:  # pragma: no cover - checked by the caller
            return
        metrics = reader.render if reader is not None and t.metrics else None
        self._server = StatusServer(t.http_host, t.http_port, health=self.health, metrics=metrics)
        await self._server.start()
        log.info(
            "serving /healthz%s on http://%s:%d",
            " and /metrics" if metrics is not None else "",
            t.http_host,
            self._server.port,
        )

    @property
    def http_port(self) -> int | None:
        """The port ``/healthz`` and ``/metrics`` are served on, while connected."""
        return self._server.port if self._server is not None else None

    async def _until_ready(self) -> None:
        """Wait until every role consumes (on Kafka, a group join takes a moment), so
        work started right after entering is picked up at once; raise if one crashed."""
        if not self._roles:
            return
        ready: asyncio.Future[Any] = asyncio.ensure_future(
            asyncio.gather(*(r.ready() for r in self._roles.values()))
        )
        stopped: asyncio.Future[Any] = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({ready, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for f in (ready, stopped):
                f.cancel()
            # Collect both, so an interrupted connect leaves no unretrieved exception.
            await asyncio.gather(ready, stopped, return_exceptions=True)
        self._raise_if_failed()

    def _spawn(self, role: Role) -> asyncio.Task[None]:
        task = asyncio.create_task(role.run(), name=f"hms-{role.name}")

        def crashed(t: asyncio.Task[None]) -> None:
            if not t.cancelled() and t.exception() is not None and not self._stop.is_set():
                self._failure = t.exception()
                log.critical("role %s stopped unexpectedly", role.name, exc_info=t.exception())
                if self._waiters is not None:
                    self._waiters.fail(self._role_failure())
                self._stop.set()

        task.add_done_callback(crashed)
        return task

    def _served_steps(self) -> list[StepDefinition]:
        s = self._settings
        if "worker" not in s.roles:
            return []
        if s.worker.steps is not None:
            chosen = [self._registry.resolve(q) for q in s.worker.steps]
            missing = [d.qualname for d in chosen if d.handler is None]
            if missing:
                raise ConfigError(
                    f"--steps names steps without a handler in this app: {', '.join(missing)}"
                )
            return chosen
        steps = self._registry.all_steps()
        missing = [d.qualname for d in steps if d.handler is None]
        if missing and s.bus_url.rstrip("/") == "memory:":
            raise ConfigError(
                f"steps without a handler: {', '.join(missing)} (on a private memory:// bus "
                "no other process can run them; register them with @mgmt.on_step)"
            )
        if missing:
            log.warning("no handler in this process for: %s", ", ".join(missing))
        return [d for d in steps if d.handler is not None]

    async def close(self) -> None:
        """Stop the roles gracefully (workers drain), then close the bus and store."""
        if self._transport is None:
            return
        self._stop.set()
        for role in self._roles.values():
            role.stop()
        if self._tasks:
            grace = self._settings.worker.shutdown_grace + 10
            _, pending = await asyncio.wait(self._tasks, timeout=grace)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._roles and self._settings.monitor.heartbeat_interval > 0:
            with contextlib.suppress(Exception):
                await self._transport.publish([self._heartbeat(stopping=True)])
        self._tasks.clear()
        self._roles.clear()
        if self._server is not None:
            await self._server.close()
            self._server = None
        if self._telemetry is not None:
            self._telemetry.forget_sources()
        if self._waiters is not None:
            self._waiters.close()
        transport, store = self._transport, self._store
        self._transport = self._store = None
        self._waiters = self._watching = None
        try:
            if store is not None:
                await store.__aexit__(None, None, None)
        finally:
            await transport.__aexit__(None, None, None)

    async def serve(self) -> None:
        """Run the roles until :meth:`request_stop` (or a role crashes, which re-raises)."""
        self._require()
        await self._stop.wait()
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            raise self._role_failure()

    def _role_failure(self) -> HmsBusError:
        error = HmsBusError(
            f"a role of this process stopped unexpectedly ({self._failure!r}); "
            "see the log for the traceback"
        )
        error.__cause__ = self._failure
        return error

    def request_stop(self) -> None:
        """Make :meth:`serve` return (signal handlers call this)."""
        self._stop.set()

    def role(self, name: str) -> Role | None:
        """The running role called ``name`` in this process, if any."""
        return self._roles.get(name)

    @property
    def monitor(self) -> Monitor | None:
        """The monitor role of this process, if it runs one."""
        m = self._roles.get("monitor")
        return m if isinstance(m, Monitor) else None

    def _heartbeat(self, *, stopping: bool = False) -> Outgoing:
        worker = self._roles.get("worker")
        hb = Heartbeat(
            process_id=self._process_id,
            service=self._settings.service_name,
            roles=list(self._roles),
            host=socket.gethostname(),
            pid=os.getpid(),
            steps=worker.steps if isinstance(worker, Worker) else [],
            in_flight=worker.running if isinstance(worker, Worker) else 0,
            steps_done=worker.done if isinstance(worker, Worker) else 0,
            lag={role: sum(t.values()) for role, t in self.lag().items()},
            interval=self._settings.monitor.heartbeat_interval,
            stopping=stopping,
        )
        return Outgoing(self._topics.heartbeats, encode(hb), key=self._process_id.encode())

    async def _heartbeats(self) -> None:
        interval = self._settings.monitor.heartbeat_interval
        while not self._stop.is_set():
            try:
                await self._require().publish([self._heartbeat()])
            except Exception as exc:
                log.warning("heartbeat not sent: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), interval)

    def _require(self) -> Transport:
        if self._transport is None:
            raise HmsBusError(
                f"Management {self._settings.service_name!r} is not connected: "
                "use 'async with mgmt:' (or await mgmt.connect()) first"
            )
        return self._transport

    @property
    def _st(self) -> StateStore:
        self._require()
        assert self._store is not None
        return self._store

    # -- client API ---------------------------------------------------------------------

    async def start(
        self, workflow: str, payload: Any = None, *, workflow_id: str | None = None
    ) -> Started:
        """Start an instance of ``workflow`` with ``payload``.

        A caller-chosen ``workflow_id`` makes the call idempotent: starting the same id
        again returns the existing workflow (``created=False``) and starts nothing. If
        an earlier call registered the id but failed before the start event was
        published, the repeat publishes it.

        Raises:
            ConfigError: unknown workflow, bad workflow_id, or an id already used by
                another workflow.
            PayloadValidationError: the payload does not match the declared ``input=``.
            SerializationError: the payload is not JSON-encodable.
            TransportError: the payload is over ``transport.max_message_bytes``
                (``retriable=False``; nothing was stored), or the bus is unreachable.
        """
        transport = self._require()
        wf = self._registry.workflow(workflow)
        if workflow_id is None:
            workflow_id = uuid.uuid4().hex
        elif not isinstance(workflow_id, str) or not workflow_id or len(workflow_id) > _MAX_ID:
            raise ConfigError(
                f"workflow_id must be a non-empty string of at most {_MAX_ID} characters, "
                f"got {workflow_id!r}"
            )
        elif not workflow_id.isprintable():
            raise ConfigError(f"workflow_id must be printable text, got {workflow_id!r}")
        model = wf.input_model(wf.first_step)
        validated = validate_payload(model, payload, f"workflow {workflow!r}")
        body = self.sealer.seal(to_jsonable(validated))
        event = WorkflowStarted(
            workflow_id=workflow_id,
            workflow=workflow,
            payload=body,
            service=self._settings.service_name,
        )
        encoded = encode_line(event)  # fails here, before anything is stored, if not JSON
        limit = self._settings.transport.max_message_bytes
        if len(encoded) + len(workflow_id) > limit:
            raise TransportError(
                f"the start payload of {workflow!r} is {len(encoded)} bytes encoded, over the "
                f"bus limit of {limit} (transport.max_message_bytes); keep large data "
                "elsewhere and pass a reference",
                retriable=False,
            )
        result = await self._st.register_start(
            workflow_id, workflow, body, event.event_id, utcnow()
        )
        if not result.created and result.workflow != workflow:
            raise ConfigError(
                f"workflow_id {workflow_id!r} already belongs to a {result.workflow!r} workflow"
            )
        if result.created or not result.confirmed:
            if not result.created:
                event = event.model_copy(
                    update={"event_id": result.start_event_id, "payload": result.payload}
                )
                encoded = encode_line(event)
            await self._publish_start(transport, event, encoded)
        return Started(workflow_id, workflow, result.created, self)

    async def _publish_start(
        self, transport: Transport, event: WorkflowStarted, body: bytes
    ) -> None:
        """Publish ``workflowStarted`` to the coordinator, under the span that opens the
        workflow's trace."""
        tel = self._telemetry
        topic = self._topics.coordinator
        key = event.workflow_id.encode()
        if tel is None or not tel.tracing:
            await transport.publish([Outgoing(topic, body, key=key)])
            return
        # A trace of its own per workflow, linked to the caller's span (if any).
        span = tel.span(
            f"start {event.workflow}",
            kind=SpanKind.PRODUCER,
            parent=None,
            links=tel.caller_links(),
            attributes={
                "messaging.system": tel.system,
                "messaging.operation.type": "send",
                "messaging.destination.name": topic,
                "hms.workflow_id": event.workflow_id,
            },
        )
        try:
            await transport.publish([Outgoing(topic, body, key=key, headers=tel.inject(span))])
        except BaseException as exc:
            end_span(span, error=exc)
            raise
        span.end()

    async def status(self, workflow_id: str) -> WorkflowStatus | None:
        """The workflow's status with its steps, or None if the store does not know it.

        Sensitive values in its payload and result are masked.
        """
        return self._masked(await self._st.get_workflow(workflow_id))

    def _masked(self, status: WorkflowStatus | None) -> WorkflowStatus | None:
        if status is None:
            return None
        sealer = self.sealer
        return status.model_copy(
            update={"payload": sealer.mask(status.payload), "result": sealer.mask(status.result)}
        )

    async def wait(
        self, workflow_id: str, timeout: float | None = None, *, until_step: str | None = None
    ) -> WorkflowStatus:
        """Wait until the workflow is terminal and return its status (completed or failed).

        With ``until_step``, return as soon as a step of that name has succeeded (or the
        workflow is terminal): a caller that needs the outcome of one step (a payment
        initiated) need not wait for the steps scheduled after it (a status check an
        hour later).

        Raises:
            NotFoundError: the store does not know ``workflow_id``.
            WaitTimeoutError: (a TimeoutError) it was not terminal within ``timeout`` seconds.
        """
        self._raise_if_failed()
        waiters = await self._waiting()
        status = await waiters.wait(workflow_id, until_step=until_step, timeout=timeout)
        masked = self._masked(status)
        assert masked is not None
        return masked

    async def _waiting(self) -> Waiters:
        """This process's waiters, watching the store from the first wait on."""
        store = self._st
        if self._waiters is None:
            if self._watching is None:
                self._watching = asyncio.Lock()
            async with self._watching:
                if self._waiters is None:
                    waiters = Waiters(store.get_workflows)
                    await store.watch(waiters.changed)
                    if self._failure is not None:
                        waiters.fail(self._role_failure())
                    self._waiters = waiters
        return self._waiters

    async def run(
        self,
        workflow: str,
        payload: Any = None,
        *,
        workflow_id: str | None = None,
        timeout: float | None = None,
    ) -> WorkflowStatus:
        """Start a workflow and wait for its terminal status (see :meth:`start`, :meth:`wait`)."""
        started = await self.start(workflow, payload, workflow_id=workflow_id)
        return await self.wait(started.workflow_id, timeout)

    async def history(self, workflow_id: str) -> list[Any]:
        """The workflow's lifecycle events in order, as the projector recorded them.

        Sensitive values in payloads, step results and the workflow's result are masked.
        """
        sealer = self.sealer
        out = []
        for event in await self._st.history(workflow_id):
            fields = {f: getattr(event, f, None) for f in ("payload", "result", "directive")}
            masked = {f: sealer.mask(v) for f, v in fields.items() if v is not None}
            out.append(event.model_copy(update=masked) if masked else event)
        return out

    async def cancel(self, workflow_id: str, reason: str | None = None) -> bool:
        """Ask for the workflow to be cancelled; False if it has already ended.

        No further step is scheduled once the coordinator handles the request; a step
        already running finishes, but its result is ignored.

        Raises:
            NotFoundError: the store does not know ``workflow_id``.
        """
        transport = self._require()
        status = await self._st.get_workflow(workflow_id)
        if status is None:
            raise NotFoundError(f"no workflow {workflow_id!r}")
        if status.terminal:
            return False
        event = CancelRequested(workflow_id=workflow_id, workflow=status.workflow, reason=reason)
        await transport.publish(
            [Outgoing(self._topics.coordinator, encode_line(event), key=workflow_id.encode())]
        )
        return True

    async def list(
        self,
        workflow: str | None = None,
        status: WorkflowState | str | None = None,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> WorkflowPage:
        """Workflows newest first, optionally of one workflow and/or status, one page.

        Pass the page's ``next_cursor`` as ``cursor`` for the next page.
        """
        if not 1 <= limit <= 1000:
            raise ConfigError(f"limit must be between 1 and 1000, got {limit}")
        try:
            state = WorkflowState(status) if status is not None else None
        except ValueError:
            raise ConfigError(
                f"unknown status {status!r} (statuses: {', '.join(s.value for s in WorkflowState)})"
            ) from None
        page = await self._st.list_workflows(
            ListQuery(
                workflow=workflow,
                status=state,
                since=since,
                until=until,
                limit=limit,
                cursor=cursor,
            )
        )
        items = [self._masked(item) for item in page.items]
        return page.model_copy(update={"items": [i for i in items if i is not None]})


def init(
    service_name: str = "hms-bus",
    *,
    bus: str | None = None,
    store: str | None = None,
    roles: str | Sequence[str] | None = None,
    tracer_provider: otel_trace.TracerProvider | None = None,
    meter_provider: otel_metrics.MeterProvider | None = None,
    **settings: Any,
) -> Management:
    """Create a :class:`Management`.

    Args:
        service_name: names this application in heartbeats, logs and traces.
        bus: message bus URL; default ``HMS_BUS_URL``, else ``memory://``.
        store: state store URL; default ``HMS_STORE_URL``, else ``memory://``.
        roles: what this process runs when entered: ``"all"``, a list of
            ``worker``/``coordinator``/``projector``/``scheduler``/``monitor``, or ``()``
            for a pure client. Default ``HMS_ROLES``, else all.
        tracer_provider, meter_provider: OpenTelemetry providers for this Management's
            spans and metrics; default the global ones, which the standard ``OTEL_*``
            variables configure (nothing is exported unless configured).
        **settings: any other setting (``namespace=``, ``worker={"concurrency": 8}``,
            …); see :class:`hms_bus.Settings`.

    Raises:
        ConfigError: an unknown setting, a bad value or a bus/store URL whose scheme
            does not exist.
    """
    s = build_settings(
        service_name=service_name, bus_url=bus, store_url=store, roles=roles, **settings
    )
    # Fail fast on a bad URL scheme, before anything is defined on the object.
    create_transport(s.bus_url, **s.transport.options())
    create_store(s.store_url, **s.postgres.model_dump())
    return Management(s, tracer_provider=tracer_provider, meter_provider=meter_provider)


def _is_ready(role: Role) -> bool:
    loop = getattr(role, "_loop", None)
    joined = getattr(loop, "joined", None)
    return bool(joined.is_set()) if joined is not None else True
