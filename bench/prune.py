"""What retention costs the projector: its throughput while a million history rows go.

What runs
---------
One Postgres schema (the local server, or ``--store``), prepared before the clock with
``--workflows`` finished workflows (100,000 by default), each with 10 history events,
4 step rows and 5 ledger rows: 1,000,000 rows of ``hms_events``, all finished a day ago.
Then two processes share the machine with the server:

- **the projector**, a child process (this script with ``--projector``):
  ``PostgresStore.apply_events`` of the 4-step workflow's events
  (``bench/postgres_projector.py``'s stream: 14 events per workflow, new workflows all
  the time) in batches of 500, as fast as it can, printing how many events it has
  applied every 0.2 s;
- **the pruner**, this process: after a baseline of ``--baseline`` seconds,
  ``hms_bus._retention.prune(before=an hour ago, batch_size=--batch, duty=--duty)``,
  what ``hms-bus prune --older-than 1h`` and the scheduler's ``retention`` run: batches
  of one transaction, pausing so that deleting takes ``--duty`` of the time; then
  another ``--baseline`` seconds.

What is reported
----------------
The projector's events/s before, during and after the prune, and **during / the mean of
before and after** (the target: above 0.9); how long the prune took and its rows/s; and
that every finished workflow is gone and none of the projector's running ones is.

Usage::

    python bench/prune.py [--store postgresql://…] [--workflows N] [--batch B]
                          [--duty D] [--baseline S] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from postgres_projector import workflow_events  # noqa: E402

from hms_bus._codec import encode  # noqa: E402
from hms_bus._retention import prune  # noqa: E402
from hms_bus.store.postgres import PostgresStore  # noqa: E402

PG_DEFAULT = os.environ.get("HMS_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
NAMESPACE = "bench"

SEED = """
INSERT INTO {s}.hms_workflows (namespace, workflow_id, workflow, status, payload, result,
    created_at, updated_at, finished_at, start_event_id, confirmed)
SELECT $1, 'old-' || g, 'order', 'completed', '{{"n": 1}}', '{{"ok": true}}',
    $2, $2, $2, 'e-' || g, true
FROM generate_series(1, $3) g;
INSERT INTO {s}.hms_events (namespace, event_id, workflow_id, type, ts, body)
SELECT $1, 'old-' || g || '-' || k, 'old-' || g, 'stepStarted', $2,
    ('{{"v":1,"type":"stepStarted","workflow_id":"old-' || g || '","k":' || k || '}}')::jsonb
FROM generate_series(1, $3) g, generate_series(1, 10) k;
INSERT INTO {s}.hms_steps (namespace, workflow_id, seq, step, status, attempts,
    started_at, finished_at)
SELECT $1, 'old-' || g, k, 's' || k, 'succeeded', 1, $2, $2
FROM generate_series(1, $3) g, generate_series(1, 4) k;
INSERT INTO {s}.hms_transitions (namespace, workflow_id, transition_id, published,
    created_at)
