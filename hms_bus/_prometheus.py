"""Prometheus text exposition of OpenTelemetry SDK metrics, by OpenTelemetry's own exporter.

:class:`PrometheusReader` is the ``PrometheusMetricReader`` of
``opentelemetry-exporter-prometheus`` with a ``prometheus_client.CollectorRegistry`` of
its own: give it to a ``MeterProvider`` and serve :meth:`~PrometheusReader.render` on
``/metrics``. The registry is per reader, never prometheus_client's global one, so
several meter providers in one process (several Managements, or tests) each expose only
their own metrics and never clash over a name.

The exporter follows OpenTelemetry's Prometheus compatibility specification:

- names: ``.`` and other characters outside ``[a-zA-Z0-9:]`` become ``_``, and the unit
  is appended (``s`` → ``_seconds``, ``By`` → ``_bytes``; ``1`` and annotations such as
  ``{step}`` add nothing), so ``hms.step.duration`` (s) is ``hms_step_duration_seconds``;
- a monotonic Sum is a ``counter`` named ``…_total``; a non-monotonic Sum or a Gauge is a
  ``gauge``; a Histogram is a ``histogram`` (cumulative ``_bucket{le=…}`` series up to
  ``le="+Inf"``, with ``_count`` and ``_sum``);
- attributes become labels (``hms.workflow`` → ``hms_workflow``), with the scope's
  ``otel_scope_name``, ``otel_scope_version`` and ``otel_scope_schema_url``; the
  resource is the ``target_info`` gauge.
"""

from __future__ import annotations

import threading

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

__all__ = ["CONTENT_TYPE", "PrometheusReader"]

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
"""The ``Content-Type`` of what :meth:`PrometheusReader.render` returns (text format 0.0.4)."""


class PrometheusReader(PrometheusMetricReader):
    """A pull reader that renders its ``MeterProvider``'s metrics for a Prometheus scrape.

    ``MeterProvider(metric_readers=[reader])``, then serve :meth:`render`. It collects
    only when rendered, with cumulative temporality, as Prometheus expects.

    Args:
        registry: the prometheus_client registry it registers with; a new one by
            default. Pass one to expose other prometheus_client collectors beside it.
    """

    def __init__(self, *, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        """The registry :meth:`render` exposes."""
        super().__init__(registry=self.registry)
        self._render_lock = threading.Lock()

    def render(self) -> str:
        """Collect now and return the text exposition (:data:`CONTENT_TYPE`).

        Thread-safe: concurrent calls collect one after another (the exporter queues
        what it collects until the next exposition, so two at once could swap their
        data). Collecting runs the callbacks of observable instruments in the calling
        thread. Returns ``""`` while the provider has nothing to report.
        """
        with self._render_lock:
            return generate_latest(self.registry).decode()
