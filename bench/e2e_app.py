"""The app of ``bench/e2e.py``: a 4-step pass-through workflow that stamps its hops.

Each handler appends two ``time.perf_counter()`` stamps to the payload's list ``t``
(when it began and when it returned) and passes the payload on. On Linux
``perf_counter`` reads ``CLOCK_MONOTONIC``, which every process of the machine shares,
so the stamps of handlers run in worker processes line up with the client's: the
final result of a workflow carries its whole hop timeline, whichever process ran
each step.

``parked`` is a one-step workflow whose step schedules a follow-up an hour later: a
workflow that stays ``running`` for as long as a benchmark needs waiters to wait on.

The settings come from the environment (``HMS_*``), as for any app the CLI runs:
``hms-bus worker e2e_app:mgmt`` with ``bench/`` on ``PYTHONPATH``.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import hms_bus

STEPS = ("s1", "s2", "s3", "s4")
WORKFLOW = "bench"
PARKED = "parked"

mgmt = hms_bus.init("bench-e2e")
mgmt.define_workflow(WORKFLOW, list(STEPS))
mgmt.define_workflow(PARKED, ["park", "later"])


def _stamped(step: str) -> Any:
    clock = time.perf_counter

    async def handler(ctx: hms_bus.StepContext) -> dict[str, Any]:
        began = clock()
        payload = ctx.payload
        return {"i": payload["i"], "t": [*payload["t"], began, clock()]}

    handler.__name__ = f"step_{step}"
    return handler


for _step in STEPS:
    mgmt.on_step(f"{WORKFLOW}.{_step}")(_stamped(_step))


@mgmt.on_step(f"{PARKED}.park")
async def park(ctx: hms_bus.StepContext) -> hms_bus.Next:
    return hms_bus.Next("later", delay=timedelta(hours=1))


@mgmt.on_step(f"{PARKED}.later")
async def later(ctx: hms_bus.StepContext) -> None:
    return None


def hop_latencies(result: dict[str, Any]) -> list[float]:
    """The hop latencies (seconds) of one finished workflow from its stamps: for each
    step, when its handler began minus when the previous hop was emitted (the start
    call for ``s1``, the previous handler's return for the others)."""
    t = result["t"]
    emitted = t[0]
    out = []
    for k in range(len(STEPS)):
        began, returned = t[1 + 2 * k], t[2 + 2 * k]
        out.append(began - emitted)
        emitted = returned
    return out
