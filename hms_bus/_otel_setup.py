"""Setting up OpenTelemetry from the standard ``OTEL_*`` variables, when the application
has not set its own global providers.

``OTEL_TRACES_EXPORTER`` / ``OTEL_METRICS_EXPORTER`` = ``otlp`` (``pip install
'hms-bus[otlp]'``), ``console`` or ``none``; ``OTEL_SDK_DISABLED=true`` turns it all off.
With neither set, nothing is exported. ``/metrics`` is served from a
:class:`~hms_bus._prometheus.PrometheusReader` (see :func:`prometheus_reader`).
"""

from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics as otel_metrics
from opentelemetry import trace as otel_trace

from ._otel_sdk import is_noop
from ._telemetry import Attr

if TYPE_CHECKING:
    from ._prometheus import PrometheusReader

__all__ = ["check_environment", "configure_from_environment", "prometheus_reader"]

log = logging.getLogger("hms_bus.telemetry")

_setup_lock = threading.Lock()
_configured = False
_prometheus: PrometheusReader | None = None


def configure_from_environment(service_name: str, *, prometheus: bool = False) -> None:
    """Set the global tracer and meter providers from the ``OTEL_*`` variables.

    Only when the application has not set its own global providers, and only once per
    process. ``prometheus=True`` adds a reader for the ``/metrics`` endpoint (see
    :func:`prometheus_reader`). ``OTEL_SDK_DISABLED=true`` turns all of it off.

    Raises:
        ConfigError: an exporter name that is not ``otlp``, ``console`` or ``none``, or
            ``otlp`` without the exporter package installed.
    """
    global _configured, _prometheus
    with _setup_lock:
        if _configured:
            return
        if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            _configured = True
            return
        traces = _exporter_names("OTEL_TRACES_EXPORTER")
        metrics = _exporter_names("OTEL_METRICS_EXPORTER")
        want_traces = bool(traces) and is_noop(otel_trace.get_tracer_provider())
        want_metrics = (bool(metrics) or prometheus) and is_noop(otel_metrics.get_meter_provider())
        if not want_traces and not want_metrics:
            _configured = True
            return
        from opentelemetry.sdk.resources import Resource

        attributes: dict[str, Any] = {}
        if not os.environ.get("OTEL_SERVICE_NAME") and f"{Attr.SERVICE_NAME}=" not in (
            os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
        ):
            attributes[Attr.SERVICE_NAME] = service_name
        resource = Resource.create(attributes)
        if want_traces:
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            tp = TracerProvider(resource=resource)
            for name in traces:
                tp.add_span_processor(BatchSpanProcessor(_span_exporter(name)))
            otel_trace.set_tracer_provider(tp)
        if want_metrics:
            from opentelemetry.sdk.metrics import MeterProvider
            from opentelemetry.sdk.metrics.export import (
                MetricReader,
                PeriodicExportingMetricReader,
            )

            readers: list[MetricReader] = [
                PeriodicExportingMetricReader(_metric_exporter(name)) for name in metrics
            ]
            if prometheus:
                from ._prometheus import PrometheusReader

                _prometheus = PrometheusReader()
                readers.append(_prometheus)
            otel_metrics.set_meter_provider(
                MeterProvider(resource=resource, metric_readers=readers)
            )
        _configured = True
        log.info(
            "OpenTelemetry: traces to %s, metrics to %s",
            ",".join(traces) or "the application's provider",
            ",".join(metrics + (["prometheus /metrics"] if _prometheus is not None else []))
            or "the application's provider",
        )


def check_environment() -> None:
    """Raise ConfigError for ``OTEL_*`` exporter names hms-bus cannot set up."""
    _exporter_names("OTEL_TRACES_EXPORTER")
    _exporter_names("OTEL_METRICS_EXPORTER")


def prometheus_reader() -> PrometheusReader | None:
    """The reader behind ``/metrics``, when :func:`configure_from_environment` made one."""
    return _prometheus


def _exporter_names(variable: str) -> list[str]:
    from ._errors import ConfigError

    names = [n.strip().lower() for n in os.environ.get(variable, "").split(",") if n.strip()]
    bad = [n for n in names if n not in ("otlp", "console", "none")]
    if bad:
        raise ConfigError(
            f"{variable}={os.environ[variable]!r}: unknown exporter(s) {', '.join(bad)}; "
            "hms-bus sets up otlp, console or none (or configure your own provider)"
        )
    return [n for n in names if n != "none"]


def _otlp_protocol(signal: str) -> str:
    return (
        os.environ.get(f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "grpc"
    ).strip()


def _missing_otlp(exc: ImportError) -> Exception:
    from ._errors import ConfigError

    return ConfigError(
        f"OTLP export needs the exporter package: pip install 'hms-bus[otlp]' ({exc})"
    )


def _span_exporter(name: str) -> Any:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    try:
        if _otlp_protocol("TRACES").startswith("http"):
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        else:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[assignment]
                OTLPSpanExporter,
            )
    except ImportError as exc:
        raise _missing_otlp(exc) from exc
    return OTLPSpanExporter()


def _metric_exporter(name: str) -> Any:
    if name == "console":
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter

        return ConsoleMetricExporter()
    try:
        if _otlp_protocol("METRICS").startswith("http"):
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
                OTLPMetricExporter,
            )
        else:
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (  # type: ignore[assignment]
                OTLPMetricExporter,
            )
    except ImportError as exc:
        raise _missing_otlp(exc) from exc
    return OTLPMetricExporter()
