"""Throughput and per-hop latency of hms-bus on its embedded ``memory://`` default.

What runs
---------
One 4-step workflow (``s1`` → ``s2`` → ``s3`` → ``s4``) whose handlers are trivial
``async def`` functions returning a small dict. The whole of hms-bus runs in this one
process, as ``hms_bus.init()`` sets it up by default: ``memory://`` bus and store, all
five roles (worker, coordinator, projector, scheduler, monitor), with
``worker={"concurrency": C}`` and heartbeats off (``monitor={"heartbeat_interval": 0}``).

The same workflow shape also runs on a bare-asyncio *baseline*: four ``asyncio.Queue``
stages, each served by ``C`` consumer tasks that ``await`` the same trivial handler and
put its result on the next queue; after stage 4 a per-workflow future is resolved.
The baseline is the floor that any asyncio orchestrator pays for "hand a step to a
task, run it, hand the result on"; what hms-bus adds on top is its events (pydantic
models, JSON), the in-memory broker, coordinator decisions, the status projection and
``wait()``.

What is measured
----------------
*Load* (``--workflows N``): all N workflows are started (``await mgmt.start`` for each,
one after another, or one ``queue.put`` each for the baseline), then all are awaited
(``mgmt.wait`` for each, gathered; the completion futures for the baseline). Wall time
runs from the first start call to the moment the last workflow is seen terminal, and
``steps/s = 4 * N / wall``.

*Step latency*: for every step execution, the time the handler began minus the time
the previous hop was emitted: for ``s1`` the moment ``start()`` (``put()``) was called;
for ``s2..s4`` the moment the previous step's handler returned. Both ends are
``time.perf_counter()`` stamps taken inside the handlers and keyed by
``(workflow_id, step)``. p50 and p99 are taken over all 4 * N hops of a run.

Under load the latency is dominated by queueing (N workflows share C handler slots and
one event loop), so it is also measured under *light load* (``--light L``, default 50):
L workflows run strictly one after another (start, wait until terminal, next), so each
hop sees an otherwise idle system. That figure is the per-hop overhead itself.

Every figure is measured ``--repeat R`` times (fresh Management / fresh queues each
time, interleaving hms-bus and baseline) and the median over the repeats is reported.
One untimed warm-up of each system runs first. Both systems run on the same event loop
(``asyncio.run`` with the default policy) in the same process.

How to read the output
----------------------
The table gives, per system, steps/s and wall time under load, and p50 / p99 hop latency
in milliseconds under load and under light load. The ratios are hms-bus / baseline:
for throughput, below 1 means hms-bus moves fewer steps per second (0.02 = 50× fewer);
for latency, above 1 means hms-bus adds that many times the baseline's hop latency.
The baseline numbers are tiny (microseconds), so the ratios are large by construction:
quote the absolute hms-bus figures when asking "is it fast enough", and the ratios when
asking "how much does the machinery cost over bare asyncio". The last line is a JSON
object with every figure (``--json`` prints only that line).

Usage::

    python bench/memory_throughput.py [--workflows N] [--concurrency C] [--repeat R]
                                      [--light L] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import hms_bus

STEPS = ("s1", "s2", "s3", "s4")
WORKFLOW = "bench"
WAIT_TIMEOUT = 600.0  # a hang guard only; no figure is compared against it

Work = Callable[[str], Awaitable[dict[str, Any]]]


# -- recording --------------------------------------------------------------------------


@dataclass
class Recorder:
    """perf_counter stamps of one run, keyed by workflow id (and step)."""

    started: dict[str, float] = field(default_factory=dict)  # start()/put() called
    began: dict[tuple[str, str], float] = field(default_factory=dict)  # handler entered
    returned: dict[tuple[str, str], float] = field(default_factory=dict)  # handler returns

    def latencies(self) -> dict[str, list[float]]:
        """Per-hop latency in seconds for every (workflow, step) of the run, by step."""
        out: dict[str, list[float]] = {step: [] for step in STEPS}
        for wid, t0 in self.started.items():
            emitted = t0
            for step in STEPS:
                out[step].append(self.began[(wid, step)] - emitted)
                emitted = self.returned[(wid, step)]
        return out


def make_work(step: str, rec: Recorder) -> Work:
    """The trivial handler body shared by both systems, with its two timestamps."""
    clock = time.perf_counter

    async def work(workflow_id: str) -> dict[str, Any]:
        rec.began[(workflow_id, step)] = clock()
        out = {"step": step, "ok": True}
        rec.returned[(workflow_id, step)] = clock()
        return out

    return work


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    k = max(0, math.ceil(p / 100 * len(sorted_values)) - 1)
    return sorted_values[k]


class GcClock:
    """Seconds the cyclic garbage collector ran while :attr:`on` (via gc.callbacks)."""

    def __init__(self) -> None:
        self.on = False
        self.total = 0.0
        self._t0 = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, _info: dict[str, int]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        elif self.on:
            self.total += time.perf_counter() - self._t0

    def begin(self) -> None:
        gc.collect()  # start every measurement from the same clean heap state
        self.total, self.on = 0.0, True

    def end(self) -> float:
        self.on = False
        return self.total


GC = GcClock()


@dataclass
class RunResult:
    wall_s: float
    steps_per_s: float
    p50_ms: float
    p99_ms: float
    hop_p50_ms: dict[str, float]
    gc_s: float
    samples: int

    @classmethod
    def of(cls, rec: Recorder, workflows: int, wall: float, gc_s: float) -> RunResult:
        by_step = rec.latencies()
        lat = sorted(x for hops in by_step.values() for x in hops)
        if len(lat) != len(STEPS) * workflows:
            raise RuntimeError(f"expected {len(STEPS) * workflows} hop samples, got {len(lat)}")
        return cls(
            wall_s=wall,
            steps_per_s=len(STEPS) * workflows / wall,
            p50_ms=1e3 * percentile(lat, 50),
            p99_ms=1e3 * percentile(lat, 99),
            hop_p50_ms={s: 1e3 * percentile(sorted(h), 50) for s, h in by_step.items()},
            gc_s=gc_s,
            samples=len(lat),
        )


# -- hms-bus ------------------------------------------------------------------------------


def build_management(concurrency: int, rec: Recorder, **settings: Any) -> hms_bus.Management:
    """The benchmark's app: all roles, memory store, the 4-step workflow recording into
    ``rec``. ``settings`` override the embedded defaults (the Kafka benchmark's bus)."""
    mgmt = hms_bus.init(
        "bench",
        **{
            "bus": "memory://",
            "store": "memory://",
            "roles": "all",
            "worker": {"concurrency": concurrency},
            "monitor": {"heartbeat_interval": 0},
            **settings,
        },
    )
    mgmt.define_workflow(WORKFLOW, list(STEPS))
    for step in STEPS:
        work = make_work(step, rec)

        async def handler(ctx: hms_bus.StepContext, work: Work = work) -> dict[str, Any]:
            return await work(ctx.workflow_id)

        mgmt.on_step(f"{WORKFLOW}.{step}")(handler)
    return mgmt


def check_completed(statuses: list[hms_bus.WorkflowStatus]) -> None:
    bad = [s for s in statuses if s.status != hms_bus.WorkflowState.COMPLETED]
    if bad:
        raise RuntimeError(f"{len(bad)} workflow(s) did not complete, e.g. {bad[0]!r}")


async def hms_load(workflows: int, concurrency: int, tag: str) -> RunResult:
    rec = Recorder()
    mgmt = build_management(concurrency, rec)
    ids = [f"{tag}-{i}" for i in range(workflows)]
    async with mgmt:
        GC.begin()
        clock = time.perf_counter
        t0 = clock()
        for i, wid in enumerate(ids):
            rec.started[wid] = clock()
            await mgmt.start(WORKFLOW, {"i": i}, workflow_id=wid)
        statuses = await asyncio.gather(*(mgmt.wait(wid, WAIT_TIMEOUT) for wid in ids))
        wall = clock() - t0
        gc_s = GC.end()
    check_completed(list(statuses))
    return RunResult.of(rec, workflows, wall, gc_s)


async def hms_light(workflows: int, concurrency: int, tag: str) -> RunResult:
    rec = Recorder()
    mgmt = build_management(concurrency, rec)
    statuses = []
    async with mgmt:
        GC.begin()
        clock = time.perf_counter
        t0 = clock()
        for i in range(workflows):
            wid = f"{tag}-{i}"
            rec.started[wid] = clock()
            started = await mgmt.start(WORKFLOW, {"i": i}, workflow_id=wid)
            statuses.append(await started.wait(WAIT_TIMEOUT))
        wall = clock() - t0
        gc_s = GC.end()
    check_completed(statuses)
    return RunResult.of(rec, workflows, wall, gc_s)


# -- baseline: bare asyncio queues --------------------------------------------------------


class Chain:
    """Four asyncio.Queue stages, each served by ``concurrency`` consumer tasks."""

    def __init__(self, concurrency: int, rec: Recorder) -> None:
        self.queues: list[asyncio.Queue[tuple[str, Any]]] = [asyncio.Queue() for _ in STEPS]
        self.done: dict[str, asyncio.Future[Any]] = {}
        self.tasks = [
            asyncio.create_task(self._consume(i, make_work(step, rec)))
            for i, step in enumerate(STEPS)
            for _ in range(concurrency)
        ]

    async def _consume(self, stage: int, work: Work) -> None:
        q_in = self.queues[stage]
        q_out = self.queues[stage + 1] if stage + 1 < len(self.queues) else None
        while True:
            wid, _data = await q_in.get()
            result = await work(wid)
            if q_out is not None:
                await q_out.put((wid, result))
            else:
                self.done.pop(wid).set_result(result)

    async def start(self, wid: str, payload: Any) -> asyncio.Future[Any]:
        fut = self.done[wid] = asyncio.get_running_loop().create_future()
        await self.queues[0].put((wid, payload))
        return fut

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def base_load(workflows: int, concurrency: int, tag: str) -> RunResult:
    rec = Recorder()
    chain = Chain(concurrency, rec)
    await asyncio.sleep(0)  # let the consumers reach their first get()
    try:
        GC.begin()
        clock = time.perf_counter
        t0 = clock()
        futures = []
        for i in range(workflows):
            wid = f"{tag}-{i}"
            rec.started[wid] = clock()
            futures.append(await chain.start(wid, {"i": i}))
        await asyncio.wait_for(asyncio.gather(*futures), WAIT_TIMEOUT)
        wall = clock() - t0
        gc_s = GC.end()
    finally:
        await chain.close()
    return RunResult.of(rec, workflows, wall, gc_s)


async def base_light(workflows: int, concurrency: int, tag: str) -> RunResult:
    rec = Recorder()
    chain = Chain(concurrency, rec)
    await asyncio.sleep(0)
    try:
        GC.begin()
        clock = time.perf_counter
        t0 = clock()
        for i in range(workflows):
            wid = f"{tag}-{i}"
            rec.started[wid] = clock()
            await asyncio.wait_for(await chain.start(wid, {"i": i}), WAIT_TIMEOUT)
        wall = clock() - t0
        gc_s = GC.end()
    finally:
        await chain.close()
    return RunResult.of(rec, workflows, wall, gc_s)


# -- driver ---------------------------------------------------------------------------------

CASES: dict[str, Callable[[int, int, str], Awaitable[RunResult]]] = {
    "hms_bus.load": hms_load,
    "baseline.load": base_load,
    "hms_bus.light": hms_light,
    "baseline.light": base_light,
}


def median_of(runs: list[RunResult]) -> dict[str, Any]:
    return {
        "steps_per_s": statistics.median(r.steps_per_s for r in runs),
        "wall_s": statistics.median(r.wall_s for r in runs),
        "p50_ms": statistics.median(r.p50_ms for r in runs),
        "p99_ms": statistics.median(r.p99_ms for r in runs),
        "hop_p50_ms": {s: statistics.median(r.hop_p50_ms[s] for r in runs) for s in STEPS},
        "gc_s": statistics.median(r.gc_s for r in runs),
    }


async def measure(args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    sizes = {"load": args.workflows, "light": args.light}
    warm = {"load": min(args.workflows, 200), "light": min(args.light, 20)}
    log(f"warm-up ({warm['load']} concurrent + {warm['light']} sequential workflows each)")
    for name, fn in CASES.items():
        await fn(warm[name.split(".")[1]], args.concurrency, f"warm-{name}")
    runs: dict[str, list[RunResult]] = {name: [] for name in CASES}
    for r in range(args.repeat):
        for name, fn in CASES.items():
            result = await fn(sizes[name.split(".")[1]], args.concurrency, f"r{r}-{name}")
            runs[name].append(result)
            log(
                f"repeat {r + 1}/{args.repeat} {name:<15} {result.steps_per_s:>10,.0f} steps/s  "
                f"p50 {result.p50_ms:8.3f} ms  p99 {result.p99_ms:8.3f} ms"
            )
    med = {name: median_of(rs) for name, rs in runs.items()}
    ratios = ratios_of(med)
    return {
        "bench": "memory_throughput",
        "hms_bus_version": hms_bus.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loop": type(asyncio.get_running_loop()).__name__,
        "workflows": args.workflows,
        "light_workflows": args.light,
        "concurrency": args.concurrency,
        "repeat": args.repeat,
        "steps_per_workflow": len(STEPS),
        "median": med,
        "ratios_hms_over_baseline": ratios,
        "runs": {name: [vars(r) for r in rs] for name, rs in runs.items()},
    }


def ratios_of(med: dict[str, Any]) -> dict[str, float]:
    """hms-bus / baseline for throughput and for each latency figure."""
    h_load, b_load = med["hms_bus.load"], med["baseline.load"]
    h_light, b_light = med["hms_bus.light"], med["baseline.light"]
    return {
        "throughput": h_load["steps_per_s"] / b_load["steps_per_s"],
        "load_p50": h_load["p50_ms"] / b_load["p50_ms"],
        "load_p99": h_load["p99_ms"] / b_load["p99_ms"],
        "light_p50": h_light["p50_ms"] / b_light["p50_ms"],
        "light_p99": h_light["p99_ms"] / b_light["p99_ms"],
    }


def print_rows(med: dict[str, Any], ratios: dict[str, float], legend: str, *, digits: int) -> None:
    """The results table both benchmarks print: one row per system, then the ratios,
    then the load p50 of each hop and the collector's share of wall time."""
    head = (
        f"{'system':<10} {'steps/s':>10} {'wall s':>8} "
        f"{'load p50':>9} {'load p99':>9} {'light p50':>10} {'light p99':>10}"
    )
    print(head)
    print("-" * len(head))
    for sysname in ("hms_bus", "baseline"):
        load, light = med[f"{sysname}.load"], med[f"{sysname}.light"]
        print(
            f"{sysname:<10} {load['steps_per_s']:>10,.0f} {load['wall_s']:>8.3f} "
            f"{load['p50_ms']:>9.3f} {load['p99_ms']:>9.3f} "
            f"{light['p50_ms']:>10.3f} {light['p99_ms']:>10.3f}"
        )
    d = digits
    print(
        f"{'ratio':<10} {ratios['throughput']:>10.4f} {'':>8} "
        f"{ratios['load_p50']:>9.{d}f} {ratios['load_p99']:>9.{d}f} "
        f"{ratios['light_p50']:>10.{d}f} {ratios['light_p99']:>10.{d}f}"
    )
    print(legend)
    for sysname in ("hms_bus", "baseline"):
        load = med[f"{sysname}.load"]
        hops = "  ".join(f"{s} {v:.3f}" for s, v in load["hop_p50_ms"].items())
        gc_share = load["gc_s"] / load["wall_s"]
        print(
            f"{sysname:<10} load p50 by hop (ms): {hops};  "
            f"GC {1e3 * load['gc_s']:.1f} ms = {gc_share:.0%} of wall"
        )


def print_table(res: dict[str, Any]) -> None:
    med, ratios = res["median"], res["ratios_hms_over_baseline"]
    print()
    print(
        f"hms-bus {res['hms_bus_version']} memory://, Python {res['python']}, "
        f"{res['cpus']} CPU(s); N={res['workflows']} concurrent, "
        f"light={res['light_workflows']} sequential, C={res['concurrency']}, "
        f"median of {res['repeat']}"
    )
    print_rows(med, ratios, "(latencies in ms per hop; ratio = hms-bus / baseline)", digits=1)
    print()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="hms-bus memory:// throughput and step latency vs a bare asyncio chain."
    )
    p.add_argument("--workflows", type=int, default=2000, help="concurrent workflows (N)")
    p.add_argument(
        "--concurrency",
        type=int,
        default=64,
        help="hms-bus worker.concurrency, and consumer tasks per baseline stage (C)",
    )
    p.add_argument("--repeat", type=int, default=3, help="repeats; medians are reported (R)")
    p.add_argument("--light", type=int, default=50, help="sequential workflows for light load")
    p.add_argument("--json", action="store_true", help="print only the JSON result line")
    args = p.parse_args(argv)
    for name in ("workflows", "concurrency", "repeat", "light"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)

    def log(msg: str) -> None:
        if not args.json:
            print(msg, file=sys.stderr, flush=True)

    res = asyncio.run(measure(args, log))
    if not args.json:
        print_table(res)
    print(json.dumps(res, separators=(",", ":")))


if __name__ == "__main__":
    main()
