"""Peers of ``bench/e2e.py``: the same 4-step pass-through workflow on Celery and DBOS.

- **Celery 5** on the local Redis (broker and result backend): a chain of four tasks,
  each appending its stamps as ``e2e_app`` does; a prefork worker with ``-c 2`` in a
  process of its own (started here, stopped at the end); the caller sends N chains,
  then ``.get()`` on each.
- **DBOS**: a durable workflow of four ``@DBOS.step`` coroutines on the same Postgres
  (a database of its own, dropped at the end), started with
  ``DBOS.start_workflow_async`` and awaited with ``get_result()``, in this process.

Both are measured as hms-bus is: start+wait of N concurrent workflows (steps/s) and L
sequential ones for the hop latency. Run through ``bench/e2e.py --peers``
(``make bench-peers`` installs the packages); this module is also the Celery app the
worker process loads (``celery -A e2e_peers worker``).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
STEPS = ("s1", "s2", "s3", "s4")

try:
    from celery import Celery, chain
except ImportError:  # pragma: no cover - optional
    Celery = None

celery_app: Any = None
if Celery is not None:
    _redis = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
    celery_app = Celery("e2e_peers", broker=_redis, backend=_redis)
    celery_app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        worker_prefetch_multiplier=16,
        task_default_queue=os.environ.get("BENCH_CELERY_QUEUE", "bench-e2e"),
        broker_connection_retry_on_startup=True,
    )

    def _stamp(payload: dict[str, Any]) -> dict[str, Any]:
        began = time.perf_counter()
        return {"i": payload["i"], "t": [*payload["t"], began, time.perf_counter()]}

    for _name in STEPS:
        celery_app.task(name=f"bench.{_name}")(_stamp)


def _hops(result: dict[str, Any]) -> list[float]:
    t = result["t"]
    emitted = t[0]
    out = []
    for k in range(len(STEPS)):
        out.append(t[1 + 2 * k] - emitted)
        emitted = t[2 + 2 * k]
    return out


def run_celery(redis: str, n: int, light: int, say: Callable[[str], None]) -> dict[str, Any]:
    from e2e import Figure

    queue = f"bench-e2e-{uuid.uuid4().hex[:8]}"
    os.environ["BENCH_REDIS_URL"] = redis
    os.environ["BENCH_CELERY_QUEUE"] = queue
    celery_app.conf.update(broker_url=redis, result_backend=redis, task_default_queue=queue)
    env = {**os.environ, "PYTHONPATH": str(BENCH)}
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "e2e_peers",
            "worker",
            "-c",
            "2",
            "--pool",
            "prefork",
            "-Q",
            queue,
            "--loglevel",
            "WARNING",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    sigs = [celery_app.signature(f"bench.{s}") for s in STEPS]

    def one(i: int) -> Any:
        payload = {"i": i, "t": [time.perf_counter()]}
        return chain(sigs[0].clone(args=(payload,)), *(s.clone() for s in sigs[1:])).apply_async()

    try:
        one(-1).get(timeout=60)  # the worker is up
        t0 = time.perf_counter()
        results = [r.get(timeout=600) for r in [one(i) for i in range(n)]]
        wall = time.perf_counter() - t0
        load = Figure.of(4 * n, wall, [h for r in results for h in _hops(r)], {})
        t0 = time.perf_counter()
        lights = [one(i).get(timeout=60) for i in range(light)]
        lt = Figure.of(
            4 * light, time.perf_counter() - t0, [h for r in lights for h in _hops(r)], {}
        )
    finally:
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
    say(f"    celery: {load.steps_per_s:,.0f} steps/s, light p50 {lt.p50_ms:.2f} ms")
    return {"wait": load, "light": lt}


async def _dbos(pg: str, n: int, light: int) -> dict[str, Any]:
    import asyncpg
    from dbos import DBOS
    from e2e import Figure

    base, _, _ = pg.partition("?")
    root, _, _ = base.rpartition("/")
    dbname = f"bench_dbos_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(base)
    try:
        await admin.execute(f'CREATE DATABASE "{dbname}"')
    finally:
        await admin.close()
    try:
        DBOS(config={"name": "bench-e2e", "system_database_url": f"{root}/{dbname}"})

        def make(step: str) -> Any:
            async def stamp(payload: dict[str, Any]) -> dict[str, Any]:
                began = time.perf_counter()
                return {"i": payload["i"], "t": [*payload["t"], began, time.perf_counter()]}

            stamp.__name__ = f"bench_{step}"
            return DBOS.step(name=f"bench_{step}")(stamp)

        steps = [make(s) for s in STEPS]

        @DBOS.workflow(name="bench_wf")
        async def wf(payload: dict[str, Any]) -> dict[str, Any]:
            for step in steps:
                payload = await step(payload)
            return payload

        DBOS.launch()

        async def one(i: int) -> Any:
            return await DBOS.start_workflow_async(wf, {"i": i, "t": [time.perf_counter()]})

        await (await one(-1)).get_result()
        t0 = time.perf_counter()
        handles = await asyncio.gather(*(one(i) for i in range(n)))
        results = await asyncio.gather(*(h.get_result() for h in handles))
        load = Figure.of(
            4 * n, time.perf_counter() - t0, [h for r in results for h in _hops(r)], {}
        )
        t0 = time.perf_counter()
        lights = [await (await one(i)).get_result() for i in range(light)]
        lt = Figure.of(
            4 * light, time.perf_counter() - t0, [h for r in lights for h in _hops(r)], {}
        )
        return {"wait": load, "light": lt}
    finally:
        DBOS.destroy(destroy_registry=True)
        admin = await asyncpg.connect(base)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        finally:
            await admin.close()


def run_all(
    redis: str, pg: str, n: int, light: int, say: Callable[[str], None]
) -> dict[str, dict[str, Any]]:
    """The peers that are installed, measured: name -> {"wait": Figure, "light": Figure}."""
    out: dict[str, dict[str, Any]] = {}
    if celery_app is not None:
        say("peers: Celery chain on Redis")
        out["celery (redis)"] = run_celery(redis, n, light, say)
    else:
        say("peers: celery is not installed (make bench-peers installs it)")
    try:
        import dbos  # noqa: F401
    except ImportError:
        say("peers: dbos is not installed (make bench-peers installs it)")
    else:
        say("peers: DBOS workflow on Postgres")
        out["dbos (postgres)"] = asyncio.run(_dbos(pg, n, light))
        f = out["dbos (postgres)"]
        say(f"    dbos: {f['wait'].steps_per_s:,.0f} steps/s, light p50 {f['light'].p50_ms:.2f} ms")
    return out
