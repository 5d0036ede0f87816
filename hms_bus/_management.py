"""The :class:`Management` object: one application's definitions, its node and its client.

A Management holds what an application defines (workflows, step handlers, schedules:
the definition-time API it inherits from :mod:`hms_bus._defining`) and its settings,
and, once entered, runs two parts that know nothing of each other's internals:

- the node (:mod:`hms_bus._node`): the bus and store connections, this process's roles,
  heartbeats, health and ``/metrics``;
- the client (:mod:`hms_bus._client`): start, status, wait, list, history, cancel,
  signal, redrive.

It is a thin façade over the two, so that an application deals with one object.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Self

from opentelemetry import metrics as otel_metrics
from opentelemetry import trace as otel_trace

from ._backends import open_bus, open_store, redact
from ._client import Client, Started
from ._defining import Defining
from ._definitions import StepDefinition
from ._errors import HmsBusError
from ._events import WorkflowEvent
from ._node import Node
from ._pii import Sealer
from ._settings import Settings, build_settings
from ._status import WorkflowPage, WorkflowState, WorkflowStatus
from ._topics import Topics
from .roles import Role
from .roles.coordinator import inboxes
from .roles.monitor import Monitor
from .store import StateStore
from .transport import Transport

__all__ = ["Management", "Started", "init"]


class Management(Defining):
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
        super().__init__()
        self._process_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._providers = (tracer_provider, meter_provider)
        self._build(settings)

    def _build(self, settings: Settings) -> None:
        self._settings = settings
        self._topics = Topics(settings.namespace)
        self._node = Node(
            settings,
            self._registry,
            self._topics,
            self._process_id,
            tracer_provider=self._providers[0],
            meter_provider=self._providers[1],
        )
        self._client = Client(self._node)
        self._node.on_failure = self._client.fail_waits

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
    def topics(self) -> Topics:
        """Topic and group names in this namespace."""
        return self._topics

    def required_topics(self) -> list[str]:
        """Every topic this app uses: ``hms.coordinator``, ``hms.events``,
        ``hms.dead-letter``, ``hms.heartbeats``, one per defined step and one inbox per
        workflow version (``hms.coordinator.<workflow>.<version>``), namespace included.
        They are created on connect (and by ``hms-bus topics --create``)."""
        t = self._topics
        steps = [t.step(d.workflow, d.name) for d in self._registry.all_steps()]
        boxes = inboxes(self._registry, t)
        return [t.coordinator, t.events, t.dead_letter, t.heartbeats, *steps, *boxes]

    @property
    def process_id(self) -> str:
        """This process's id in heartbeats and ``stepStarted`` events."""
        return self._process_id

    def configure(self, **settings: Any) -> None:
        """Change settings before the Management is entered (the CLI sets roles this way).

        Takes the same keywords as :func:`init`: ``roles=``, ``bus=``, ``store=``,
        ``namespace=``, ``worker={"steps": [...]}``…
        """
        if self.connected:
            raise HmsBusError("configure() must be called before 'async with mgmt'")
        current = self._settings.model_dump()
        sections = (
            "worker",
            "coordinator",
            "scheduler",
            "retention",
            "monitor",
            "transport",
            "postgres",
        )
        for section in (*sections, "telemetry", "ui", "pii"):
            if isinstance(settings.get(section), dict):
                settings[section] = {**current[section], **settings[section]}
        renamed = {"bus": "bus_url", "store": "store_url"}
        updates = {renamed.get(k, k): v for k, v in settings.items() if v is not None}
        self._build(build_settings(**{**current, **updates}))

    # -- lifecycle (the node) -------------------------------------------------------------

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
        return self._node.transport is not None

    async def connect(self) -> None:
        """Open the bus and store, create topics and start this process's roles."""
        await self._node.connect(self.required_topics())

    async def close(self) -> None:
        """Stop the roles gracefully (workers drain), then close the bus and store."""
        if self.connected:
            self._client.close()
        await self._node.close()

    @property
    def closed_cleanly(self) -> bool:
        """False after a :meth:`close` that cut work short: steps still running when
        ``worker.shutdown_grace`` ran out, or commits the bus never took (the broker was
        gone). That work is delivered again, to this process or another."""
        return self._node.clean

    async def serve(self) -> None:
        """Run the roles until :meth:`request_stop` (or a role crashes, which re-raises)."""
        self._require()
        await self._node.serve()

    def request_stop(self) -> None:
        """Make :meth:`serve` return (signal handlers call this)."""
        self._node.request_stop()

    def role(self, name: str) -> Role | None:
        """The running role called ``name`` in this process, if any."""
        return self._node.roles.get(name)

    @property
    def monitor(self) -> Monitor | None:
        """The monitor role of this process, if it runs one."""
        return self._node.monitor

    def health(self) -> tuple[bool, dict[str, Any]]:
        """This process's health, as ``/healthz`` reports it: (healthy, details).

        Healthy once every role has joined its group and while none has crashed and the
        process is not stopping.
        """
        return self._node.health()

    def lag(self) -> dict[str, dict[str, int]]:
        """Records not yet fetched by each role of this process, per topic."""
        return self._node.lag()

    @property
    def http_port(self) -> int | None:
        """The port ``/healthz`` and ``/metrics`` are served on, while connected."""
        return self._node.http_port

    @property
    def sealer(self) -> Sealer:
        """Seals, opens and masks sensitive values (while connected)."""
        return self._client.sealer

    def _require(self) -> Transport:
        return self._node.connected_transport()

    # What tests and the CLI's dry run reach for.

    @property
    def _transport(self) -> Transport | None:
        return self._node.transport

    @property
    def _st(self) -> StateStore:
        self._require()
        assert self._node.store is not None
        return self._node.store

    def _served_steps(self) -> list[StepDefinition]:
        return self._node.served_steps()

    # -- client API ---------------------------------------------------------------------

    async def start(
        self,
        workflow: str,
        payload: Any = None,
        *,
        workflow_id: str | None = None,
        version: str | None = None,
    ) -> Started:
        """Start an instance of ``workflow`` with ``payload``.

        A caller-chosen ``workflow_id`` makes the call idempotent: starting the same id
        again returns the existing workflow (``created=False``) and starts nothing. If
        an earlier call registered the id but failed before the start event was
        published, the repeat publishes it.

        The instance runs by the workflow's current definition (the version defined
        last), or by ``version``, one this process defines, for as long as it runs: a
        later change of the steps does not move it.

        Raises:
            ConfigError: unknown workflow or version, bad workflow_id, or an id already
                used by another workflow.
            PayloadValidationError: the payload does not match the declared ``input=``.
            SerializationError: the payload is not JSON-encodable.
            TransportError: the payload is over ``transport.max_message_bytes``
                (``retriable=False``; nothing was stored).
            TransportError, StoreError: (``retriable=True``) the bus or the store failed
                part-way, so the start may or may not have taken effect. The error's
                ``workflow_id`` is the id it started under (also one generated here), and
                calling ``start`` again with that ``workflow_id`` is safe: a workflow id
                is started at most once.
        """
        return await self._client.start(workflow, payload, workflow_id=workflow_id, version=version)

    async def status(self, workflow_id: str) -> WorkflowStatus | None:
        """The workflow's status with its steps, or None if the store does not know it.

        Sensitive values in its payload and result are masked.
        """
        return await self._client.status(workflow_id)

    async def wait(
        self, workflow_id: str, timeout: float | None = None, *, until_step: str | None = None
    ) -> WorkflowStatus:
        """Wait until the workflow is terminal and return its status (completed or failed).

        With ``until_step``, return as soon as a step of that name has succeeded (or the
        workflow is terminal): a caller that needs the outcome of one step (a payment
        initiated) need not wait for the steps scheduled after it (a status check an
        hour later). Waiting polls nothing: the store wakes the waiters a change
        concerns, in this process or any other.

        Raises:
            NotFoundError: the store does not know ``workflow_id``.
            WaitTimeoutError: (a TimeoutError) it was not terminal within ``timeout`` seconds.
        """
        return await self._client.wait(workflow_id, timeout, until_step=until_step)

    async def run(
        self,
        workflow: str,
        payload: Any = None,
        *,
        workflow_id: str | None = None,
        timeout: float | None = None,
    ) -> WorkflowStatus:
        """Start a workflow and wait for its terminal status (see :meth:`start`, :meth:`wait`)."""
        return await self._client.run(workflow, payload, workflow_id=workflow_id, timeout=timeout)

    async def history(self, workflow_id: str) -> list[WorkflowEvent]:
        """The workflow's lifecycle events in order, as the projector recorded them.

        Sensitive values in payloads, step results and the workflow's result are masked.
        """
        return await self._client.history(workflow_id)

    async def cancel(self, workflow_id: str, reason: str | None = None) -> bool:
        """Ask for the workflow to be cancelled; False if it has already ended.

        No further step is scheduled once the coordinator handles the request; a step
        already running finishes, but its result is ignored.

        Raises:
            NotFoundError: the store does not know ``workflow_id``.
        """
        return await self._client.cancel(workflow_id, reason)

    async def redrive(
        self, workflow_id: str, from_step: str | None = None, *, timeout: float = 30.0
    ) -> bool:
        """Resume a failed or cancelled workflow, after what failed it was fixed.

        It runs again from its failed step (or, for a cancelled one, its last unfinished
        step), or from ``from_step``, with the payload that step ran with, as a new step
        execution; a parallel branch resumes its whole group. Two redrives at once
        resume it once. Returns once the workflow shows ``running`` again.

        Returns:
            True once it runs again; False for a workflow that is running or completed.

        Raises:
            NotFoundError: the store does not know ``workflow_id``.
            ConfigError: ``from_step`` is not a step of the workflow, or has no payload on
                record (it never finished an attempt).
            WaitTimeoutError: it was not running again within ``timeout`` seconds (no
                coordinator took the redrive).
        """
        return await self._client.redrive(workflow_id, from_step, timeout=timeout)

    async def signal(
        self, workflow_id: str, name: str, data: Any = None, *, signal_id: str | None = None
    ) -> bool:
        """Send the signal ``name`` with ``data`` to a workflow.

        A workflow waiting for it (a step returned ``WaitFor(name)``) goes on; one that
        does not wait for it yet keeps it until it does. Each ``signal_id`` (default: a
        new one) is delivered once, so a caller that retries should pass its own.

        Returns:
            True once the signal is recorded (on the bus), False when the workflow has
            already ended.

        Raises:
            NotFoundError: the store does not know ``workflow_id``.
            ConfigError: a bad signal name or ``signal_id``.
        """
        return await self._client.signal(workflow_id, name, data, signal_id=signal_id)

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
        return await self._client.list(
            workflow, status, since=since, until=until, limit=limit, cursor=cursor
        )


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
    open_bus(s)
    open_store(s)
    return Management(s, tracer_provider=tracer_provider, meter_provider=meter_provider)
