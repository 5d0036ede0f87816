"""OpenTelemetry for hms-bus: spans across the bus, metrics, and setup from ``OTEL_*``.

Tracing
-------
One workflow is one trace. ``start`` opens the trace with a ``start <workflow>``
producer span (linked to the caller's span when there is one, so a request that starts
a thousand workflows does not become one enormous trace). Its W3C trace context rides
in the message headers (``traceparent``/``tracestate``, through the global propagator,
so ``OTEL_PROPAGATORS`` is honoured). The coordinator opens a producer span for each
decision it publishes (``schedule <step topic>``, ``retry <step topic>``, ``complete
<workflow>``…) as a child of the event that caused it, and the worker a consumer span
``process <step topic>`` for each step execution, as a child of the command's context;
the handler runs inside that span, so the spans of its own HTTP or database calls nest
under it, and its ``completeStep`` carries that span's context on to the next decision.
A command delayed by a durable timer keeps the context it was scheduled with. Headers
that are missing or do not parse start a new trace; they never fail a step.

Spans carry the OpenTelemetry messaging attributes (``messaging.system``,
``messaging.destination.name``, ``messaging.operation.type``/``.name``,
``messaging.consumer.group.name``, ``messaging.destination.partition.id``,
``messaging.kafka.offset``, ``messaging.message.id``) and ``hms.workflow``,
``hms.workflow_id``, ``hms.step``, ``hms.seq``, ``hms.attempt``, ``hms.outcome``. Their
names are the constants of :class:`Attr`, the OpenTelemetry ones taken from the
``opentelemetry-semantic-conventions`` package.

Metrics
-------
See :data:`METRICS`. Step durations, attempts and retries come from the workers and
the coordinator; workflow durations, SLA breaches, stuck steps and processes from the
monitor; consumer lag and steps in flight are observed from every process.

Providers
---------
Providers given to :func:`hms_bus.init` (``tracer_provider=``, ``meter_provider=``) win;
otherwise the global ones are used. When the application has set no global provider,
:func:`hms_bus._otel_setup.configure_from_environment` sets them from the standard
variables in :data:`OTEL_ENVIRONMENT`. With none set, nothing is exported and spans cost
next to nothing.

Beside this module
------------------
``_propagation`` reads and writes W3C trace context in message headers (with a fast path
for a lone ``traceparent``); ``_otel_sdk`` is the one adapter over OpenTelemetry
internals, pinned by tests to :data:`~hms_bus._otel_sdk.SDK_INTERNALS_CHECKED`;
``_otel_setup`` builds providers from ``OTEL_*``.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

from opentelemetry import baggage as otel_baggage
from opentelemetry import context as otel_context
from opentelemetry import metrics as otel_metrics
from opentelemetry import propagate
from opentelemetry import trace as otel_trace
from opentelemetry.context import Context
from opentelemetry.semconv._incubating.attributes import messaging_attributes as _messaging
from opentelemetry.semconv.attributes import error_attributes as _error
from opentelemetry.semconv.attributes import service_attributes as _service
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode

from ._otel_sdk import is_noop, sdk_drops_unsampled_children
from ._propagation import GETTER, ROOT, SLOW, Headers, fast_extract, w3c_only

__all__ = [
    "METRICS",
    "OTEL_ENVIRONMENT",
    "Attr",
    "Headers",
    "Telemetry",
    "attach",
    "detach",
    "end_span",
]

log = logging.getLogger("hms_bus.telemetry")

Source = Callable[[], Iterable[tuple[float, dict[str, Any]]]]
"""A metric source: (value, attributes) observations, called at each collection."""


class Attr:
    """The names of the attributes hms-bus puts on its spans and metrics.

    The OpenTelemetry ones come from ``opentelemetry-semantic-conventions`` (the messaging
    conventions are still in its ``_incubating`` package, which is where that package
    publishes them), so they follow the conventions' spelling; the ``HMS_*`` ones are
    hms-bus's own. Use these rather than string literals, so that one place decides
    what a span or a metric series is called.
    """

    MESSAGING_SYSTEM: Final = _messaging.MESSAGING_SYSTEM
    """``messaging.system``: ``kafka``, or ``memory`` for the embedded bus."""
    MESSAGING_OPERATION_TYPE: Final = _messaging.MESSAGING_OPERATION_TYPE
    """``messaging.operation.type``: :attr:`SEND` or :attr:`PROCESS`."""
    MESSAGING_OPERATION_NAME: Final = _messaging.MESSAGING_OPERATION_NAME
    MESSAGING_DESTINATION_NAME: Final = _messaging.MESSAGING_DESTINATION_NAME
    """``messaging.destination.name``: the topic."""
    MESSAGING_DESTINATION_PARTITION_ID: Final = _messaging.MESSAGING_DESTINATION_PARTITION_ID
    MESSAGING_KAFKA_OFFSET: Final = _messaging.MESSAGING_KAFKA_OFFSET
    MESSAGING_CONSUMER_GROUP_NAME: Final = _messaging.MESSAGING_CONSUMER_GROUP_NAME
    MESSAGING_MESSAGE_ID: Final = _messaging.MESSAGING_MESSAGE_ID
    ERROR_TYPE: Final = _error.ERROR_TYPE
    """``error.type``: the class name of a failed step's error."""
    SERVICE_NAME: Final = _service.SERVICE_NAME

    SEND: Final[str] = _messaging.MessagingOperationTypeValues.SEND.value
    """The ``messaging.operation.type`` of a publish."""
    PROCESS: Final[str] = _messaging.MessagingOperationTypeValues.PROCESS.value
    """The ``messaging.operation.type`` of a step execution."""

    HMS_WORKFLOW: Final = "hms.workflow"
    HMS_WORKFLOW_ID: Final = "hms.workflow_id"
    HMS_STEP: Final = "hms.step"
    HMS_SEQ: Final = "hms.seq"
    HMS_ATTEMPT: Final = "hms.attempt"
    HMS_OUTCOME: Final = "hms.outcome"
    """``succeeded`` or ``failed``."""
    HMS_STATUS: Final = "hms.status"
    """A workflow's final status."""
    HMS_TRANSITION: Final = "hms.transition"
    HMS_DUPLICATE: Final = "hms.duplicate"
    """Set on a coordinator span whose event was a redelivery."""
    HMS_ROLE: Final = "hms.role"
    STATE: Final = "state"
    """``hms.processes``: ``live`` or ``down``."""


