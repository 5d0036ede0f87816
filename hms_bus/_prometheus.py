"""Prometheus text exposition (format 0.0.4) of OpenTelemetry SDK metrics.

:class:`PrometheusReader` is a pull reader given to a ``MeterProvider``; its
:meth:`~PrometheusReader.render` collects and returns the text a scrape of ``/metrics``
serves. The conversion follows OpenTelemetry's Prometheus compatibility spec:

- names: characters outside ``[a-zA-Z0-9_:]`` become ``_`` (runs of ``_`` collapse to
  one, a leading digit gets a ``_`` prefix); the unit is appended (``s`` → ``_seconds``,
  ``By`` → ``_bytes``, ``{request}`` and ``1`` → nothing, ``By/s`` → ``_bytes_per_second``)
  unless the name already ends with it;
- a monotonic Sum is a ``counter`` named ``…_total``, a non-monotonic Sum or a Gauge is
  a ``gauge``, a Histogram is a ``histogram`` (cumulative ``_bucket`` series up to
  ``le="+Inf"``, then ``_sum`` and ``_count``); exponential histograms and delta
  temporality are not supported and are skipped;
- attributes become labels (names sanitized like metric names, non-string values
  written as the attribute spec says), plus ``otel_scope_name`` and
  ``otel_scope_version``; the resource becomes the ``target_info`` gauge.

The same metric from several scopes or data points is one family with one ``# HELP``
and ``# TYPE``; a metric whose name clashes with a family of another type is dropped.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
from collections.abc import Mapping
from typing import Any

from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Histogram,
    Metric,
    MetricReader,
    MetricsData,
    Sum,
)
from opentelemetry.util.types import Attributes

__all__ = ["CONTENT_TYPE", "PrometheusReader", "metric_name", "render"]

log = logging.getLogger("hms_bus.prometheus")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The ``Content-Type`` of what :func:`render` returns."""

_UNITS = {
    "d": "days",
    "h": "hours",
    "min": "minutes",
    "s": "seconds",
    "ms": "milliseconds",
    "us": "microseconds",
    "ns": "nanoseconds",
    "By": "bytes",
    "KiBy": "kibibytes",
    "MiBy": "mebibytes",
    "GiBy": "gibibytes",
    "KBy": "kilobytes",
    "MBy": "megabytes",
    "GBy": "gigabytes",
    "m": "meters",
    "V": "volts",
    "A": "amperes",
    "J": "joules",
    "W": "watts",
    "g": "grams",
    "Cel": "celsius",
    "Hz": "hertz",
    "%": "percent",
    "1": "",  # the spec says "ratio"; the Python SDK's exporter and hms-bus say nothing
}
"""UCUM units and the Prometheus name suffix that stands for them."""
_PER_UNITS = {"s": "second", "min": "minute", "h": "hour", "d": "day", "w": "week"}
_ANNOTATION = re.compile(r"\{[^}]*\}")
_INVALID_NAME = re.compile(r"[^a-zA-Z0-9_:]")
_INVALID_LABEL = re.compile(r"[^a-zA-Z0-9_]")
_UNDERSCORES = re.compile(r"__+")


def _sanitize(name: str, invalid: re.Pattern[str]) -> str:
    name = _UNDERSCORES.sub("_", invalid.sub("_", name))
    return "_" + name if name[:1].isdigit() else name


def _unit_suffix(unit: str | None) -> str:
    unit = _ANNOTATION.sub("", unit or "").strip()
    if unit in _UNITS:
        return _UNITS[unit]
    top, per, bottom = unit.partition("/")
    if per and bottom:
        top = _UNITS.get(top, top)
        bottom = _PER_UNITS.get(bottom, bottom)
        unit = f"{top}_per_{bottom}" if top else f"per_{bottom}"
    return _sanitize(unit, _INVALID_LABEL).strip("_")


def metric_name(name: str, unit: str | None, *, counter: bool) -> str:
    """The Prometheus family name of an OpenTelemetry metric (see the module docstring)."""
    name = _sanitize(name, _INVALID_NAME)
    if counter and name.endswith("_total"):
        name = name[: -len("_total")]
    suffix = _unit_suffix(unit)
    if suffix and not f"_{name}".endswith(f"_{suffix}"):
        name = f"{name}_{suffix}"
    return _UNDERSCORES.sub("_", f"{name}_total" if counter else name)


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _label_value(value: Any) -> str:
    """An attribute value as a string, as OpenTelemetry's attribute spec says."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return _number(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    try:
        plain = dict(value) if isinstance(value, Mapping) else list(value)
        return json.dumps(plain, separators=(",", ":"), default=str)
    except TypeError:
        return str(value)


def _labels(attributes: Attributes) -> dict[str, str]:
    """Labels of ``attributes``; keys that sanitize alike join their values with ``;``."""
    labels: dict[str, str] = {}
    attributes = attributes or {}
    for key in sorted(attributes):
        name = _sanitize(key, _INVALID_LABEL) or "_"
        value = _label_value(attributes[key])
        labels[name] = f"{labels[name]};{value}" if name in labels else value
    return labels


def _escape(value: str, *, label: bool = True) -> str:
    """``value`` escaped for a label value, or (``label=False``) for ``# HELP`` text."""
    value = value.replace("\\", r"\\").replace("\n", r"\n")
    return value.replace('"', r"\"") if label else value


