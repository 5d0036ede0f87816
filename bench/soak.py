"""Soak: a steady load for a long time, with tracing and metrics on; does anything grow?

Every role runs in this process on Kafka (Tansu, started for the run, or ``--bus``) and
Postgres (a fresh schema of ``--store``, dropped at the end), with an OpenTelemetry SDK
tracer provider (a batch span processor whose exporter counts and drops the spans) and
an SDK meter provider (read every sample, as a scrape would). ``--callers`` callers
each start a 4-step pass-through workflow (the shape of ``bench/e2e_app.py``) and
wait for it, paced so that
``--steps`` steps spread evenly over ``--minutes``.

Every ``--every`` seconds it samples this process's RSS, its asyncio task count and the
Postgres server's backends of the run. Growth is judged from the sample after the
warm-up (the first tenth of the run) to the last one: RSS must grow by less than 10%
and the task count must stay flat (within ``--callers``, the callers' own tasks being in
flight or not). It exits 1 otherwise.

Usage::

    python bench/soak.py [--minutes 30] [--steps 200000] [--callers 32] [--every 30]
                         [--bus kafka://…] [--store postgresql://…]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from rich.console import Console
from rich.table import Table

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH), str(BENCH.parent / "tests")]

import e2e_app  # noqa: E402
import kafka_broker  # noqa: E402

import hms_bus  # noqa: E402

console = Console()


class CountingExporter(SpanExporter):
    """Counts the spans it is handed and keeps none of them."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS


async def pass_through(ctx: hms_bus.StepContext) -> Any:
    return ctx.payload


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Sample:
    at: float  # seconds since the start
    steps: int
    rss: float
    tasks: int
    backends: int
    spans: int


async def backends(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        n: int = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
        )
        return n - 1
    finally:
        await conn.close()


async def soak(args: argparse.Namespace, bus: str) -> int:
    schema = f"soak_{uuid.uuid4().hex[:10]}"
    sep = "&" if "?" in args.store else "?"
    store = f"{args.store}{sep}schema={schema}"
    exporter = CountingExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    mgmt = hms_bus.init(
        "soak",
        bus=bus,
        store=store,
        namespace=f"soak{uuid.uuid4().hex[:8]}",
        transport={"fetch_max_wait": 0.01, "linger_ms": 1.0},
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
    )
    mgmt.define_workflow(e2e_app.WORKFLOW, list(e2e_app.STEPS))
    for step in e2e_app.STEPS:
        mgmt.on_step(f"{e2e_app.WORKFLOW}.{step}")(pass_through)

    workflows = args.steps // len(e2e_app.STEPS)
    duration = args.minutes * 60
    gap = duration / workflows
    done = 0
    failed = 0
    next_i = 0
    samples: list[Sample] = []
    began = time.monotonic()

    async def caller() -> None:
        nonlocal done, failed, next_i
        while next_i < workflows:
            i = next_i
            next_i += 1
            await asyncio.sleep(max(0.0, began + i * gap - time.monotonic()))
            wid = f"soak-{i}"
            await mgmt.start(e2e_app.WORKFLOW, {"i": i, "t": []}, workflow_id=wid)
            status = await mgmt.wait(wid, timeout=120)
            if status.status == "completed":
                done += 1
            else:
                failed += 1

    async def sample() -> Sample:
        reader.get_metrics_data()  # as a scrape would
        samples.append(
            Sample(
                time.monotonic() - began,
                done * len(e2e_app.STEPS),
                rss_mib(),
                len(asyncio.all_tasks()),
                await backends(args.store),
                exporter.spans,
            )
        )
        return samples[-1]

    async def sampler() -> None:
        while True:
            s = await sample()
            console.print(
                f"  {s.at:6.0f}s  {s.steps:8d} steps  RSS {s.rss:7.1f} MiB  "
                f"{s.tasks:4d} tasks  {s.backends:3d} Postgres backends  {s.spans} spans"
            )
            await asyncio.sleep(args.every)

    try:
        async with mgmt:
            console.print(
                f"[bold]soak[/]: {workflows} workflows ({args.steps} steps) over "
                f"{args.minutes} min, {args.callers} callers, tracing and metrics on"
            )
            watch = asyncio.create_task(sampler())
            await asyncio.gather(*(caller() for _ in range(args.callers)))
            watch.cancel()
            await sample()
    finally:
        tracer_provider.shutdown()
        meter_provider.shutdown()
        conn = await asyncpg.connect(args.store)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()

    warm = next((s for s in samples if s.at >= duration / 10), samples[0])
    last = samples[-1]
    growth = (last.rss - warm.rss) / warm.rss
    flat = last.tasks <= warm.tasks + args.callers
    table = Table(title=f"soak: {last.steps} steps in {last.at / 60:.1f} min")
    for col in ("", "after warm-up", "at the end", "verdict"):
        table.add_column(col)
    table.add_row(
        "RSS (MiB)",
        f"{warm.rss:.1f}",
        f"{last.rss:.1f}",
        ("[green]" if growth < 0.10 else "[red]") + f"{growth:+.1%}[/] (limit +10%)",
    )
    table.add_row(
        "asyncio tasks",
        str(warm.tasks),
        str(last.tasks),
        ("[green]flat[/]" if flat else "[red]grew[/]") + f" (within {args.callers})",
    )
    table.add_row("Postgres backends", str(warm.backends), str(last.backends), "")
    table.add_row("spans exported", str(warm.spans), str(last.spans), "")
    table.add_row(
        "workflows failed", "", str(failed), "[green]none[/]" if not failed else "[red]some[/]"
    )
    console.print(table)
    return 0 if growth < 0.10 and flat and not failed and done == workflows else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--steps", type=int, default=200_000)
    parser.add_argument("--callers", type=int, default=32)
    parser.add_argument("--every", type=float, default=30.0)
    parser.add_argument("--bus", default=os.environ.get("HMS_TEST_KAFKA_URL"))
    parser.add_argument(
        "--store",
        default=os.environ.get("HMS_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test"),
    )
    args = parser.parse_args(argv)
    broker = None if args.bus else kafka_broker.start_broker()
    try:
        return asyncio.run(soak(args, args.bus or broker.url))  # type: ignore[union-attr]
    finally:
        if broker is not None:
            broker.stop()


if __name__ == "__main__":
    sys.exit(main())