# The standard OpenTelemetry variables hms-bus honours when it sets up export itself
# (see configure_from_environment); the SDK reads them.
OTEL_ENVIRONMENT: tuple[str, ...] = (
    "OTEL_SDK_DISABLED",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_TRACES_EXPORTER",
    "OTEL_METRICS_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_EXPORTER_OTLP_INSECURE",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_PROPAGATORS",
    "OTEL_METRIC_EXPORT_INTERVAL",
    "OTEL_BSP_SCHEDULE_DELAY",
    "OTEL_BSP_MAX_QUEUE_SIZE",
)

# name: (instrument kind, unit, description)
METRICS: dict[str, tuple[str, str, str]] = {
    "hms.step.duration": (
        "histogram",
        "s",
        "Time one step attempt took in its handler, by workflow, step and outcome; "
        "its count is the number of attempts",
    ),
    "hms.step.retries": ("counter", "{retry}", "Retries scheduled by the coordinator"),
    "hms.steps.in_flight": (
        "gauge",
        "{step}",
        "Step handlers running now in this process",
    ),
    "hms.workflow.duration": (
        "histogram",
        "s",
        "Start to end of a workflow, by workflow and final status (monitor)",
    ),
    "hms.consumer.lag": (
        "gauge",
        "{message}",
        "Records published but not yet fetched, per role and topic",
    ),
    "hms.sla.breaches": ("counter", "{breach}", "Step and workflow SLA deadlines missed"),
    "hms.steps.stuck": (
        "counter",
        "{step}",
        "Steps reported stuck: running past their timeout on a worker that is gone",
    ),
    "hms.dead_letters": ("counter", "{message}", "Records sent to the dead-letter topic"),
    "hms.processes": ("gauge", "{process}", "Processes the monitor knows, live or down"),
}

_DURATION_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    3600.0,
)


