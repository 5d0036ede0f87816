"""Starting a workflow: register it in the store, then publish its start.

A start is keyed by its ``workflow_id``: :func:`launch` registers the id once, and
publishes ``workflowStarted`` to the coordinator's input topic under the span that opens
the workflow's trace. :meth:`~hms_bus._client.Client.start` starts a workflow through it,
and so does the scheduler for a schedule's tick. :func:`coordinator_record` is how any
client request (a start, a cancel, a signal, a redrive) is put on that topic, and
:func:`ambiguous` is the error a start that failed part-way raises.
"""

from __future__ import annotations

from opentelemetry.trace import SpanKind

from ._codec import encode_line
from ._envelope import utcnow
from ._errors import ConfigError, HmsBusError, StoreError, TransportError
from ._events import (
    CancelRequested,
    RedriveRequested,
    SignalSent,
    WorkflowStarted,
)
from ._telemetry import Attr, Telemetry, end_span
from ._topics import Topics
from .store import StartResult, StateStore
from .transport import Outgoing, Transport

__all__ = ["ambiguous", "coordinator_record", "launch"]


def coordinator_record(
    topics: Topics, event: WorkflowStarted | CancelRequested | SignalSent | RedriveRequested
) -> Outgoing:
    """A record for the coordinator's input topic."""
    return Outgoing(topics.coordinator, encode_line(event), key=event.workflow_id.encode())


async def launch(
    transport: Transport,
    store: StateStore,
    topics: Topics,
    telemetry: Telemetry | None,
    event: WorkflowStarted,
    record: Outgoing | None = None,
) -> StartResult:
    """Register ``event``'s workflow in the store, then publish its start (the second
    half of :meth:`Client.start`, also how the scheduler starts a schedule's tick).

    A workflow id is registered once: a repeat finds it (``created`` False) and publishes
    nothing, unless the first call stopped between the two, when it publishes the start
    on record again (the coordinator decides it once). ``record`` is ``event`` already
    encoded for the coordinator's topic, if the caller has it.

    Raises:
        ConfigError: the id belongs to a workflow of another name.
        StoreError, TransportError: as the store and the bus raise them.
    """
    result = await store.register_start(
        event.workflow_id, event.workflow, event.payload, event.event_id, utcnow()
    )
    if not result.created and result.workflow != event.workflow:
        raise ConfigError(
            f"workflow_id {event.workflow_id!r} already belongs to a {result.workflow!r} workflow"
        )
    if result.created or not result.confirmed:
        if not result.created:
            event = event.model_copy(
                update={"event_id": result.start_event_id, "payload": result.payload}
            )
            record = None
        if record is None:
            record = coordinator_record(topics, event)
        await _publish_start(transport, telemetry, event, record)
    return result


async def _publish_start(
    transport: Transport, tel: Telemetry | None, event: WorkflowStarted, record: Outgoing
) -> None:
    """Publish ``workflowStarted`` to the coordinator, under the span that opens the
    workflow's trace."""
    if tel is None or not tel.tracing:
        await transport.publish([record])
        return
    # A trace of its own per workflow, linked to the caller's span (if any).
    span = tel.span(
        f"start {event.workflow}",
        kind=SpanKind.PRODUCER,
        parent=None,
        links=tel.caller_links(),
        attributes={
            Attr.MESSAGING_SYSTEM: tel.system,
            Attr.MESSAGING_OPERATION_TYPE: Attr.SEND,
            Attr.MESSAGING_DESTINATION_NAME: record.topic,
            Attr.HMS_WORKFLOW_ID: event.workflow_id,
        },
    )
    try:
        await transport.publish(
            [Outgoing(record.topic, record.value, key=record.key, headers=tel.inject(span))]
        )
    except BaseException as exc:
        end_span(span, error=exc)
        raise
    span.end()


def ambiguous(exc: StoreError | TransportError, workflow: str, workflow_id: str) -> HmsBusError:
    """A retriable failure of ``start``, saying how to repeat it safely.

    The workflow may or may not be registered (a connection can break after the store
    committed and before it answered), but a start is keyed by its ``workflow_id``: the
    store registers an id once, and a repeated start of a registered but unconfirmed
    workflow publishes its original start event again, which the ledger decides once.
    """
    error = type(exc)(
        f"starting {workflow!r} {workflow_id!r} failed, and may or may not have taken "
        f"effect: {exc.message}. Calling start({workflow!r}, ..., "
        f"workflow_id={workflow_id!r}) again is safe: it starts the workflow at most once",
        retriable=True,
    )
    error.workflow_id = workflow_id
    return error
