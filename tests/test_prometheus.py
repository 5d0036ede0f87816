"""Prometheus exposition of OpenTelemetry metrics (hms_bus._prometheus).

The conversion itself is opentelemetry-exporter-prometheus's; these tests pin what
hms-bus's users scrape: the names, types, labels and buckets of its families, and that
each reader exposes only its own provider's metrics.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from prometheus_client import REGISTRY, CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from hms_bus._prometheus import CONTENT_TYPE, PrometheusReader
from hms_bus._telemetry import Telemetry


@pytest.fixture
def reader() -> PrometheusReader:
    return PrometheusReader()


@pytest.fixture
def provider(reader: PrometheusReader) -> Iterator[MeterProvider]:
    provider = MeterProvider(
        metric_readers=[reader],
        resource=Resource({"service.name": "hms-test", "k8s.pod.name": 'pod "1"'}),
        shutdown_on_exit=False,
    )
    yield provider
    provider.shutdown()


def meter(provider: MeterProvider) -> Meter:
    return provider.get_meter("hms_bus", "1.0")


def families(text: str) -> dict[str, tuple[str, str, list[Sample]]]:
    """Family name -> (type, help, samples), as prometheus_client reads ``text``."""
    return {
        f.name: (f.type, f.documentation, f.samples) for f in text_string_to_metric_families(text)
    }


def labels(sample: Sample) -> dict[str, str]:
    """The sample's labels without the scope's."""
    return {k: v for k, v in sample.labels.items() if not k.startswith("otel_scope_")}


def test_a_counter_is_a_counter_with_total_and_its_attributes_as_labels(
    provider: MeterProvider, reader: PrometheusReader
) -> None:
    steps = meter(provider).create_counter("hms.steps", unit="{step}", description="Steps run.")
    steps.add(2, {"hms.step": "a", "ok": True})
    steps.add(3, {"hms.step": "a", "ok": True})
    steps.add(1, {"hms.step": "b", "ok": False})
    text = reader.render()
    assert "# HELP hms_steps_total Steps run.\n# TYPE hms_steps_total counter\n" in text
    type_, help_, samples = families(text)["hms_steps"]
    assert (type_, help_) == ("counter", "Steps run.")
    assert [(s.name, labels(s), s.value) for s in samples] == [
        ("hms_steps_total", {"hms_step": "a", "ok": "true"}, 5),
        ("hms_steps_total", {"hms_step": "b", "ok": "false"}, 1),
    ]
    scope = samples[0].labels
    assert (scope["otel_scope_name"], scope["otel_scope_version"]) == ("hms_bus", "1.0")


def test_the_resource_is_target_info(provider: MeterProvider, reader: PrometheusReader) -> None:
    meter(provider).create_counter("c").add(1)
    (sample,) = families(reader.render())["target_info"][2]
    assert sample.name == "target_info"
    assert sample.labels == {"service_name": "hms-test", "k8s_pod_name": 'pod "1"'}


def test_an_up_down_counter_and_an_observable_gauge_are_gauges_with_their_unit(
    provider: MeterProvider, reader: PrometheusReader
) -> None:
    def lag(options: CallbackOptions) -> list[Observation]:
        return [Observation(7, {"partition": 0}), Observation(0.25, {"partition": 1})]

    m = meter(provider)
    queued = m.create_up_down_counter("hms.queue-size", unit="By", description="Bytes queued.")
    queued.add(5)
    queued.add(-7)
    m.create_observable_gauge("hms.consumer.lag", callbacks=[lag], unit="{message}")
    found = families(reader.render())
    assert found["hms_queue_size_bytes"][0] == "gauge"
    assert [s.value for s in found["hms_queue_size_bytes"][2]] == [-2]
    assert found["hms_consumer_lag"][0] == "gauge"
    assert [(labels(s), s.value) for s in found["hms_consumer_lag"][2]] == [
        ({"partition": "0"}, 7),
        ({"partition": "1"}, 0.25),
    ]


def test_a_histogram_has_cumulative_buckets_up_to_inf_then_count_and_sum(
    provider: MeterProvider, reader: PrometheusReader
) -> None:
    duration = meter(provider).create_histogram(
        "hms.step.duration",
        unit="s",
        description="Step duration.",
        explicit_bucket_boundaries_advisory=[0.1, 1, 2.5],
    )
    for value in (0.25, 0.5, 0.05, 20):
        duration.record(value, {"hms.step": "a"})
    type_, _, samples = families(reader.render())["hms_step_duration_seconds"]
    assert type_ == "histogram"
    assert [(s.name, s.labels.get("le"), s.value) for s in samples] == [
        ("hms_step_duration_seconds_bucket", "0.1", 1),
        ("hms_step_duration_seconds_bucket", "1", 3),
        ("hms_step_duration_seconds_bucket", "2.5", 3),
        ("hms_step_duration_seconds_bucket", "+Inf", 4),
        ("hms_step_duration_seconds_count", None, 4),
        ("hms_step_duration_seconds_sum", None, 20.8),
    ]
    assert all(labels(s).get("hms_step") == "a" for s in samples)


def test_hms_bus_metrics_have_the_names_operators_scrape(
    provider: MeterProvider, reader: PrometheusReader
) -> None:
    tel = Telemetry(service_name="x", system="memory", meter_provider=provider)
    step = tel.attrs("hms.workflow", "wf", "hms.step", "a")
    tel.step_duration.record(0.2, {**step, "hms.outcome": "succeeded"})
    tel.workflow_duration.record(1.5, {"hms.workflow": "wf", "hms.status": "completed"})
    tel.retries.add(1, step)
    tel.sla_breaches.add(1, step)
    tel.stuck_steps.add(1, step)
    tel.dead_letters.add(1, {"messaging.destination.name": "wf.a"})
    tel.observe_in_flight(lambda: [(2, {})])
    tel.observe_lag(lambda: [(4, {"hms.role": "worker", "messaging.destination.name": "wf.a"})])
    tel.observe_processes(lambda: [(1, {"state": "live"}), (0, {"state": "down"})])
    try:
        text = reader.render()
    finally:
        tel.forget_sources()
    found = {name: type_ for name, (type_, _, _) in families(text).items()}
    assert found == {
        "target_info": "gauge",
        "hms_step_duration_seconds": "histogram",
        "hms_workflow_duration_seconds": "histogram",
        "hms_step_retries": "counter",
        "hms_sla_breaches": "counter",
        "hms_steps_stuck": "counter",
        "hms_dead_letters": "counter",
        "hms_steps_in_flight": "gauge",
        "hms_consumer_lag": "gauge",
        "hms_processes": "gauge",
    }
    for line in (
        "# TYPE hms_step_retries_total counter",
        'hms_step_retries_total{hms_step="a",hms_workflow="wf",otel_scope_name="hms_bus"',
        'hms_consumer_lag{hms_role="worker",messaging_destination_name="wf.a",',
        'hms_step_duration_seconds_bucket{hms_outcome="succeeded",hms_step="a",hms_workflow="wf",'
        'le="0.25",',
        'hms_processes{otel_scope_name="hms_bus",otel_scope_schema_url="",otel_scope_version',
    ):
        assert line in text, line


def test_each_reader_has_a_registry_of_its_own() -> None:
    readers = [PrometheusReader(), PrometheusReader()]
    providers = [
        MeterProvider(metric_readers=[r], resource=Resource.get_empty(), shutdown_on_exit=False)
        for r in readers
    ]
    try:
        for n, provider in enumerate(providers):
            meter(provider).create_counter("hms.step.retries").add(n + 1, {"n": str(n)})
        texts = [r.render() for r in readers]
        assert 'hms_step_retries_total{n="0",' in texts[0] and 'n="1"' not in texts[0]
        assert 'hms_step_retries_total{n="1",' in texts[1] and 'n="0"' not in texts[1]
        assert readers[0].registry is not readers[1].registry
        assert REGISTRY.get_sample_value("hms_step_retries_total", {"n": "0"}) is None
    finally:
        for provider in providers:
            provider.shutdown()
    assert [r.render() for r in readers] == ["", ""], "shut down: unregistered"


def test_a_given_registry_is_exposed_whole() -> None:
    registry = CollectorRegistry()
    Counter("legacy_jobs", "Jobs of the legacy collector.", registry=registry).inc()
    reader = PrometheusReader(registry=registry)
    provider = MeterProvider(
        metric_readers=[reader], resource=Resource.get_empty(), shutdown_on_exit=False
    )
    try:
        meter(provider).create_counter("hms.step.retries").add(1)
        found = families(reader.render())
    finally:
        provider.shutdown()
    assert {"legacy_jobs", "hms_step_retries"} <= set(found)


def test_an_empty_provider_renders_an_empty_exposition(
    provider: MeterProvider, reader: PrometheusReader
) -> None:
    assert reader.render() == ""
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"


def test_concurrent_renders_each_get_every_metric(
    provider: MeterProvider, reader: PrometheusReader
) -> None:
    meter(provider).create_counter("hms.step.retries").add(3)
    texts: list[str] = []

    def scrape() -> None:
        for _ in range(20):
            texts.append(reader.render())

    threads = [threading.Thread(target=scrape) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(texts) == 80
    assert all("hms_step_retries_total{" in text for text in texts)