class Telemetry:
    """The spans and metrics of one :class:`~hms_bus.Management` (see module docs).

    ``tracing``/``metrics`` are False when the setting is off or no SDK provider is in
    force; the roles then skip the work altogether (and pass incoming trace headers on
    unchanged, so a trace still crosses this process).
    """

    def __init__(
        self,
        *,
        service_name: str,
        system: str,
        tracing: bool = True,
        metrics: bool = True,
        tracer_provider: otel_trace.TracerProvider | None = None,
        meter_provider: otel_metrics.MeterProvider | None = None,
    ) -> None:
        from . import __version__

        self.service_name = service_name
        self.system = system  # messaging.system: "kafka" or "memory"
        tp = tracer_provider or otel_trace.get_tracer_provider()
        mp = meter_provider or otel_metrics.get_meter_provider()
        self.tracing = tracing and not is_noop(tp)
        self.metrics = metrics and not is_noop(mp)
        self._tracer = tp.get_tracer("hms_bus", __version__)
        # With a parent-based sampler (the SDK's default, and what OTEL_TRACES_SAMPLER
        # names other than always_on/always_off/traceidratio give), a child of an
        # unsampled span is never recorded: skip asking the SDK for it.
        self._skip_unsampled = sdk_drops_unsampled_children(getattr(self._tracer, "sampler", None))
        # The default W3C propagator: headers are read and written directly (faster).
        # Read once: set propagators before connecting, as for any instrumentation.
        self._w3c = w3c_only()
        shared = _instruments(mp)
        self._shared = shared
        self.step_duration = shared.step_duration
        self.workflow_duration = shared.workflow_duration
        self.retries = shared.retries
        self.sla_breaches = shared.sla_breaches
        self.stuck_steps = shared.stuck_steps
        self.dead_letters = shared.dead_letters
        self._mine: list[tuple[list[Source], Source]] = []
        # Attribute dicts are reused: the SDK hashes them on every record.
        self._attrs: dict[tuple[str, ...], dict[str, Any]] = {}

    # -- metrics -------------------------------------------------------------------------

    def attrs(self, *pairs: str) -> dict[str, Any]:
        """A cached attribute dict from alternating names and values (hot paths)."""
        found = self._attrs.get(pairs)
        if found is None:
            found = self._attrs[pairs] = dict(zip(pairs[::2], pairs[1::2], strict=True))
        return found

    def observe_in_flight(self, source: Source) -> None:
        """Add a source of ``hms.steps.in_flight`` observations (value, attributes)."""
        self._add(self._shared.in_flight, source)

    def observe_lag(self, source: Source) -> None:
        """Add a source of ``hms.consumer.lag`` observations (value, attributes)."""
        self._add(self._shared.lag, source)

    def observe_processes(self, source: Source) -> None:
        """Add a source of ``hms.processes`` observations (value, attributes)."""
        self._add(self._shared.processes, source)

    def _add(self, sources: list[Source], source: Source) -> None:
        sources.append(source)
        self._mine.append((sources, source))

    def forget_sources(self) -> None:
        """Stop observing this Management's sources (it closed)."""
        for sources, source in self._mine:
            if source in sources:
                sources.remove(source)
        self._mine.clear()

    # -- tracing -------------------------------------------------------------------------

    def extract(self, headers: Headers) -> Context | None:
        """The trace context in ``headers``, or None (a new trace) when absent or bad."""
        if not headers:
            return None
        if self._w3c:
            fast = fast_extract(headers)
            if fast is not SLOW:
                return fast  # type: ignore[return-value]
        try:
            ctx = propagate.extract(headers, getter=GETTER)
        except Exception as exc:  # a broken propagator or header must not fail a step
            log.debug("ignoring unreadable trace headers: %s", exc)
            return None
        span_ctx = otel_trace.get_current_span(ctx).get_span_context()
        return ctx if span_ctx.is_valid else None

    def inject(self, span: Span) -> Headers:
        """Headers carrying ``span``'s context (empty when it has none)."""
        sc = span.get_span_context()
        if self._w3c and not sc.trace_state and not otel_baggage.get_all():
            # What the default W3C propagators write, without their per-call overhead.
            if not sc.is_valid:
                return ()
            value = f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{sc.trace_flags:02x}"
            return (("traceparent", value.encode()),)
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=otel_trace.set_span_in_context(span))
        return tuple((k, v.encode()) for k, v in carrier.items())

    def span(
        self,
        name: str,
        *,
        kind: SpanKind,
        parent: Context | None,
        attributes: dict[str, Any] | None,
        links: Sequence[Link] = (),
    ) -> Span:
        """Start a span (the caller ends it). ``parent=None`` starts a new trace."""
        if parent is not None and self._skip_unsampled:
            sc = otel_trace.get_current_span(parent).get_span_context()
            if not sc.trace_flags.sampled:
                return otel_trace.NonRecordingSpan(sc)  # carries the same context on
        return self._tracer.start_span(
            name,
            context=parent if parent is not None else ROOT,
            kind=kind,
            attributes=attributes,
            links=links,
        )

    def messaging(self, topic: str, operation: str, op_type: str, **extra: Any) -> dict[str, Any]:
        """OpenTelemetry messaging attributes for ``operation`` on ``topic``."""
        attrs: dict[str, Any] = {
            Attr.MESSAGING_SYSTEM: self.system,
            Attr.MESSAGING_DESTINATION_NAME: topic,
            Attr.MESSAGING_OPERATION_NAME: operation,
            Attr.MESSAGING_OPERATION_TYPE: op_type,
        }
        attrs.update({k.replace("__", "."): v for k, v in extra.items() if v is not None})
        return attrs

    @staticmethod
    def caller_links() -> list[Link]:
        """A link to the caller's current span, if it has one."""
        current = otel_trace.get_current_span().get_span_context()
        return [Link(current)] if current.is_valid else []