def _series(name: str, labels: Mapping[str, str], value: float) -> str:
    if not labels:
        return f"{name} {_number(value)}"
    text = ",".join(f'{key}="{_escape(val)}"' for key, val in labels.items())
    return f"{name}{{{text}}} {_number(value)}"


class _Family:
    """The header and sample lines of one Prometheus metric family."""

    __slots__ = ("help", "lines", "seen", "type")

    def __init__(self, type_: str, help_: str) -> None:
        self.type = type_
        self.help = help_
        self.lines: list[str] = []
        self.seen: set[str] = set()

    def add(self, name: str, labels: Mapping[str, str], value: float) -> None:
        line = _series(name, labels, value)
        series = line.rpartition(" ")[0]
        if series in self.seen:  # two scopes alike but for attributes or schema: keep one
            log.warning("dropping duplicate Prometheus series %s", series)
            return
        self.seen.add(series)
        self.lines.append(line)


def _add_metric(families: dict[str, _Family], metric: Metric, scope: dict[str, str]) -> None:
    data = metric.data
    if isinstance(data, Sum | Histogram) and (
        data.aggregation_temporality is not AggregationTemporality.CUMULATIVE
    ):
        log.debug("skipping %s: delta temporality", metric.name)
        return
    if isinstance(data, Sum):
        type_ = "counter" if data.is_monotonic else "gauge"
    elif isinstance(data, Gauge):
        type_ = "gauge"
    elif isinstance(data, Histogram):
        type_ = "histogram"
    else:
        log.debug("skipping %s: %s is not supported", metric.name, type(data).__name__)
        return
    name = metric_name(metric.name, metric.unit, counter=type_ == "counter")
    family = families.setdefault(name, _Family(type_, metric.description or ""))
    if family.type != type_:
        log.warning("dropping %s: %s is already a %s", metric.name, name, family.type)
        return
    family.help = family.help or metric.description or ""
    if isinstance(data, Histogram):
        for hp in data.data_points:
            labels = {**_labels(hp.attributes), **scope}
            cumulative = 0
            for bound, count in zip(hp.explicit_bounds, hp.bucket_counts, strict=False):
                cumulative += count
                family.add(f"{name}_bucket", {**labels, "le": _number(bound)}, cumulative)
            family.add(f"{name}_bucket", {**labels, "le": "+Inf"}, hp.count)
            family.add(f"{name}_sum", labels, hp.sum)
            family.add(f"{name}_count", labels, hp.count)
    else:
        for np in data.data_points:
            family.add(name, {**_labels(np.attributes), **scope}, np.value)


def render(metrics_data: MetricsData | None, *, scope_labels: bool = True) -> str:
    """The Prometheus text exposition (format 0.0.4) of ``metrics_data``.

    A pure function of its input: safe to call from any thread. ``scope_labels=False``
    leaves out the ``otel_scope_name`` and ``otel_scope_version`` labels (the series
    of two scopes with the same metric and attributes then collapse to the first).
    Returns ``""`` (an exposition with no families) for no data.
    """
    targets = _Family("gauge", "Target metadata")
    families = {"target_info": targets}
    for rm in metrics_data.resource_metrics if metrics_data else ():
        if rm.resource.attributes:
            targets.add("target_info", _labels(rm.resource.attributes), 1)
        for sm in rm.scope_metrics:
            scope: dict[str, str] = {}
            if scope_labels:
                scope["otel_scope_name"] = sm.scope.name
                if sm.scope.version:
                    scope["otel_scope_version"] = sm.scope.version
            for metric in sm.metrics:
                _add_metric(families, metric, scope)
    out: list[str] = []
    for name, family in families.items():
        if not family.lines:
            continue
        if family.help:
            out.append(f"# HELP {name} {_escape(family.help, label=False)}")
        out.append(f"# TYPE {name} {family.type}")
        out.extend(family.lines)
    return "\n".join(out) + "\n" if out else ""


class PrometheusReader(MetricReader):
    """A pull reader that renders the metrics of its ``MeterProvider`` for Prometheus.

    Give it to the provider (``MeterProvider(metric_readers=[reader])``) and serve
    :meth:`render` on ``/metrics``. Like the SDK's ``InMemoryMetricReader`` it asks for
    cumulative temporality and the default aggregations, and collects only when asked.
    """

    def __init__(self, *, scope_labels: bool = True) -> None:
        super().__init__()
        self._scope_labels = scope_labels
        self._lock = threading.RLock()
        self._data: MetricsData | None = None

    def render(self) -> str:
        """Collect now and return the text exposition (format 0.0.4, :data:`CONTENT_TYPE`).

        Thread-safe (concurrent calls collect one after another). Collecting runs the
        callbacks of observable instruments in the calling thread. Returns ``""``
        before the provider has any metric to report.
        """
        with self._lock:
            self.collect()
            data, self._data = self._data, None
        return render(data, scope_labels=self._scope_labels)

    def _receive_metrics(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> None:
        with self._lock:
            self._data = metrics_data

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        """Nothing to release: the reader holds no thread, socket or file."""
