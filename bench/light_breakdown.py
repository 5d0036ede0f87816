"""Where a light-load step's time goes, on Kafka (Tansu) + Postgres, every role in one process.

``bench/e2e.py`` reports a step's light-load latency against a raw aiokafka hop. This
splits that latency into its parts. It runs L workflows of ``bench/e2e_app.py`` one
after another (start, wait, next) and stamps, with ``time.perf_counter()``:

- the worker handing its ``completeStep`` record to the bus (``Worker._publish``);
- the coordinator receiving it (``Coordinator._process``);
- the ledger claim, begun and done (``PostgresStore.claim_transitions``);
- the coordinator sending the next step's command (``KafkaTransport.send``);
- the worker receiving that command (``Worker._handle``) and starting the step;
- for a start: the store's registration and the start's publish.

The stamps wrap private methods, so this is a diagnostic for this checkout, not an API.
It prints the p50 of each segment for step transitions (s1 → s2 … s3 → s4) and for
starts (``start()`` → s1), each step's hop latency as ``bench/e2e.py`` defines it, and
the raw chain's light-load hop in the same run.

    python bench/light_breakdown.py [--light 100] [--fetch-max-wait 0.01]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import e2e
import e2e_app

from hms_bus.roles.coordinator import Coordinator
from hms_bus.roles.worker import Worker
from hms_bus.store.postgres import PostgresStore
from hms_bus.transport import Outgoing, Record
from hms_bus.transport.kafka import KafkaTransport

STAMPS: list[tuple[float, str, str]] = []  # (when, what, workflow id)


def stamp(what: str, key: bytes | None) -> None:
    STAMPS.append((time.perf_counter(), what, key.decode() if key else "?"))


def instrument() -> None:
    publish, handle, execute = Worker._publish, Worker._handle, Worker._execute
    process, claim = Coordinator._process, PostgresStore.claim_transitions
    register, send, kpublish = (
        PostgresStore.register_start,
        KafkaTransport.send,
        KafkaTransport.publish,
    )

    async def w_publish(self: Worker, what: str, messages: list[Outgoing]) -> None:
        if what == "completeStep":
            stamp("completed", messages[0].key)
        await publish(self, what, messages)

    async def w_handle(self: Worker, record: Record) -> None:
        stamp("command in", record.key)
        await handle(self, record)

    async def w_execute(self: Worker, step: Any, cmd: Any, *rest: Any) -> Any:
        stamp("step runs", cmd.workflow_id.encode())
        return await execute(self, step, cmd, *rest)

    async def c_process(self: Coordinator, records: list[Record]) -> None:
        for r in records:
            stamp("coordinator in", r.key)
        await process(self, records)

    async def s_claim(self: PostgresStore, claims: Sequence[Any]) -> Any:
        stamp("claim begins", claims[0].workflow_id.encode())
        out = await claim(self, claims)
        stamp("claim done", claims[0].workflow_id.encode())
        return out

    async def s_register(self: PostgresStore, workflow_id: str, *a: Any, **k: Any) -> Any:
        stamp("register", workflow_id.encode())
        return await register(self, workflow_id, *a, **k)

    async def k_send(self: KafkaTransport, messages: Sequence[Outgoing]) -> Any:
        for m in messages:
            if m.topic.rsplit(".", 1)[-1] in e2e_app.STEPS:
                stamp("command out", m.key)
        return await send(self, messages)

    async def k_publish(self: KafkaTransport, messages: Sequence[Outgoing]) -> None:
        stamp("start out", messages[0].key)
        await kpublish(self, messages)

    Worker._publish = w_publish  # type: ignore[method-assign]
    Worker._handle = w_handle  # type: ignore[method-assign]
    Worker._execute = w_execute  # type: ignore[method-assign]
    Coordinator._process = c_process  # type: ignore[method-assign]
    PostgresStore.claim_transitions = s_claim  # type: ignore[method-assign]
    PostgresStore.register_start = s_register  # type: ignore[method-assign]
    KafkaTransport.send = k_send  # type: ignore[method-assign]
    KafkaTransport.publish = k_publish  # type: ignore[method-assign]


TRANSITION = ["completed", "coordinator in", "claim begins", "claim done", "command out",
              "command in", "step runs"]  # fmt: skip
START = ["register", "start out", "coordinator in", "claim begins", "claim done",
         "command out", "command in", "step runs"]  # fmt: skip


def segments(light: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Per segment, the milliseconds of each step transition and of each start."""
    by: dict[str, list[tuple[float, str]]] = collections.defaultdict(list)
    for t, what, wid in STAMPS:
        by[wid].append((t, what))
    steps: dict[str, list[float]] = collections.defaultdict(list)
    starts: dict[str, list[float]] = collections.defaultdict(list)

    def walk(
        evs: list[tuple[float, str]], i: int, names: list[str], into: dict[str, list[float]]
    ) -> None:
        at, k = evs[i][0], 1
        for t, what in evs[i + 1 :]:
            if k == len(names):
                break
            if what == names[k]:
                into[f"{names[k - 1]} → {what}"].append(1e3 * (t - at))
                at, k = t, k + 1
        if k == len(names):
            into["total"].append(1e3 * (at - evs[i][0]))

    for wid, evs in by.items():
        if not wid.startswith("light-"):
            continue
        evs.sort()
        for i, (_, what) in enumerate(evs):
            if what == "completed":
                walk(evs, i, TRANSITION, steps)
            elif what == "register":
                walk(evs, i, START, starts)
    return steps, starts