class _Instruments:
    """hms-bus's instruments on one meter provider, made once and shared by every
    Management using that provider (an instrument name may be registered only once)."""

    def __init__(self, mp: otel_metrics.MeterProvider) -> None:
        from . import __version__

        meter = mp.get_meter("hms_bus", __version__)
        self.in_flight: list[Source] = []
        self.lag: list[Source] = []
        self.processes: list[Source] = []

        def desc(name: str) -> str:
            return METRICS[name][2]

        self.step_duration = meter.create_histogram(
            "hms.step.duration",
            unit="s",
            description=desc("hms.step.duration"),
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self.workflow_duration = meter.create_histogram(
            "hms.workflow.duration",
            unit="s",
            description=desc("hms.workflow.duration"),
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self.retries = meter.create_counter(
            "hms.step.retries", unit="{retry}", description=desc("hms.step.retries")
        )
        self.sla_breaches = meter.create_counter(
            "hms.sla.breaches", unit="{breach}", description=desc("hms.sla.breaches")
        )
        self.stuck_steps = meter.create_counter(
            "hms.steps.stuck", unit="{step}", description=desc("hms.steps.stuck")
        )
        self.dead_letters = meter.create_counter(
            "hms.dead_letters", unit="{message}", description=desc("hms.dead_letters")
        )
        for name, unit, sources in (
            ("hms.steps.in_flight", "{step}", self.in_flight),
            ("hms.consumer.lag", "{message}", self.lag),
            ("hms.processes", "{process}", self.processes),
        ):
            meter.create_observable_gauge(
                name, callbacks=[_observe(sources)], unit=unit, description=desc(name)
            )


_INSTRUMENTS: weakref.WeakKeyDictionary[object, _Instruments] = weakref.WeakKeyDictionary()
_instruments_lock = threading.Lock()


def _instruments(mp: otel_metrics.MeterProvider) -> _Instruments:
    with _instruments_lock:
        found = _INSTRUMENTS.get(mp)
        if found is None:
            found = _INSTRUMENTS[mp] = _Instruments(mp)
        return found


def _observe(
    sources: list[Source],
) -> Callable[[otel_metrics.CallbackOptions], Iterable[otel_metrics.Observation]]:
    def callback(_: otel_metrics.CallbackOptions) -> Iterable[otel_metrics.Observation]:
        out: list[otel_metrics.Observation] = []
        for source in list(sources):
            try:
                out.extend(otel_metrics.Observation(v, a) for v, a in source())
            except Exception as exc:  # an observation must never break collection
                log.debug("metric source failed: %s", exc)
        return out

    return callback


def end_span(span: Span, *, error: BaseException | str | None = None) -> None:
    """End ``span``, marking it an error when ``error`` is given."""
    if error is not None:
        if isinstance(error, BaseException):
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, str(error) or type(error).__name__))
        else:
            span.set_status(Status(StatusCode.ERROR, error))
    span.end()


def attach(span: Span) -> object:
    """Make ``span`` current in this task (for the handler's own spans)."""
    return otel_context.attach(otel_trace.set_span_in_context(span))


def detach(token: object) -> None:
    """Undo :func:`attach`."""
    otel_context.detach(token)  # type: ignore[arg-type]
