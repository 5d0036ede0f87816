"""Prometheus text exposition of OpenTelemetry metrics (hms_bus._prometheus)."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator

import pytest
from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Metric,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.util.types import Attributes

from hms_bus._prometheus import CONTENT_TYPE, PrometheusReader, metric_name, render

# -- a checker of the exposition format (text format 0.0.4) ------------------------------------

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL_VALUE = r'"(?:[^"\\\n]|\\[\\"n])*"'
_LABEL = rf"[a-zA-Z_][a-zA-Z0-9_]*={_LABEL_VALUE}"
_VALUE = r"(?:[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[+-]Inf|NaN)"
_HELP = re.compile(rf"# HELP ({_NAME}) (?:[^\\\n]|\\[\\n])*")
_TYPE = re.compile(rf"# TYPE ({_NAME}) (counter|gauge|histogram|summary|untyped)")
_SAMPLE = re.compile(rf"({_NAME})(\{{{_LABEL}(?:,{_LABEL})*\}})? {_VALUE}")
_SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("", "_sum", "_count")}


def check_exposition(text: str) -> None:
    """Fail unless ``text`` is a valid exposition: its grammar, one HELP and TYPE per family,
    samples under their family's TYPE, no series twice, no label twice in a series."""
    assert text == "" or text.endswith("\n")
    family, kind, headers, series = "", "", set(), set()
    for line in text.splitlines():
        if m := _HELP.fullmatch(line) or _TYPE.fullmatch(line):
            header = (line[2:6], m[1])
            assert header not in headers, f"second {header}"
            headers.add(header)
            if m.re is _TYPE:
                family, kind = m[1], m[2]
        elif m := _SAMPLE.fullmatch(line):
            assert m[1] in (family + suffix for suffix in _SUFFIXES.get(kind, ("",))), line
            key = line.rpartition(" ")[0]
            assert key not in series, f"duplicate series: {line}"
            series.add(key)
            names = re.findall(rf"([a-zA-Z_][a-zA-Z0-9_]*)={_LABEL_VALUE}", m[2] or "")
            assert len(names) == len(set(names)), line
        else:
            pytest.fail(f"not an exposition line: {line!r}")


# -- a real MeterProvider ----------------------------------------------------------------------


@pytest.fixture
def reader() -> PrometheusReader:
    return PrometheusReader()


@pytest.fixture
def provider(reader: PrometheusReader) -> Iterator[MeterProvider]:
    provider = MeterProvider(
        metric_readers=[reader],
        resource=Resource({"service.name": "hms-test", "k8s.pod.name": 'pod "1"'}),
        views=[View(instrument_name="*.expo", aggregation=ExponentialBucketHistogramAggregation())],
        shutdown_on_exit=False,
    )
    yield provider
    provider.shutdown()


def meter(provider: MeterProvider, name: str = "hms_bus", version: str | None = "1.0") -> Meter:
    return provider.get_meter(name, version)


TARGET = """\
# HELP target_info Target metadata
# TYPE target_info gauge
target_info{k8s_pod_name="pod \\"1\\"",service_name="hms-test"} 1
"""

SCOPE = 'otel_scope_name="hms_bus",otel_scope_version="1.0"'


def test_a_counter_is_a_counter_with_total_and_its_attributes_as_labels(
    provider: MeterProvider, reader: PrometheusReader
) -> None:
    steps = meter(provider).create_counter("hms.steps", unit="{step}", description="Steps run.")
    steps.add(2, {"step": "a", "ok": True})
    steps.add(3, {"step": "a", "ok": True})
    steps.add(1, {"step": "b", "ok": False})
    text = reader.render()
    check_exposition(text)
    assert text == TARGET + (
        "# HELP hms_steps_total Steps run.\n"
        "# TYPE hms_steps_total counter\n"
        f'hms_steps_total{{ok="true",step="a",{SCOPE}}} 5\n'
        f'hms_steps_total{{ok="false",step="b",{SCOPE}}} 1\n'
    )


def test_an_up_down_counter_and_an_observable_gauge_are_gauges(
    provider: MeterProvider, reader: PrometheusReader
) -> None:
    def lag(options: CallbackOptions) -> list[Observation]:
        return [Observation(7, {"partition": 0}), Observation(0.25, {"partition": 1})]

    m = meter(provider)
    queued = m.create_up_down_counter("hms.queue-size", unit="By", description="Bytes queued.")
    queued.add(5)
    queued.add(-7)
    m.create_observable_gauge("hms.consumer.lag", callbacks=[lag], unit="1")
    text = reader.render()
    check_exposition(text)
    assert text == TARGET + (
        "# HELP hms_queue_size_bytes Bytes queued.\n"
        "# TYPE hms_queue_size_bytes gauge\n"
        f"hms_queue_size_bytes{{{SCOPE}}} -2\n"
        "# TYPE hms_consumer_lag gauge\n"
        f'hms_consumer_lag{{partition="0",{SCOPE}}} 7\n'
        f'hms_consumer_lag{{partition="1",{SCOPE}}} 0.25\n'
    )