async def hms(cfg: e2e.Config, light: int) -> list[list[float]]:
    mgmt = e2e_app.mgmt
    mgmt.configure(**cfg.settings(e2e.fresh("bench-breakdown"), "all"))
    wf, hops = e2e_app.WORKFLOW, []
    try:
        async with mgmt:
            for i in range(20):  # warm-up
                await mgmt.run(wf, {"i": i, "t": [time.perf_counter()]}, workflow_id=f"warm-{i}")
            STAMPS.clear()
            for i in range(light):
                payload = {"i": i, "t": [time.perf_counter()]}
                status = await mgmt.run(wf, payload, workflow_id=f"light-{i}", timeout=60)
                hops.append(e2e_app.hop_latencies(status.result))
    finally:
        await e2e.delete_topics(cfg, mgmt.required_topics())
    return hops


def show(title: str, parts: dict[str, list[float]]) -> None:
    print(title)
    for name, ms in parts.items():
        print(f"    {name:<34} p50 {statistics.median(ms):6.2f} ms  (n={len(ms)})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--light", type=int, default=100, help="sequential workflows")
    p.add_argument("--fetch-max-wait", type=float, default=0.01)
    args = p.parse_args()
    e2e.ARGS = e2e.parse_args(["--fetch-max-wait", str(args.fetch_max_wait)])
    instrument()
    broker = e2e.start_tansu()
    store, _ = asyncio.run(e2e.make_schema(e2e.PG_DEFAULT))
    cfg = e2e.Config(
        broker.url, store, args.fetch_max_wait, e2e.ARGS.linger_ms, e2e.ARGS.partitions
    )
    try:
        raw = asyncio.run(e2e.raw_row(cfg, 100, args.light, "breakdown-raw"))["light"]
        hops = asyncio.run(hms(cfg, args.light))
    finally:
        broker.stop()
        asyncio.run(e2e.drop_schema(e2e.PG_DEFAULT, store))
    steps, starts = segments(args.light)
    print(f"fetch_max_wait {1e3 * args.fetch_max_wait:g} ms, {args.light} workflows one at a time")
    print(f"raw aiokafka hop p50 {raw.p50_ms:.2f} ms")
    show("step transitions (a step's completeStep → the next step runs):", steps)
    show("starts (start() → s1 runs):", starts)
    for k in range(len(e2e_app.STEPS)):
        ms = [1e3 * h[k] for h in hops]
        print(f"hop {e2e_app.STEPS[k]} p50 {statistics.median(ms):6.2f} ms")
    every = [1e3 * x for h in hops for x in h]
    p50 = statistics.median(every)
    print(f"every hop p50 {p50:.2f} ms = {p50 / raw.p50_ms:.2f} raw hops")


if __name__ == "__main__":
    main()
