"""The client API: start workflows, query them, wait for them, cancel, signal and redrive them.

A :class:`Client` needs a bus and a store that a node opened (:mod:`hms_bus._node`),
the definitions (to validate a start), and the sealer (to seal what a start puts on
the bus and to mask what people read). It runs no role: a process whose roles run
elsewhere is a node without roles and a client. Every answer it gives has sensitive
values masked. A start is registered and published by :mod:`hms_bus._launch`; where a
redrive resumes is decided by :mod:`hms_bus._redrive`.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ._definitions import Registry, check_name, validate_payload
from ._envelope import new_id
from ._errors import ConfigError, NotFoundError, StoreError, TransportError
from ._events import (
    CancelRequested,
    RedriveRequested,
    SignalSent,
    WorkflowEvent,
    WorkflowStarted,
)
from ._launch import ambiguous, coordinator_record, launch
from ._pii import Sealer
from ._redrive import redrive_request
from ._results import to_jsonable
from ._settings import Settings
from ._status import WorkflowPage, WorkflowState, WorkflowStatus
from ._topics import Topics
from ._waiting import Waiters
from .store import ListQuery, StateStore
from .transport import Outgoing, Transport, oversized

if TYPE_CHECKING:
    from ._node import Node

__all__ = ["Client", "Started"]

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
    _client: Client = field(repr=False, compare=False)

    async def wait(self, timeout: float | None = None) -> WorkflowStatus:
        """Same as ``mgmt.wait(self.workflow_id, timeout)``."""
        return await self._client.wait(self.workflow_id, timeout)

    async def status(self) -> WorkflowStatus | None:
        """Same as ``mgmt.status(self.workflow_id)``."""
        return await self._client.status(self.workflow_id)


class Client:
    """Start, query, wait for and cancel workflows on a connected node (see module docs).

    Args:
        node: the node whose bus and store the client uses; while it is not connected
            every call raises :class:`HmsBusError`.
    """

    def __init__(self, node: Node) -> None:
        self._node = node
        self._waiters: Waiters | None = None
        self._watching = asyncio.Lock()

    # -- what the node holds --------------------------------------------------------------

    @property
    def _settings(self) -> Settings:
        return self._node.settings

    @property
    def _registry(self) -> Registry:
        return self._node.registry

    @property
    def _topics(self) -> Topics:
        return self._node.topics

    def _bus(self) -> Transport:
        return self._node.connected_transport()

    def _store(self) -> StateStore:
        self._bus()
        store = self._node.store
        assert store is not None
        return store

    @property
    def sealer(self) -> Sealer:
        """Seals, opens and masks sensitive values (while connected)."""
        self._bus()
        sealer = self._node.sealer
        assert sealer is not None
        return sealer

    def close(self) -> None:
        """The node is closing: stop waiting (pending waits fail)."""
        if self._waiters is not None:
            self._waiters.close()
        self._waiters = None

    def fail_waits(self, error: BaseException) -> None:
        """A role of the node crashed: answer every pending and later wait with ``error``."""
        if self._waiters is not None:
            self._waiters.fail(error)

    # -- starting -----------------------------------------------------------------------

    async def start(
        self,
        workflow: str,
        payload: Any = None,
        *,
        workflow_id: str | None = None,
        version: str | None = None,
    ) -> Started:
        """Start an instance of ``workflow`` with ``payload`` (see :meth:`Management.start`)."""
        transport = self._bus()
        wf = self._registry.workflow(workflow)
        if version is not None:
            pinned = self._registry.version(workflow, version)
            if pinned is None:
                known = ", ".join(self._registry.versions.get(workflow, {}))
                raise ConfigError(
                    f"workflow {workflow!r} has no version {version!r} in this process "
                    f"(defined: {known})"
                )
            wf = pinned
        if workflow_id is None:
            workflow_id = uuid.uuid4().hex
        elif not isinstance(workflow_id, str) or not workflow_id or len(workflow_id) > _MAX_ID:
            raise ConfigError(
                f"workflow_id must be a non-empty string of at most {_MAX_ID} characters, "
                f"got {workflow_id!r}"
            )
        elif not workflow_id.isprintable():
            raise ConfigError(f"workflow_id must be printable text, got {workflow_id!r}")
        model = wf.start_model()
        validated = validate_payload(model, payload, f"workflow {workflow!r}")
        body = self.sealer.seal(to_jsonable(validated))
        event = WorkflowStarted(
            workflow_id=workflow_id,
            workflow=workflow,
            payload=body,
            service=self._settings.service_name,
            version=wf.version,
        )
        record = self._record(event)  # fails here, before anything is stored, if not JSON
        limit = self._settings.transport.max_message_bytes
        found = oversized([record], limit)
        if found is not None:
            raise TransportError(
                f"the start payload of {workflow!r} is {found[1]} bytes encoded, over the "
                f"bus limit of {limit} (transport.max_message_bytes); keep large data "
                "elsewhere and pass a reference",
                retriable=False,
            )
        try:
            result = await launch(
                transport, self._store(), self._topics, self._node.telemetry, event, record
            )
        except (StoreError, TransportError) as exc:
            if not exc.retriable:
                raise
            raise ambiguous(exc, workflow, workflow_id) from (exc.__cause__ or exc)
        return Started(workflow_id, workflow, result.created, self)

    def _record(
        self, event: WorkflowStarted | CancelRequested | SignalSent | RedriveRequested
    ) -> Outgoing:
        """A record for the coordinator's input topic."""
        return coordinator_record(self._topics, event)

    # -- queries ------------------------------------------------------------------------

    async def status(self, workflow_id: str) -> WorkflowStatus | None:
        """The workflow's status with its steps, masked, or None if the store does not
        know it."""
        return self._masked(await self._store().get_workflow(workflow_id))

    def _masked(self, status: WorkflowStatus | None) -> WorkflowStatus | None:
        if status is None:
            return None
        sealer = self.sealer
        return status.model_copy(
            update={"payload": sealer.mask(status.payload), "result": sealer.mask(status.result)}
        )

    async def history(self, workflow_id: str) -> list[WorkflowEvent]:
        """The workflow's events in order, as the projector recorded them, masked."""
        sealer = self.sealer
        out: list[WorkflowEvent] = []
        for event in await self._store().history(workflow_id):
            update: dict[str, Any] = {
                f: sealer.mask(getattr(event, f))
                for f in ("payload", "result")
                if getattr(event, f, None) is not None
            }
            directive = getattr(event, "directive", None)
            if directive is not None:
                update["directive"] = directive.model_copy(
                    update={"data": sealer.mask(directive.data)}
                )
            out.append(event.model_copy(update=update) if update else event)
        return out

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
        """Workflows newest first, filtered, one page, masked (see :meth:`Management.list`)."""
        if not 1 <= limit <= 1000:
            raise ConfigError(f"limit must be between 1 and 1000, got {limit}")
        try:
            state = WorkflowState(status) if status is not None else None
        except ValueError:
            raise ConfigError(
                f"unknown status {status!r} (statuses: {', '.join(s.value for s in WorkflowState)})"
            ) from None
        page = await self._store().list_workflows(
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

    # -- waiting ------------------------------------------------------------------------

    async def wait(
        self, workflow_id: str, timeout: float | None = None, *, until_step: str | None = None
    ) -> WorkflowStatus:
        """The workflow's status once it is terminal, or ``until_step`` succeeded
        (see :meth:`Management.wait`)."""
        self._node.raise_if_failed()
        waiters = await self._waiting()
        status = await waiters.wait(workflow_id, until_step=until_step, timeout=timeout)
        masked = self._masked(status)
        assert masked is not None
        return masked

    async def _waiting(self) -> Waiters:
        """This process's waiters, watching the store from the first wait on."""
        store = self._store()
        if self._waiters is None:
            async with self._watching:
                if self._waiters is None:
                    waiters = Waiters(store.get_workflows)
                    await store.watch(waiters.changed)
                    if self._node.failure is not None:
                        waiters.fail(self._node.role_failure())
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
        """Start a workflow and wait for its terminal status."""
        started = await self.start(workflow, payload, workflow_id=workflow_id)
        return await self.wait(started.workflow_id, timeout)

    # -- cancelling ---------------------------------------------------------------------

    async def cancel(self, workflow_id: str, reason: str | None = None) -> bool:
        """Ask for the workflow to be cancelled; False if it has already ended."""
        transport = self._bus()
        status = await self._store().get_workflow(workflow_id)
        if status is None:
            raise NotFoundError(f"no workflow {workflow_id!r}")
        if status.terminal:
            return False
        event = CancelRequested(workflow_id=workflow_id, workflow=status.workflow, reason=reason)
        await transport.publish([self._record(event)])
        return True

    # -- redriving -------------------------------------------------------------------------

    async def redrive(
        self, workflow_id: str, from_step: str | None = None, *, timeout: float = 30.0
    ) -> bool:
        """Resume a failed or cancelled workflow (see :meth:`Management.redrive`)."""
        transport = self._bus()
        store = self._store()
        status = await store.get_workflow(workflow_id)
        if status is None:
            raise NotFoundError(f"no workflow {workflow_id!r}")
        if status.status not in (WorkflowState.FAILED, WorkflowState.CANCELLED):
            return False
        wf = self._registry.version(status.workflow, status.version)
        if wf is None:
            wf = self._registry.workflow(status.workflow)
        history = await store.history(workflow_id)
        event = redrive_request(wf, status, history, from_step)
        await transport.publish([self._record(event)])
        waiters = await self._waiting()
        await waiters.wait(workflow_id, timeout=timeout, until_running=True)
        return True

    # -- signalling ------------------------------------------------------------------------

    async def signal(
        self, workflow_id: str, name: str, data: Any = None, *, signal_id: str | None = None
    ) -> bool:
        """Send the signal ``name`` with ``data`` to a workflow (see :meth:`Management.signal`)."""
        transport = self._bus()
        check_name("signal", name)
        if signal_id is not None and (
            not isinstance(signal_id, str) or not signal_id or len(signal_id) > _MAX_ID
        ):
            raise ConfigError(
                f"signal_id must be a non-empty string of at most {_MAX_ID} characters, "
                f"got {signal_id!r}"
            )
        status = await self._store().get_workflow(workflow_id)
        if status is None:
            raise NotFoundError(f"no workflow {workflow_id!r}")
        if status.terminal:
            return False
        event = SignalSent(
            workflow_id=workflow_id,
            workflow=status.workflow,
            signal=name,
            signal_id=signal_id or new_id(),
            data=self.sealer.seal(to_jsonable(data)),
        )
        record = self._record(event)
        limit = self._settings.transport.max_message_bytes
        found = oversized([record], limit)
        if found is not None:
            raise TransportError(
                f"the data of signal {name!r} is {found[1]} bytes encoded, over the bus "
                f"limit of {limit} (transport.max_message_bytes); keep large data elsewhere "
                "and pass a reference",
                retriable=False,
            )
        await transport.publish([record])
        return True