def test_a_histogram_has_cumulative_buckets_up_to_inf_then_sum_and_count(
    provider: MeterProvider, reader: PrometheusReader
) -> None:
    duration = meter(provider).create_histogram(
        "hms.step.duration",
        unit="s",
        description="Step duration.",
        explicit_bucket_boundaries_advisory=[0.1, 1, 2.5],
    )
    for value in (0.25, 0.5, 0.05, 20):
        duration.record(value, {"step": "a"})
    duration.record(2.5, {"step": "b"})
    text = reader.render()
    check_exposition(text)
    a, b = f'step="a",{SCOPE}', f'step="b",{SCOPE}'
    assert text == TARGET + (
        "# HELP hms_step_duration_seconds Step duration.\n"
        "# TYPE hms_step_duration_seconds histogram\n"
        f'hms_step_duration_seconds_bucket{{{a},le="0.1"}} 1\n'
        f'hms_step_duration_seconds_bucket{{{a},le="1"}} 3\n'
        f'hms_step_duration_seconds_bucket{{{a},le="2.5"}} 3\n'
        f'hms_step_duration_seconds_bucket{{{a},le="+Inf"}} 4\n'
        f"hms_step_duration_seconds_sum{{{a}}} 20.8\n"
        f"hms_step_duration_seconds_count{{{a}}} 4\n"
        f'hms_step_duration_seconds_bucket{{{b},le="0.1"}} 0\n'
        f'hms_step_duration_seconds_bucket{{{b},le="1"}} 0\n'
        f'hms_step_duration_seconds_bucket{{{b},le="2.5"}} 1\n'
        f'hms_step_duration_seconds_bucket{{{b},le="+Inf"}} 1\n'
        f"hms_step_duration_seconds_sum{{{b}}} 2.5\n"
        f"hms_step_duration_seconds_count{{{b}}} 1\n"
    )


def test_label_values_and_help_are_escaped(
    provider: MeterProvider, reader: PrometheusReader
) -> None:
    c = meter(provider).create_counter("c", description='A "quoted" \\ back\nslash.')
    c.add(1, {"path": 'C:\\tmp\\"x"\nnext'})
    text = reader.render()
    check_exposition(text)
    assert '# HELP c_total A "quoted" \\\\ back\\nslash.\n' in text
    assert f'c_total{{path="C:\\\\tmp\\\\\\"x\\"\\nnext",{SCOPE}}} 1\n' in text


def test_label_names_are_sanitized_and_colliding_ones_joined(
    provider: MeterProvider, reader: PrometheusReader
) -> None:
    g = meter(provider).create_up_down_counter("g")
    g.add(1, {"http.method": "GET", "http_method": "POST", "1st": "x", "__x": "y", "a-b c": 1.5})
    text = reader.render()
    check_exposition(text)
    assert f'g{{_1st="x",_x="y",a_b_c="1.5",http_method="GET;POST",{SCOPE}}} 1\n' in text


@pytest.mark.parametrize(
    ("name", "unit", "counter", "expected"),
    [
        ("http.server.request.duration", "s", False, "http_server_request_duration_seconds"),
        ("hms.steps", "{step}", True, "hms_steps_total"),
        ("hms.steps_total", "", True, "hms_steps_total"),
        ("requests", "1", True, "requests_total"),
        ("2xx-responses", None, True, "_2xx_responses_total"),
        ("latency_seconds", "s", False, "latency_seconds"),
        ("wait.seconds_total", "s", True, "wait_seconds_total"),
        ("net.io", "By/s", True, "net_io_bytes_per_second_total"),
        ("rate", "{request}/s", False, "rate_per_second"),
        ("cache.size", "MiBy", False, "cache_size_mebibytes"),
        ("a..b--c__d", "ms", False, "a_b_c_d_milliseconds"),
        ("job:load", "%", False, "job:load_percent"),
        ("speed", "km/h", False, "speed_km_per_hour"),
        ("temp", "Cel", False, "temp_celsius"),
    ],
)
def test_metric_names(name: str, unit: str | None, counter: bool, expected: str) -> None:
    assert metric_name(name, unit, counter=counter) == expected


def test_the_same_metric_from_two_scopes_is_one_family(
    provider: MeterProvider, reader: PrometheusReader, caplog: pytest.LogCaptureFixture
) -> None:
    meter(provider, "one", None).create_counter("jobs", description="Jobs.").add(1, {"k": "v"})
    meter(provider, "two", "2").create_counter("jobs", description="Other.").add(2, {"k": "v"})
    meter(provider, "two", "2").create_counter("jobs.total").add(4, {"k": "w"})
    meter(provider, "three").create_gauge("jobs_total").set(3)  # a gauge of the same name
    with caplog.at_level(logging.WARNING, logger="hms_bus.prometheus"):
        text = reader.render()
    check_exposition(text)
    assert text == TARGET + (
        "# HELP jobs_total Jobs.\n"
        "# TYPE jobs_total counter\n"
        'jobs_total{k="v",otel_scope_name="one"} 1\n'
        'jobs_total{k="v",otel_scope_name="two",otel_scope_version="2"} 2\n'
        'jobs_total{k="w",otel_scope_name="two",otel_scope_version="2"} 4\n'
    )
    assert "dropping jobs_total: jobs_total is already a counter" in caplog.text

    data = _data(_sum("jobs", 1, {"k": "v"}, scope="one"), _sum("jobs", 2, {"k": "v"}, scope="two"))
    assert render(data, scope_labels=False) == '# TYPE jobs_total counter\njobs_total{k="v"} 1\n'


