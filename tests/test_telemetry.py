"""Tracing and metrics: one trace per workflow across Managements, metrics per role.

Spans are collected with in-memory exporters, one per Management, as if each were its
own process; on the Kafka backends they talk over the real test broker.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import itertools
from collections import defaultdict
from typing import Any

import pytest
from conftest import MakeMgmt, eventually, transport
from opentelemetry import propagate, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

import hms_bus
from hms_bus._codec import encode_line
from hms_bus._events import WorkflowStarted
from hms_bus._otel_sdk import (
    SDK_INTERNALS_CHECKED,
    sdk_drops_unsampled_children,
    sdk_is_unset_global_meter_provider,
)
from hms_bus._propagation import fast_extract, w3c_only
from hms_bus._telemetry import Attr, Telemetry
from hms_bus.transport import Outgoing


def tracer() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def define(mgmt: hms_bus.Management) -> None:
    mgmt.define_workflow("wf", ["a", "b"])


async def test_one_trace_per_workflow_across_managements(make_mgmt: MakeMgmt) -> None:
    client_tp, client_spans = tracer()
    router_tp, router_spans = tracer()
    worker_tp, worker_spans = tracer()
    client = make_mgmt("client", shared=True, roles=(), tracer_provider=client_tp)
    router = make_mgmt(
        "router", shared=True, roles=("coordinator", "projector"), tracer_provider=router_tp
    )
    worker = make_mgmt("worker", shared=True, roles=("worker",), tracer_provider=worker_tp)
    for m in (client, router, worker):
        define(m)
    app_tracer = worker_tp.get_tracer("app")

    @worker.on_step("wf.a")
    async def a(ctx: hms_bus.StepContext) -> Any:
        return {"n": ctx.payload["n"]}

    @worker.on_step("wf.b")
    async def b(ctx: hms_bus.StepContext) -> Any:
        # The handler's own spans (an HTTP call, a query) nest under the step's span.
        with app_tracer.start_as_current_span("lookup"):
            return ctx.payload

    async with router, worker, client:
        finals = [await client.run("wf", {"n": n}, timeout=20) for n in (1, 2)]
        await eventually(lambda: len(router_spans.get_finished_spans()) >= 6, what="spans")

    assert [f.status for f in finals] == ["completed", "completed"]
    spans = [
        *client_spans.get_finished_spans(),
        *router_spans.get_finished_spans(),
        *worker_spans.get_finished_spans(),
    ]
    traces: dict[int, list[ReadableSpan]] = defaultdict(list)
    for s in spans:
        traces[s.context.trace_id].append(s)
    assert len(traces) == 2, "one trace per workflow"
    topic_a, topic_b = client.topics.step("wf", "a"), client.topics.step("wf", "b")
    for final in finals:
        (tid,) = [
            t
            for t, ss in traces.items()
            if any(s.name == "start wf" for s in ss)
            and any(s.attributes.get("hms.workflow_id") == final.workflow_id for s in ss)
        ]
        by_name = {s.name: s for s in traces[tid]}
        chain = [
            "start wf",
            f"schedule {topic_a}",
            f"process {topic_a}",
            f"schedule {topic_b}",
            f"process {topic_b}",
            "complete wf",
        ]
        assert set(by_name) == {*chain, "lookup"}
        assert parent_id(by_name["start wf"]) is None
        for parent, child in itertools.pairwise(chain):
            assert parent_id(by_name[child]) == by_name[parent].context.span_id, (parent, child)
        assert parent_id(by_name["lookup"]) == by_name[f"process {topic_b}"].context.span_id
        kinds = {name: by_name[name].kind for name in chain}
        assert kinds[f"process {topic_a}"] is SpanKind.CONSUMER
        assert kinds[f"schedule {topic_a}"] is SpanKind.PRODUCER
        assert kinds["start wf"] is SpanKind.PRODUCER
        process = by_name[f"process {topic_a}"]
        assert process.attributes is not None
        assert process.attributes["messaging.destination.name"] == topic_a
        assert process.attributes["messaging.operation.type"] == "process"
        assert process.attributes["messaging.system"] in ("kafka", "memory")
        assert process.attributes["hms.workflow_id"] == final.workflow_id
        assert process.attributes["hms.outcome"] == "succeeded"
    assert {s.name.split()[0] for s in client_spans.get_finished_spans()} == {"start"}
    assert {s.name.split()[0] for s in worker_spans.get_finished_spans()} == {
        "process",
        "lookup",
    }


async def test_a_start_inside_a_request_links_to_it_but_opens_its_own_trace(
    make_mgmt: MakeMgmt,
) -> None:
    tp, exported = tracer()
    mgmt = make_mgmt(tracer_provider=tp)
    define(mgmt)
    for step in ("a", "b"):
        mgmt.on_step(f"wf.{step}")(_echo)

    async with mgmt:
        with tp.get_tracer("web").start_as_current_span("POST /grants") as request:
            final = await mgmt.run("wf", {}, timeout=20)
        await eventually(
            lambda: any(s.name == "complete wf" for s in exported.get_finished_spans()),
            what="complete span",
        )

    assert final.status == "completed"
    start = next(s for s in exported.get_finished_spans() if s.name == "start wf")
    assert start.parent is None
    assert start.context.trace_id != request.get_span_context().trace_id
    assert [link.context.span_id for link in start.links] == [request.get_span_context().span_id]


async def _echo(ctx: hms_bus.StepContext) -> Any:
    return ctx.payload


async def test_garbage_trace_headers_start_a_new_trace_and_never_fail_a_step(
    make_mgmt: MakeMgmt,
) -> None:
    tp, exported = tracer()
    mgmt = make_mgmt(tracer_provider=tp)
    define(mgmt)
    for step in ("a", "b"):
        mgmt.on_step(f"wf.{step}")(_echo)
    garbage = [
        (("traceparent", b"not-a-traceparent"),),
        (("traceparent", b"\xff\xfe\x00"), ("tracestate", b"\xff")),
        (("traceparent", b"00-00000000000000000000000000000000-0000000000000000-01"),),
        (("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),) * 2,
        (("baggage", b"%%%;;=="), ("traceparent", b"zz")),
    ]

    async with mgmt:
        ids = []
        for i, headers in enumerate(garbage):
            wid = f"garbage-{i}"
            ids.append(wid)
            event = WorkflowStarted(workflow_id=wid, workflow="wf", payload={"i": i})
            await transport(mgmt).publish(
                [
                    Outgoing(
                        mgmt.topics.coordinator,
                        encode_line(event),
                        key=wid.encode(),
                        headers=headers,
                    )
                ]
            )
        for wid in ids:  # published straight to the bus: the store learns of it later
            await eventually(lambda wid=wid: mgmt.status(wid), within=20, what=wid)
        finals = [await mgmt.wait(wid, timeout=20) for wid in ids]
        await eventually(
            lambda: sum(s.name == "complete wf" for s in exported.get_finished_spans()) == 5,
            what="every workflow traced",
        )

    assert [f.status for f in finals] == ["completed"] * 5
    first = [s for s in exported.get_finished_spans() if s.name.startswith("schedule")]
    first = [s for s in first if s.name.endswith(".a")]
    assert len(first) == 5
    assert all(s.parent is None for s in first), "a bad traceparent starts a new trace"
    assert len({s.context.trace_id for s in first}) == 5


@pytest.mark.parametrize(
    "value",
    [
        b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
        b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-03",
        b"01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-future",
        b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
        b"ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        b"00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01",
        b"00-00000000000000000000000000000000-b7ad6b7169203331-01",
        b"00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
        b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
        b"0af7651916cd43dd8448eb211c80319c",
        b"",
        b"\xff\xfe",
    ],
)
def test_the_fast_traceparent_reader_agrees_with_the_w3c_propagator(value: bytes) -> None:
    ours = fast_extract((("traceparent", value),))
    theirs = TraceContextTextMapPropagator().extract(
        {"traceparent": value.decode("utf-8", errors="replace")}
    )
    want = trace.get_current_span(theirs).get_span_context()
    if not want.is_valid:
        assert ours is None
        return
    assert ours is not None
    got = trace.get_current_span(ours).get_span_context()  # type: ignore[arg-type]
    assert (got.trace_id, got.span_id, got.trace_flags, got.is_remote) == (
        want.trace_id,
        want.span_id,
        want.trace_flags,
        want.is_remote,
    )


def test_without_an_sdk_provider_nothing_is_traced_or_measured() -> None:
    tel = Telemetry(service_name="x", system="memory")
    assert tel.tracing is False
    assert tel.metrics is False
    tp, _ = tracer()
    assert Telemetry(service_name="x", system="memory", tracer_provider=tp).tracing is True
    off = Telemetry(service_name="x", system="memory", tracing=False, tracer_provider=tp)
    assert off.tracing is False


def points(reader: InMemoryMetricReader, name: str) -> dict[tuple[tuple[str, Any], ...], Any]:
    """Data points of metric ``name``: sorted attribute items -> the point."""
    data = reader.get_metrics_data()
    out: dict[tuple[tuple[str, Any], ...], Any] = {}
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == name:
                    for p in metric.data.data_points:
                        out[tuple(sorted((p.attributes or {}).items()))] = p
    return out


async def test_metrics_of_steps_retries_workflows_breaches_and_dead_letters(
    make_mgmt: MakeMgmt,
) -> None:
    reader = InMemoryMetricReader()
    mgmt = make_mgmt(
        meter_provider=MeterProvider(metric_readers=[reader]),
        monitor={"heartbeat_interval": 0.05},
    )
    mgmt.define_workflow("wf", ["fast", "slow", "flaky"])
    tries: list[int] = []

    @mgmt.on_step("wf.fast", sla=5)
    async def fast(ctx: hms_bus.StepContext) -> Any:
        return ctx.payload

    @mgmt.on_step("wf.slow", sla=0.1)
    async def slow(ctx: hms_bus.StepContext) -> Any:
        await asyncio.sleep(0.4)
        return ctx.payload

    @mgmt.on_step("wf.flaky", retry=hms_bus.RetryPolicy(max_attempts=2, initial_delay=0, jitter=0))
    async def flaky(ctx: hms_bus.StepContext) -> Any:
        tries.append(ctx.attempt)
        if ctx.attempt == 1:
            raise ConnectionError("transient")
        return ctx.payload

    async with mgmt:
        final = await mgmt.run("wf", {}, timeout=20)
        await transport(mgmt).publish(
            [Outgoing(mgmt.topics.step("wf", "fast"), b"\x00 not json", key=b"poison")]
        )
        await eventually(
            lambda: (
                points(reader, "hms.workflow.duration")
                and points(reader, "hms.dead_letters")
                and points(reader, "hms.sla.breaches")
            ),
            within=10,
            what="workflow duration, dead letter and breach recorded",
        )
        lag = points(reader, "hms.consumer.lag")
        in_flight = points(reader, "hms.steps.in_flight")
        processes = await eventually(
            lambda: points(reader, "hms.processes"), what="processes observed"
        )

    assert final.status == "completed"
    assert tries == [1, 2]
    steps = {
        (dict(k)["hms.step"], dict(k)["hms.outcome"]): p.count
        for k, p in points(reader, "hms.step.duration").items()
    }
    assert steps == {
        ("fast", "succeeded"): 1,
        ("slow", "succeeded"): 1,
        ("flaky", "failed"): 1,
        ("flaky", "succeeded"): 1,
    }
    slow_point = next(
        p for k, p in points(reader, "hms.step.duration").items() if dict(k)["hms.step"] == "slow"
    )
    assert slow_point.sum >= 0.4
    retries = {dict(k)["hms.step"]: p.value for k, p in points(reader, "hms.step.retries").items()}
    assert retries == {"flaky": 1}
    breaches = {dict(k)["hms.step"]: p.value for k, p in points(reader, "hms.sla.breaches").items()}
    assert breaches == {"slow": 1}, "the slow step breached; the fast one did not"
    durations = points(reader, "hms.workflow.duration")
    assert [(dict(k), p.count) for k, p in durations.items()] == [
        ({"hms.workflow": "wf", "hms.status": "completed"}, 1)
    ]
    assert next(iter(durations.values())).sum >= 0.4
    letters = {
        dict(k)["messaging.destination.name"]: p.value
        for k, p in points(reader, "hms.dead_letters").items()
    }
    assert letters == {mgmt.topics.step("wf", "fast"): 1}
    roles = {dict(k)["hms.role"] for k in lag}
    assert roles == {"worker", "coordinator", "projector", "monitor"}
    assert all(p.value >= 0 for p in lag.values())
    assert [p.value for p in in_flight.values()] == [0]
    assert {dict(k)["state"]: p.value for k, p in processes.items()} == {"live": 1, "down": 0}


async def test_a_failed_step_marks_its_span_as_an_error(make_mgmt: MakeMgmt) -> None:
    tp, exported = tracer()
    mgmt = make_mgmt(tracer_provider=tp)
    mgmt.define_workflow("wf", ["a"])

    @mgmt.on_step("wf.a")
    async def a(ctx: hms_bus.StepContext) -> Any:
        raise hms_bus.Fail("applicant not eligible")

    async with mgmt:
        final = await mgmt.run("wf", {}, timeout=20)
        await eventually(
            lambda: any(s.name == "fail wf" for s in exported.get_finished_spans()),
            what="fail span",
        )

    assert final.status == "failed"
    process = next(s for s in exported.get_finished_spans() if s.name.startswith("process"))
    assert process.status.status_code is StatusCode.ERROR
    assert process.status.description == "applicant not eligible"
    assert process.attributes is not None
    assert process.attributes["hms.outcome"] == "failed"
    assert process.attributes["error.type"] == "Fail"


def test_otel_environment_variables_configure_export_in_a_cli_process() -> None:
    import json as _json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    # Over the programme's maximum: rejected at once (an approval waits for an inspector).
    application = {
        "applicationId": "GR-OTEL-1",
        "amount": "500000.00",
        "applicant": {"name": "Acme", "taxId": "12-3456789"},
        "bankAccount": {"routingNumber": "011000015", "accountNumber": "4401923377"},
    }
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "HMS_"))},
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_SERVICE_NAME": "hms-otel-test",
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "hms_bus",
            "start",
            "step_handlers.grant_approval:mgmt",
            "grantApproval",
            _json.dumps(application),
            "--wait",
            "--timeout",
            "30",
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert '"name": "start grantApproval"' in proc.stdout
    assert '"name": "process grantApproval.eligibilityCheck"' in proc.stdout
    assert '"name": "process grantApproval.reject"' in proc.stdout
    assert '"service.name": "hms-otel-test"' in proc.stdout
    assert "4401923377" not in proc.stdout + proc.stderr, "no account number in spans or logs"
    bad = subprocess.run(
        [sys.executable, "-m", "hms_bus", "run", "step_handlers.grant_approval:mgmt", "--dry-run"],
        cwd=root,
        env={**env, "OTEL_TRACES_EXPORTER": "zipkin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2
    assert "OTEL_TRACES_EXPORTER='zipkin': unknown exporter(s) zipkin" in bad.stderr


async def test_managements_sharing_a_meter_provider_share_its_instruments(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    apps = [hms_bus.init(f"app{i}", meter_provider=provider) for i in range(2)]
    for app in apps:
        app.define_workflow("wf", ["a"])
        app.on_step("wf.a")(_echo)
    async with apps[0], apps[1]:
        for app in apps:
            await app.run("wf", {}, timeout=10)
        lag_roles = [dict(k)["hms.role"] for k in points(reader, "hms.consumer.lag")]
    assert sum(p.count for p in points(reader, "hms.step.duration").values()) == 2
    assert set(lag_roles) == {"worker", "coordinator", "projector", "monitor"}
    assert "has been created already" not in caplog.text
    assert points(reader, "hms.consumer.lag") == {}, "closed Managements are not observed"


# -- attribute names -----------------------------------------------------------------------


def test_attribute_names_are_the_semantic_conventions_and_stay_as_documented() -> None:
    """The names on spans and series are a contract with dashboards: a new
    opentelemetry-semantic-conventions that renamed one must not rename it silently."""
    assert {name: value for name, value in vars(Attr).items() if name.isupper()} == {
        "MESSAGING_SYSTEM": "messaging.system",
        "MESSAGING_OPERATION_TYPE": "messaging.operation.type",
        "MESSAGING_OPERATION_NAME": "messaging.operation.name",
        "MESSAGING_DESTINATION_NAME": "messaging.destination.name",
        "MESSAGING_DESTINATION_PARTITION_ID": "messaging.destination.partition.id",
        "MESSAGING_KAFKA_OFFSET": "messaging.kafka.offset",
        "MESSAGING_CONSUMER_GROUP_NAME": "messaging.consumer.group.name",
        "MESSAGING_MESSAGE_ID": "messaging.message.id",
        "ERROR_TYPE": "error.type",
        "SERVICE_NAME": "service.name",
        "SEND": "send",
        "PROCESS": "process",
        "HMS_WORKFLOW": "hms.workflow",
        "HMS_WORKFLOW_ID": "hms.workflow_id",
        "HMS_STEP": "hms.step",
        "HMS_SEQ": "hms.seq",
        "HMS_ATTEMPT": "hms.attempt",
        "HMS_OUTCOME": "hms.outcome",
        "HMS_STATUS": "hms.status",
        "HMS_TRANSITION": "hms.transition",
        "HMS_DUPLICATE": "hms.duplicate",
        "HMS_ROLE": "hms.role",
        "STATE": "state",
    }
    tel = Telemetry(service_name="x", system="kafka")
    assert tel.messaging("wf.a", "publish", Attr.SEND) == {
        "messaging.system": "kafka",
        "messaging.destination.name": "wf.a",
        "messaging.operation.name": "publish",
        "messaging.operation.type": "send",
    }


# -- the propagator shortcut (public API only) ---------------------------------------------


class _B3Like(TextMapPropagator):
    """A propagator of other headers."""

    def extract(self, carrier: Any, context: Any = None, getter: Any = None) -> Any:
        return context

    def inject(self, carrier: Any, context: Any = None, setter: Any = None) -> None:
        carrier["b3"] = "1"

    @property
    def fields(self) -> set[str]:
        return {"b3"}


class _OddTraceparent(TraceContextTextMapPropagator):
    """Uses the W3C header, but writes it its own way."""

    def inject(self, carrier: Any, context: Any = None, setter: Any = None) -> None:
        carrier["traceparent"] = "01-odd"


@pytest.mark.parametrize(
    ("textmap", "fast"),
    [
        (CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()]), True),
        (CompositePropagator([TraceContextTextMapPropagator()]), True),
        (TraceContextTextMapPropagator(), True),
        (CompositePropagator([W3CBaggagePropagator()]), False),
        (CompositePropagator([TraceContextTextMapPropagator(), _B3Like()]), False),
        (_OddTraceparent(), False),
    ],
)
def test_trace_headers_are_written_directly_only_for_w3c_propagators(
    textmap: TextMapPropagator, fast: bool
) -> None:
    saved = propagate.get_global_textmap()
    propagate.set_global_textmap(textmap)
    try:
        assert w3c_only() is fast
        tp, _ = tracer()
        tel = Telemetry(service_name="x", system="memory", tracer_provider=tp)
        span = tel.span("s", kind=SpanKind.PRODUCER, parent=None, attributes=None)
        headers = dict(tel.inject(span))
        span.end()
        expected: dict[str, str] = {}
        textmap.inject(expected, context=trace.set_span_in_context(span))
        assert {k: v.decode() for k, v in headers.items()} == expected
    finally:
        propagate.set_global_textmap(saved)
    assert w3c_only() is True, "the default propagators"


# -- the OpenTelemetry internals adapter, pinned to the SDK versions it was read against ---


def _require_checked_sdk(function: str) -> None:
    first, last = (tuple(int(n) for n in v.split(".")) for v in SDK_INTERNALS_CHECKED)
    for package in ("opentelemetry-api", "opentelemetry-sdk"):
        installed = importlib.metadata.version(package)
        minor = tuple(int(n) for n in installed.split(".")[:2])
        assert first <= minor <= last, (
            f"{package} {installed} is outside {'–'.join(SDK_INTERNALS_CHECKED)}, the versions "
            f"hms_bus._otel_sdk.{function} was checked against: re-read the SDK internals it "
            "uses (see its docstring), then widen SDK_INTERNALS_CHECKED"
        )


def test_sdk_adapter_unset_global_meter_provider() -> None:
    _require_checked_sdk("sdk_is_unset_global_meter_provider")
    from opentelemetry.metrics import _internal

    assert isinstance(_internal._ProxyMeterProvider, type), "the stand-in class has moved"
    stand_in = _internal._ProxyMeterProvider()
    assert sdk_is_unset_global_meter_provider(stand_in) is True
    assert sdk_is_unset_global_meter_provider(MeterProvider(shutdown_on_exit=False)) is False
    assert Telemetry(service_name="x", system="memory", meter_provider=stand_in).metrics is False


def test_sdk_adapter_drops_unsampled_children() -> None:
    _require_checked_sdk("sdk_drops_unsampled_children")
    from opentelemetry.sdk.trace.sampling import (
        ALWAYS_OFF,
        ALWAYS_ON,
        DEFAULT_ON,
        Decision,
        ParentBased,
        ParentBasedTraceIdRatio,
        StaticSampler,
        TraceIdRatioBased,
    )

    default = ParentBased(ALWAYS_ON)
    assert default._remote_parent_not_sampled is ALWAYS_OFF, "ParentBased's delegates moved"
    assert default._local_parent_not_sampled is ALWAYS_OFF, "ParentBased's delegates moved"
    drops = {
        "default": DEFAULT_ON,
        "parentbased_traceidratio": ParentBasedTraceIdRatio(0.1),
        "own always-off": ParentBased(
            ALWAYS_ON, local_parent_not_sampled=StaticSampler(Decision.DROP)
        ),
    }
    keeps = {
        "always_on": ALWAYS_ON,
        "traceidratio": TraceIdRatioBased(0.5),
        "records unsampled remote": ParentBased(ALWAYS_ON, remote_parent_not_sampled=ALWAYS_ON),
        "samples unsampled local": ParentBased(
            ALWAYS_ON, local_parent_not_sampled=TraceIdRatioBased(0.5)
        ),
    }
    assert {name: sdk_drops_unsampled_children(s) for name, s in drops.items()} == dict.fromkeys(
        drops, True
    )
    assert {name: sdk_drops_unsampled_children(s) for name, s in keeps.items()} == dict.fromkeys(
        keeps, False
    )
    # What the shortcut assumes, asked through the public API: no child of an unsampled
    # parent, remote or local, is ever sampled.
    for sampler in drops.values():
        for remote in (True, False):
            sc = trace.SpanContext(1, 2, is_remote=remote, trace_flags=trace.TraceFlags(0))
            parent = trace.set_span_in_context(trace.NonRecordingSpan(sc))
            result = sampler.should_sample(parent, 1, "child")
            assert result.decision is Decision.DROP, (sampler, remote)
