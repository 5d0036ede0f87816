"""What tracing and metrics cost hms-bus, on the embedded ``memory://`` benchmark.

What runs
---------
The app and load of ``bench/memory_throughput.py`` (one 4-step workflow of trivial
handlers, all five roles in this process, N workflows started then awaited, C handler
slots), in four configurations, each measured R times, interleaved, median reported:

- ``off``: no OpenTelemetry SDK provider, the default of an application that has not
  configured export. hms-bus then creates no spans and records no metrics. This is the
  baseline, measured in the same run.
- ``metrics``: an SDK ``MeterProvider`` with a pull reader (what ``/metrics`` uses);
  every hms-bus metric is recorded.
- ``traces+metrics``: the above plus an SDK ``TracerProvider`` sampling every trace
  (the SDK default, ``parentbased_always_on``) with a ``BatchSpanProcessor``, the
  processor every exporter is used with. Its exporter drops the spans, so the figure is
  hms-bus's and the SDK's cost in this process, without the cost of encoding and
  sending spans (which an OTLP exporter adds, on the processor's thread).
- ``traces(10%)+metrics``: the same with ``parentbased_traceidratio`` at 0.1
  (``OTEL_TRACES_SAMPLER=parentbased_traceidratio OTEL_TRACES_SAMPLER_ARG=0.1``), a
  common production setting for high-volume pipelines: one workflow in ten is traced,
  whole (the decision is taken at ``start`` and carried in the headers).

Per workflow, tracing makes 2 spans per step (the coordinator's ``schedule`` and the
worker's ``process``) plus ``start`` and ``complete``: 10 spans for this workflow.

How to read the output
----------------------
steps/s per configuration and its ratio to ``off`` (1.00 = free; 0.85 = costs 15%).
The last line is a JSON object with every figure (``--json`` prints only that).

Usage::

    python bench/telemetry_cost.py [--workflows N] [--concurrency C] [--repeat R] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

from memory_throughput import WORKFLOW, Recorder, build_management, check_completed
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, TraceIdRatioBased

import hms_bus

CONFIGS = ("off", "metrics", "traces+metrics", "traces(10%)+metrics")


class DropExporter(SpanExporter):
    """Counts and drops spans (no encoding, no network)."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS


def providers(config: str) -> tuple[dict[str, Any], list[Any]]:
    """init() keywords for ``config``, and what to shut down afterwards."""
    if config == "off":
        return {}, []
    kw: dict[str, Any] = {"meter_provider": MeterProvider(metric_readers=[InMemoryMetricReader()])}
    close: list[Any] = [kw["meter_provider"]]
    if config.startswith("traces"):
        ratio = 0.1 if "10%" in config else 1.0
        sampler = ParentBased(TraceIdRatioBased(ratio)) if ratio < 1 else ParentBased(ALWAYS_ON)
        tp = TracerProvider(sampler=sampler)
        tp.add_span_processor(BatchSpanProcessor(DropExporter()))
        kw["tracer_provider"] = tp
        close.append(tp)
    return kw, close


async def load(config: str, workflows: int, concurrency: int, tag: str) -> float:
    """steps/s of ``workflows`` concurrent workflows under ``config``."""
    kw, close = providers(config)
    mgmt = build_management(concurrency, Recorder(), **kw)
    ids = [f"{tag}-{i}" for i in range(workflows)]
    async with mgmt:
        t0 = time.perf_counter()
        for i, wid in enumerate(ids):
            await mgmt.start(WORKFLOW, {"i": i}, workflow_id=wid)
        statuses = await asyncio.gather(*(mgmt.wait(wid, 600) for wid in ids))
        wall = time.perf_counter() - t0
    check_completed(list(statuses))
    for provider in close:
        provider.shutdown()
    return 4 * workflows / wall


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    def log(msg: str) -> None:
        if not args.json:
            print(msg, file=sys.stderr, flush=True)

    log("warm-up")
    for config in CONFIGS:
        await load(config, min(args.workflows, 200), args.concurrency, f"warm-{config}")
    runs: dict[str, list[float]] = {c: [] for c in CONFIGS}
    for r in range(args.repeat):
        for config in CONFIGS:
            v = await load(config, args.workflows, args.concurrency, f"r{r}-{config}")
            runs[config].append(v)
            log(f"repeat {r + 1}/{args.repeat} {config:<22} {v:>8,.0f} steps/s")
    med = {c: statistics.median(v) for c, v in runs.items()}
    return {
        "bench": "telemetry_cost",
        "hms_bus_version": hms_bus.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "workflows": args.workflows,
        "concurrency": args.concurrency,
        "repeat": args.repeat,
        "median_steps_per_s": med,
        "ratio_to_off": {c: med[c] / med["off"] for c in CONFIGS},
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="hms-bus telemetry cost on the memory benchmark")
    p.add_argument("--workflows", type=int, default=2000, help="concurrent workflows (N)")
    p.add_argument("--concurrency", type=int, default=64, help="worker.concurrency (C)")
    p.add_argument("--repeat", type=int, default=5, help="repeats; medians are reported (R)")
    p.add_argument("--json", action="store_true", help="print only the JSON result line")
    args = p.parse_args(argv)
    res = asyncio.run(measure(args))
    if not args.json:
        print()
        print(
            f"hms-bus {res['hms_bus_version']} memory://, Python {res['python']}, "
            f"{res['cpus']} CPU(s); N={args.workflows}, C={args.concurrency}, "
            f"median of {args.repeat}"
        )
        print(f"{'configuration':<22} {'steps/s':>10} {'vs off':>8}")
        for c in CONFIGS:
            print(f"{c:<22} {res['median_steps_per_s'][c]:>10,.0f} {res['ratio_to_off'][c]:>8.3f}")
        print()
    print(json.dumps(res))


if __name__ == "__main__":
    main()