def test_an_empty_provider_renders_an_empty_exposition(
    provider: MeterProvider, reader: PrometheusReader
) -> None:
    assert reader.render() == ""
    meter(provider).create_counter("unused")
    check_exposition(reader.render())
    assert render(None) == "" == render(MetricsData(resource_metrics=[]))
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"


def test_exponential_histograms_are_skipped(
    provider: MeterProvider, reader: PrometheusReader
) -> None:
    meter(provider).create_histogram("latency.expo", unit="s").record(1.5)
    meter(provider).create_counter("kept").add(1)
    text = reader.render()
    check_exposition(text)
    assert "expo" not in text
    assert f"kept_total{{{SCOPE}}} 1\n" in text


def test_values_and_attributes_are_spelled_as_prometheus_does() -> None:
    data = _data(
        *(
            _gauge("g", value, {"v": repr(value)})
            for value in (math.nan, math.inf, -math.inf, 1e20, 0.1, 3, 2.0, -0.0, 1.5e-7)
        ),
        _gauge(
            "attrs",
            1,
            {"b": True, "i": 3, "f": 2.0, "s": ("a", "b"), "n": (1, 2.5), "m": {"x": [1]}},
        ),
    )
    text = render(data)
    check_exposition(text)
    assert text == (
        "# TYPE g gauge\n"
        'g{v="nan",otel_scope_name="s"} NaN\n'
        'g{v="inf",otel_scope_name="s"} +Inf\n'
        'g{v="-inf",otel_scope_name="s"} -Inf\n'
        'g{v="1e+20",otel_scope_name="s"} 1e+20\n'
        'g{v="0.1",otel_scope_name="s"} 0.1\n'
        'g{v="3",otel_scope_name="s"} 3\n'
        'g{v="2.0",otel_scope_name="s"} 2\n'
        'g{v="-0.0",otel_scope_name="s"} 0\n'
        'g{v="1.5e-07",otel_scope_name="s"} 1.5e-07\n'
        "# TYPE attrs gauge\n"
        'attrs{b="true",f="2",i="3",m="{\\"x\\":[1]}",n="[1,2.5]",'
        's="[\\"a\\",\\"b\\"]",otel_scope_name="s"} 1\n'
    )


def test_delta_sums_are_skipped() -> None:
    delta = _sum("d", 1, {}, temporality=AggregationTemporality.DELTA)
    assert render(_data(delta, _sum("c", 1, {}))) == (
        '# TYPE c_total counter\nc_total{otel_scope_name="s"} 1\n'
    )


def test_prometheus_client_parses_the_output(
    provider: MeterProvider, reader: PrometheusReader
) -> None:
    parser = pytest.importorskip("prometheus_client.parser")
    m = meter(provider)
    m.create_counter("hms.steps").add(1, {"step": 'x"\n'})
    m.create_histogram("hms.wait", unit="ms").record(3)
    m.create_up_down_counter("hms.inflight").add(2)
    families = {f.name: f for f in parser.text_string_to_metric_families(reader.render())}
    assert families["hms_steps"].type == "counter"
    assert families["hms_steps"].samples[0].labels["step"] == 'x"\n'
    assert families["hms_wait_milliseconds"].type == "histogram"
    assert families["hms_inflight"].samples[0].value == 2


# -- hand-made MetricsData ---------------------------------------------------------------------


def _point(value: float, attributes: Attributes) -> NumberDataPoint:
    return NumberDataPoint(
        attributes=attributes, start_time_unix_nano=0, time_unix_nano=1, value=value
    )


def _gauge(name: str, value: float, attributes: Attributes) -> tuple[str, Metric]:
    return "s", Metric(name, None, None, Gauge(data_points=[_point(value, attributes)]))


def _sum(
    name: str,
    value: float,
    attributes: Attributes,
    *,
    scope: str = "s",
    temporality: AggregationTemporality = AggregationTemporality.CUMULATIVE,
) -> tuple[str, Metric]:
    data = Sum([_point(value, attributes)], temporality, is_monotonic=True)
    return scope, Metric(name, None, None, data)


def _data(*metrics: tuple[str, Metric]) -> MetricsData:
    """One empty resource with ``metrics``, each in the scope of that name."""
    scopes: dict[str, list[Metric]] = {}
    for scope, metric in metrics:
        scopes.setdefault(scope, []).append(metric)
    return MetricsData(
        [
            ResourceMetrics(
                resource=Resource.get_empty(),
                scope_metrics=[
                    ScopeMetrics(InstrumentationScope(name), ms, "") for name, ms in scopes.items()
                ],
                schema_url="",
            )
        ]
    )
