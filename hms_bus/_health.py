"""The installation's health, as the monitor sees it and ``hms-bus health`` reports it.

The monitor writes a :class:`HealthReport` to the store every ``monitor.check_interval``
seconds: every process it hears from (live, or down for up to ``monitor.forget_after``
seconds), the SLA breaches still open (the step or workflow has not ended yet) and the
steps stuck on a worker that is gone. :meth:`HealthReport.problems` says what makes the
installation unhealthy:

- the report is stale: no monitor is running (or it cannot reach the store);
- a process is down and no live process runs its roles (or serves its steps): a down
  worker whose steps another live worker serves is listed but is not a problem, so a
  replaced pod does not keep the probe failing;
- an SLA breach is open;
- a step is stuck;
- the monitor's own process cannot reach the bus (an outage: the other processes
  most likely cannot either, and their heartbeats are not heard).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

from pydantic import BaseModel, Field

from ._envelope import utcnow
from ._process_messages import ProcessFacts

__all__ = ["BreachReport", "HealthReport", "OutageReport", "ProcessReport", "StuckReport"]


class ProcessReport(ProcessFacts):
    """One process, from its last heartbeat."""

    last_seen: datetime
    state: Literal["live", "down"]


class BreachReport(BaseModel):
    """An SLA deadline missed by a step (``step`` set) or workflow that is still running."""

    workflow_id: str
    workflow: str
    step: str | None = None
    seq: int | None = None
    sla: float
    since: datetime
    breached_at: datetime


class StuckReport(BaseModel):
    """A step still running past its timeout on a worker that is down."""

    workflow_id: str
    workflow: str
    step: str
    seq: int
    attempt: int
    worker: str
    started_at: datetime
    reported_at: datetime


class OutageReport(BaseModel):
    """The bus or the store not answering the monitor's process."""

    what: Literal["bus", "store"]
    since: datetime
    error: str


class HealthReport(BaseModel):
    """What the monitor last wrote (see module docs)."""

    monitor: str
    at: datetime
    check_interval: float
    processes: list[ProcessReport] = Field(default_factory=list)
    breaches: list[BreachReport] = Field(default_factory=list)
    stuck: list[StuckReport] = Field(default_factory=list)
    outages: list[OutageReport] = Field(default_factory=list)

    def stale(self, now: datetime | None = None) -> bool:
        """True when the monitor has not written for several check intervals."""
        now = now or utcnow()
        return now - self.at > timedelta(seconds=max(10.0, 5 * self.check_interval))

    def uncovered(self) -> list[tuple[ProcessReport, list[str]]]:
        """Down processes with what no live process runs instead (roles, ``step:`` names)."""
        live = [p for p in self.processes if p.state == "live"]
        live_roles = {r for p in live for r in p.roles}
        live_steps = {s for p in live for s in p.steps}
        out = []
        for p in self.processes:
            if p.state != "down":
                continue
            missing = [r for r in p.roles if r != "worker" and r not in live_roles]
            missing += [f"step:{s}" for s in p.steps if s not in live_steps]
            if missing:
                out.append((p, missing))
        return out

    def problems(self, now: datetime | None = None) -> list[str]:
        """Why the installation is unhealthy; empty when it is healthy."""
        out = []
        if self.stale(now):
            age = ((now or utcnow()) - self.at).total_seconds()
            out.append(f"the monitor ({self.monitor}) has not reported for {age:.0f}s")
        for p, missing in self.uncovered():
            out.append(
                f"process {p.process_id} ({p.service}) is down and nothing else runs "
                f"{', '.join(missing)}"
            )
        for b in self.breaches:
            what = (
                f"step {b.workflow}.{b.step} (seq {b.seq})" if b.step else f"workflow {b.workflow}"
            )
            out.append(f"SLA breached: {what} of {b.workflow_id} (SLA {b.sla:g}s)")
        for s in self.stuck:
            out.append(
                f"step {s.workflow}.{s.step} of {s.workflow_id} is stuck on {s.worker}, "
                "which is down"
            )
        for o in self.outages:
            age = ((now or utcnow()) - o.since).total_seconds()
            out.append(
                f"the monitor's process has not reached the {o.what} for {age:.0f}s ({o.error})"
            )
        return out
