"""Instructions per workflow on ``memory://``: the CPU cost of the machinery, without noise.

Wall-clock figures on a shared 2-core machine move by ±15% from run to run; an
instruction count moves by about ±0.3%. This runs N four-step workflows with
pass-through handlers, every role in one process on the embedded default (start all,
then wait for each), under valgrind's cachegrind, twice: with ``--small`` and with
``--small + --workflows`` workflows. The difference divided by ``--workflows`` is the
cost of one workflow, with the interpreter's start-up and the imports taken out.

    python bench/instructions.py [--workflows 1000] [--small 200]

Compare two checkouts by running each one's copy, or one copy against another tree with
``PYTHONPATH=<tree>``. Needs ``valgrind`` (Debian's package); hardware counters
(``perf stat``) are often unavailable in virtual machines, and valgrind counts the same
on any machine. A run of the defaults takes about two minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys

import hms_bus

STEPS = ("s1", "s2", "s3", "s4")


async def run(n: int) -> None:
    """N workflows through every role in this process; each must complete."""
    mgmt = hms_bus.init()
    mgmt.configure(monitor={"heartbeat_interval": 0})
    mgmt.define_workflow("w", list(STEPS))
    for step in STEPS:

        async def handler(payload: dict[str, object], _step: str = step) -> dict[str, str]:
            return {"ok": _step}

        mgmt.on_step(f"w.{step}")(handler)
    async with mgmt:
        ids = [(await mgmt.start("w", {"i": i})).workflow_id for i in range(n)]
        for wid in ids:
            status = await mgmt.wait(wid, timeout=120)
            if status.status != "completed":
                raise SystemExit(f"workflow {wid} ended {status.status}")


def count(n: int) -> int:
    """Instructions of a whole run of ``n`` workflows under cachegrind."""
    out = subprocess.run(
        [
            "valgrind",
            "--tool=cachegrind",
            "--cache-sim=no",
            "--cachegrind-out-file=/dev/null",
            sys.executable,
            __file__,
            "--only",
            str(n),
        ],
        capture_output=True,
        text=True,
        env=os.environ,
    )
    found = re.search(r"I\s+refs:\s+([\d,]+)", out.stderr)
    if out.returncode != 0 or found is None:
        raise SystemExit(f"the run of {n} workflows failed:\n{out.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workflows", type=int, default=1000, help="workflows counted")
    p.add_argument("--small", type=int, default=200, help="workflows of the baseline run")
    p.add_argument("--only", type=int, help=argparse.SUPPRESS)  # one run, no valgrind
    args = p.parse_args()
    if args.only is not None:
        asyncio.run(run(args.only))
        return
    if args.workflows < 1 or args.small < 1:
        p.error("--workflows and --small must be at least 1")
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    print(f"hms-bus from {os.path.dirname(hms_bus.__file__)}", file=sys.stderr)
    print(f"counting {args.small} and {args.small + args.workflows} workflows", file=sys.stderr)
    small = count(args.small)
    large = count(args.small + args.workflows)
    per = (large - small) / args.workflows
    print(f"{per / 1e6:.2f}M instructions per 4-step workflow on memory:// ({per:,.0f})")


if __name__ == "__main__":
    main()