SELECT $1, 'old-' || g, 't' || k, true, $2
FROM generate_series(1, $3) g, generate_series(1, 5) k;
INSERT INTO {s}.hms_closed (namespace, workflow_id, closed_at)
SELECT $1, 'old-' || g, $2 FROM generate_series(1, $3) g;
"""


def store_url(base: str, schema: str) -> str:
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}schema={schema}"


# -- the projector (child process) --------------------------------------------------------


async def project(url: str) -> None:
    """Apply the stream forever, printing ``<monotonic> <events so far>`` every 0.2 s."""
    store = PostgresStore(url, namespace=NAMESPACE)

    def clock() -> datetime:  # the projector's workflows finish now: none is pruned
        return datetime.now(UTC)

    applied = 0
    said = time.monotonic()
    i = 0
    async with store:
        while True:
            events: list[Any] = []
            while len(events) < 500:
                events.extend(workflow_events(i, clock))
                i += 1
            # Every tenth workflow is left running (its end is not sent): the prune must
            # keep it.
            kept = [e for e in events if e.type != "workflowCompleted" or hash(e.workflow_id) % 10]
            await store.apply_events(kept, [encode(e) for e in kept])
            applied += len(events)
            now = time.monotonic()
            if now - said >= 0.2:
                print(f"{now} {applied}", flush=True)
                said = now


# -- the pruner (this process) ----------------------------------------------------------


async def measure(args: argparse.Namespace, log: Any) -> dict[str, Any]:
    base = args.store or PG_DEFAULT
    schema = f"bench_prune_{uuid.uuid4().hex[:10]}"
    url = store_url(base, schema)
    store = PostgresStore(url, namespace=NAMESPACE)
    admin = await asyncpg.connect(base)
    try:
        async with store:  # creates the schema (the migrations)
            day_ago = datetime.now(UTC) - timedelta(days=1)
            log(f"seeding {args.workflows:,} finished workflows ({args.workflows * 10:,} events)…")
            t0 = time.monotonic()
            await admin.execute(f'SET search_path TO "{schema}"')
            for statement in SEED.format(s=f'"{schema}"').split(";\n"):
                if statement.strip():
                    await admin.execute(statement, NAMESPACE, day_ago, args.workflows)
            await admin.execute("ANALYZE")
            log(f"seeded in {time.monotonic() - t0:.1f}s; starting the projector")
            child = await asyncio.create_subprocess_exec(
                sys.executable, __file__, "--projector", url, stdout=subprocess.PIPE
            )
            samples: list[tuple[float, int]] = []
            first = asyncio.Event()

            async def read() -> None:
                assert child.stdout is not None
                while line := await child.stdout.readline():
                    at, n = line.split()
                    samples.append((float(at), int(n)))
                    first.set()

            reader = asyncio.create_task(read())
            try:
                await first.wait()
                await asyncio.sleep(1.0)  # warm-up: its pool, the first batches
                a0 = time.monotonic()
                await asyncio.sleep(args.baseline)
                p0 = time.monotonic()
                log("pruning…")
                before = datetime.now(UTC) - timedelta(hours=1)
                total = await prune(store, before, batch_size=args.batch, duty=args.duty)
                workflows, events = total.workflows, total.events
                p1 = time.monotonic()
                log(f"pruned {workflows:,} workflows, {events:,} events in {p1 - p0:.1f}s")
                await asyncio.sleep(args.baseline)
                c1 = time.monotonic()
            finally:
                child.terminate()
                await child.wait()
                await reader
            left = await admin.fetchval(
                "SELECT count(*) FROM hms_events WHERE workflow_id LIKE 'old-%'"
            )
            running_kept = await admin.fetchval(
                "SELECT count(*) FROM hms_workflows WHERE status = 'running'"
            )
    finally:
        await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await admin.close()

    def rate(start: float, end: float) -> float:
        inside = [(t, n) for t, n in samples if start <= t <= end]
        if len(inside) < 2:
            return float("nan")
        (ta, na), (tb, nb) = inside[0], inside[-1]
        return (nb - na) / (tb - ta)

    before_rate, during, after = rate(a0, p0), rate(p0, p1), rate(p1, c1)
    normal = (before_rate + after) / 2
    return {
        "bench": "prune",
        "workflows": workflows,
        "events": events,
        "prune_s": round(p1 - p0, 2),
        "rows_per_s": round((events + workflows * 10) / (p1 - p0)),
        "projector_events_per_s": {
            "before": round(before_rate),
            "during": round(during),
            "after": round(after),
        },
        "during_over_normal": round(during / normal, 3),
        "target": 0.9,
        "left_events": left,
        "running_kept": running_kept,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", help=f"Postgres URL (default {PG_DEFAULT})")
    p.add_argument("--workflows", type=int, default=100_000)
    p.add_argument("--batch", type=int, default=500, help="workflows per prune (500)")
    p.add_argument("--duty", type=float, default=0.1, help="retention.duty (0.1)")
    p.add_argument("--baseline", type=float, default=10.0, help="seconds before and after")
    p.add_argument("--json", action="store_true", help="print only the JSON result")
    p.add_argument("--projector", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.projector:
        asyncio.run(project(args.projector))
        return

    def log(text: str) -> None:
        if not args.json:
            print(text, file=sys.stderr)

    result = asyncio.run(measure(args, log))
    if not args.json:
        r = result["projector_events_per_s"]
        print(
            f"projector events/s: before {r['before']:,}, during the prune {r['during']:,}, "
            f"after {r['after']:,}; during / normal = {result['during_over_normal']} "
            f"(target > {result['target']})\n"
            f"prune: {result['workflows']:,} workflows and {result['events']:,} events in "
            f"{result['prune_s']}s ({result['rows_per_s']:,} rows/s); left: "
            f"{result['left_events']} old events; running workflows kept: "
            f"{result['running_kept']:,}"
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
