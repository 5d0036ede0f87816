"""The monitor: process heartbeats, SLA deadlines, stuck steps and the health report.

Every process that runs a role publishes a
:class:`~hms_bus._process_messages.Heartbeat` on ``hms.heartbeats`` every
``monitor.heartbeat_interval`` seconds (and a last one, marked ``stopping``, when it
shuts down cleanly). The monitor keeps the live table; a process
silent for ``missed_heartbeats`` intervals is reported down (a ``processDown`` record on
``hms.heartbeats``, a warning log line and the ``hms.processes`` metric) and forgotten
``forget_after`` seconds later.

It also reads ``hms.events`` (decoding only the event types it acts on):

- SLA deadlines: a step with ``sla=`` must finish within that many seconds of
  starting, a workflow with ``sla=`` must end within that many seconds of its start. A
  deadline that passes raises one ``slaBreached`` event on ``hms.events``, a warning log
  line and ``hms.sla.breaches``; the step is not failed. The breach stays *open* (in
  the health report) until the step or workflow ends. A deadline counts as passed only
  once the monitor has read the bus past it (up to its last empty fetch, or the newest
  record it read), so a monitor that reads late never reports a step that finished in
  time.
- Stuck steps: a step still running past its ``timeout=`` (any time, without one) on a
  worker that is reported down raises one ``stepStuck`` event, a warning and
  ``hms.steps.stuck``. Kafka normally hands the command to another worker, whose
  ``stepStarted`` clears the report.
- Workflow durations (``hms.workflow.duration``), from each start to its end.

Every ``check_interval`` it writes a :class:`~hms_bus._health.HealthReport` to the store,
which ``hms-bus health`` reads. On start it rebuilds the start times and open deadlines
of running workflows from the store, so a restart loses none. It assumes one monitor
per namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .._codec import decode_heartbeat, encode, encode_line, split_lines
from .._errors import SerializationError
from .._events import SlaBreached, StepStuck
from .._health import BreachReport, HealthReport, OutageReport, ProcessReport, StuckReport
from .._outage import Outage
from .._process_messages import Heartbeat, ProcessDown, ProcessFacts
from .._status import StepState, WorkflowState
from .._telemetry import Attr
from ..store import ListQuery
from ..transport import Outgoing, Record
from . import BatchRole, Runtime
from ._seen import ENDED, Seen, seen

__all__ = ["Breach", "Monitor", "ProcessInfo"]

log = logging.getLogger("hms_bus.monitor")

_STATUS = {
    "workflowCompleted": "completed",
    "workflowFailed": "failed",
    "workflowCancelled": "cancelled",
}


@dataclass(slots=True)
class ProcessInfo:
    """What the monitor knows of one process, from its last heartbeat."""

    heartbeat: Heartbeat
    last_seen: float  # time.time()
    down: bool = False


@dataclass(frozen=True, slots=True)
class Breach:
    """An SLA that was missed: of a step (``step`` set) or of a workflow."""

    workflow_id: str
    workflow: str
    step: str | None
    seq: int | None
    sla: float
    elapsed: float


@dataclass(slots=True)
class _Deadline:
    workflow: str
    step: str | None
    seq: int | None
    sla: float
    since: float  # epoch seconds
    breached_at: float | None = None  # set once reported; the breach is open until the end


@dataclass(slots=True)
class _Running:
    workflow: str
    step: str
    attempt: int
    worker: str
    since: float
    stuck_at: float | None = None


class Monitor(BatchRole):
    """Watches heartbeats, SLA deadlines and stuck steps (see module docs)."""

    name = "monitor"

    def __init__(self, rt: Runtime) -> None:
        self._processes: dict[str, ProcessInfo] = {}
        self._deadlines: dict[tuple[str, int | None], _Deadline] = {}
        self._running: dict[tuple[str, int], _Running] = {}
        self._starts: dict[str, tuple[str, float]] = {}  # workflow_id: (workflow, started)
        self.breaches: list[Breach] = []
        self.stuck: list[tuple[str, int]] = []
        self._stopping = asyncio.Event()
        self._started = time.time()
        # The bus time up to which this monitor has read everything: a deadline counts
        # as missed only once the monitor has seen past it, so a monitor that reads
        # late never reports a step that in fact finished in time.
        self._watermark = 0.0
        self._late: list[Outgoing] = []
        topics = [rt.topics.heartbeats, rt.topics.events]
        super().__init__(rt, topics, on_caught_up=self._caught_up)

    def processes(self) -> list[ProcessInfo]:
        """Every process heard from, live or down (until forgotten)."""
        return list(self._processes.values())

    def process_counts(self) -> list[tuple[float, dict[str, Any]]]:
        """``hms.processes`` observations: how many are live and how many down."""
        down = sum(1 for p in self._processes.values() if p.down)
        return [(len(self._processes) - down, {Attr.STATE: "live"}), (down, {Attr.STATE: "down"})]

    async def run(self) -> None:
        """Consume and check until stopped."""
        await self._seed()
        checker = asyncio.create_task(self._check_loop())
        try:
            await self._loop.run()
        finally:
            self._stopping.set()
            checker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await checker

    def stop(self) -> None:
        """Stop consuming and checking."""
        self._stopping.set()
        self._loop.stop()

    # -- input --------------------------------------------------------------------------

    def _caught_up(self, asked: float) -> None:
        self._watermark = max(self._watermark, asked)

    async def _process(self, records: list[Record]) -> None:
        self._watermark = max(self._watermark, max(r.timestamp for r in records))
        self._late = []
        heartbeats = self._rt.topics.heartbeats
        for record in records:
            try:
                if record.topic == heartbeats:
                    self._on_heartbeat(decode_heartbeat(record.value))
                    continue
            except SerializationError:
                continue
            for line in split_lines(record.value):
                event = seen(line)
                if event is not None:
                    self._on_event(event)
        # Steps that finished after their deadline before a check saw it pass.
        await self._rt.publish(self._late)

    def _on_heartbeat(self, hb: Heartbeat | ProcessDown) -> None:
        if isinstance(hb, ProcessDown):
            return
        if hb.stopping:
            self._processes.pop(hb.process_id, None)
            return
        known = self._processes.get(hb.process_id)
        if known is not None and known.down:
            log.warning("process %s (%s) is back", hb.process_id, hb.service)
        self._processes[hb.process_id] = ProcessInfo(hb, time.time())

    def _sla_of(self, workflow: str, step: str | None) -> float | None:
        wf = self._rt.registry.workflows.get(workflow)
        if wf is None:
            return None
        if step is None:
            return wf.sla
        s = wf.steps.get(step)
        return s.sla if s is not None else None

    def _watch(
        self, wid: str, workflow: str, step: str | None, seq: int | None, since: float
    ) -> None:
        sla = self._sla_of(workflow, step)
        if sla is not None and (wid, seq) not in self._deadlines:
            self._deadlines[(wid, seq)] = _Deadline(workflow, step, seq, sla, since)

    def _on_event(self, ev: Seen) -> None:
        at = ev.at
        wid = ev.workflow_id
        kind = ev.type
        seq = ev.seq  # seen() drops step events without one
        if kind == "stepScheduled":
            # A later step was scheduled: the earlier ones of this workflow have ended.
            for run_key in [k for k in self._running if k[0] == wid and k[1] < seq]:
                del self._running[run_key]
            if self._deadlines:
                for key in [k for k in self._deadlines if k[0] == wid and k[1] is not None]:
                    if key[1] is not None and key[1] < seq:
                        self._end(key, at)
        elif kind == "stepStarted":
            self._running[(wid, seq)] = _Running(
                ev.workflow, ev.step or "", ev.attempt, ev.worker or "", at
            )
            self._watch(wid, ev.workflow, ev.step, seq, at)
        elif kind == "completeStep":
            running = self._running.get((wid, seq))
            if running is not None and running.attempt <= ev.attempt:
                del self._running[(wid, seq)]
            if ev.outcome == "succeeded" and self._deadlines:
                self._end((wid, seq), at)
        elif kind == "workflowStarted":
            self._starts.setdefault(wid, (ev.workflow, at))
            self._watch(wid, ev.workflow, None, None, at)
        elif kind in ENDED:
            started = self._starts.pop(wid, None)
            tel = self._rt.telemetry
            if started is not None and tel.metrics:
                tel.workflow_duration.record(
                    max(0.0, at - started[1]),
                    tel.attrs(Attr.HMS_WORKFLOW, started[0], Attr.HMS_STATUS, _STATUS[ev.type]),
                )
            for run_key in [k for k in self._running if k[0] == wid]:
                del self._running[run_key]
            for key in [k for k in self._deadlines if k[0] == wid]:
                self._end(key, at)

    def _end(self, key: tuple[str, int | None], at: float) -> None:
        """A watched step or workflow ended at ``at``: late is a breach all the same."""
        d = self._deadlines.pop(key, None)
        if d is not None and d.breached_at is None and at - d.since > d.sla:
            self._late.append(self._breach(key[0], d, at - d.since))

    async def _seed(self) -> None:
        """Rebuild start times and open deadlines of running workflows from the store."""
        has_sla = any(
            wf.sla or any(s.sla for s in wf.steps.values())
            for wf in self._rt.registry.workflows.values()
        )
        cursor: str | None = None
        try:
            while True:
                page = await self._rt.store.list_workflows(
                    ListQuery(status=WorkflowState.RUNNING, limit=500, cursor=cursor)
                )
                for item in page.items:
                    at = item.created_at.timestamp()
                    self._starts.setdefault(item.workflow_id, (item.workflow, at))
                    self._watch(item.workflow_id, item.workflow, None, None, at)
                    if not has_sla:
                        continue
                    full = await self._rt.store.get_workflow(item.workflow_id)
                    for s in full.steps if full else []:
                        if s.status is StepState.RUNNING and s.started_at is not None:
                            self._watch(
                                item.workflow_id,
                                item.workflow,
                                s.step,
                                s.seq,
                                s.started_at.timestamp(),
                            )
                cursor = page.next_cursor
                if cursor is None:
                    return
        except Exception as exc:
            log.warning("monitor: could not rebuild running workflows from the store: %s", exc)

    # -- checks -------------------------------------------------------------------------

    async def _check_loop(self) -> None:
        interval = self._rt.settings.monitor.check_interval
        outage = Outage("monitor: check", log)
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), interval)
            try:
                await self.check()
            except Exception as exc:  # keep checking; the next round retries
                outage.failed(exc)
            else:
                outage.ok()

    def _event(self, event: Any) -> Outgoing:
        return Outgoing(self._rt.topics.events, encode_line(event), key=event.workflow_id.encode())

    def _breach(self, wid: str, d: _Deadline, elapsed: float) -> Outgoing:
        what = f"step {d.workflow}.{d.step} (seq {d.seq})" if d.step else f"workflow {d.workflow}"
        log.warning("SLA breached: %s of %s ran %.1fs, SLA %.1fs", what, wid, elapsed, d.sla)
        breach = SlaBreached(
            workflow_id=wid,
            workflow=d.workflow,
            step=d.step,
            seq=d.seq,
            sla=d.sla,
            elapsed=elapsed,
        )
        self.breaches.append(Breach(wid, d.workflow, d.step, d.seq, d.sla, elapsed))
        tel = self._rt.telemetry
        if tel.metrics:
            tel.sla_breaches.add(
                1, tel.attrs(Attr.HMS_WORKFLOW, d.workflow, Attr.HMS_STEP, d.step or "")
            )
        return self._event(breach)

    def _gone(self, worker: str, since: float, now: float) -> bool:
        """True when ``worker`` is reported down, or was never heard from although this
        monitor has listened long enough (since it started, and since the step started)
        to have heard its heartbeats."""
        info = self._processes.get(worker)
        if info is not None:
            return info.down
        cfg = self._rt.settings.monitor
        # Without heartbeats (interval 0) an unknown worker proves nothing.
        window = cfg.heartbeat_interval * (cfg.missed_heartbeats + 1)
        return bool(worker) and window > 0 and now - max(self._started, since) > window

    async def check(self, now: float | None = None) -> None:
        """Report missed deadlines, silent processes and stuck steps, then write the
        health report (runs every ``check_interval``)."""
        now = time.time() if now is None else now
        seen = min(now, self._watermark)
        out: list[Outgoing] = []
        for key, d in self._deadlines.items():
            if d.breached_at is None and seen - d.since > d.sla:
                d.breached_at = now
                out.append(self._breach(key[0], d, now - d.since))
        cfg = self._rt.settings.monitor
        for pid, info in list(self._processes.items()):
            limit = info.heartbeat.interval * cfg.missed_heartbeats
            if info.down and now - info.last_seen > cfg.forget_after:
                del self._processes[pid]
            elif not info.down and now - info.last_seen > limit:
                info.down = True
                hb = info.heartbeat
                log.warning(
                    "process %s (%s, roles %s, pid %d on %s) is down: no heartbeat for %.1fs",
                    pid,
                    hb.service,
                    ",".join(hb.roles),
                    hb.pid,
                    hb.host,
                    now - info.last_seen,
                )
                down = ProcessDown(
                    process_id=pid,
                    service=hb.service,
                    last_seen=datetime.fromtimestamp(info.last_seen, UTC),
                )
                out.append(Outgoing(self._rt.topics.heartbeats, encode(down), key=pid.encode()))
        out.extend(self._check_stuck(now))
        await self._rt.publish(out)
        await self._rt.store.save_health(self.report(now).model_dump(mode="json"))

    def _check_stuck(self, now: float) -> list[Outgoing]:
        out = []
        tel = self._rt.telemetry
        for (wid, seq), r in self._running.items():
            if r.stuck_at is not None:
                continue
            wf = self._rt.registry.workflows.get(r.workflow)
            step = wf.steps.get(r.step) if wf is not None else None
            timeout = step.timeout if step is not None and step.timeout else 0.0
            if now - r.since <= timeout or not self._gone(r.worker, r.since, now):
                continue
            r.stuck_at = now
            self.stuck.append((wid, seq))
            log.warning(
                "step %s.%s (seq %d, attempt %d) of %s is stuck: running for %.1fs on %s, "
                "which is down",
                r.workflow,
                r.step,
                seq,
                r.attempt,
                wid,
                now - r.since,
                r.worker or "an unknown worker",
            )
            if tel.metrics:
                tel.stuck_steps.add(
                    1, tel.attrs(Attr.HMS_WORKFLOW, r.workflow, Attr.HMS_STEP, r.step)
                )
            out.append(
                self._event(
                    StepStuck(
                        workflow_id=wid,
                        workflow=r.workflow,
                        step=r.step,
                        seq=seq,
                        attempt=r.attempt,
                        worker=r.worker,
                        running_for=now - r.since,
                    )
                )
            )
        return out

    def report(self, now: float | None = None) -> HealthReport:
        """The health report as of now (what :meth:`check` writes to the store)."""
        now = time.time() if now is None else now

        def at(t: float) -> datetime:
            return datetime.fromtimestamp(t, UTC)

        processes = [
            ProcessReport(
                **info.heartbeat.model_dump(include=set(ProcessFacts.model_fields)),
                last_seen=at(info.last_seen),
                state="down" if info.down else "live",
            )
            for info in self._processes.values()
        ]
        breaches = [
            BreachReport(
                workflow_id=key[0],
                workflow=d.workflow,
                step=d.step,
                seq=d.seq,
                sla=d.sla,
                since=at(d.since),
                breached_at=at(d.breached_at),
            )
            for key, d in self._deadlines.items()
            if d.breached_at is not None
        ]
        stuck = [
            StuckReport(
                workflow_id=wid,
                workflow=r.workflow,
                step=r.step,
                seq=seq,
                attempt=r.attempt,
                worker=r.worker,
                started_at=at(r.since),
                reported_at=at(r.stuck_at),
            )
            for (wid, seq), r in self._running.items()
            if r.stuck_at is not None
        ]
        return HealthReport(
            monitor=self._rt.process_id,
            at=at(now),
            check_interval=self._rt.settings.monitor.check_interval,
            processes=processes,
            breaches=breaches,
            stuck=stuck,
            outages=[
                OutageReport(what=name, since=at(now - o.lasted), error=o.error)
                for name, o in self._rt.outages.items()
                if o.attempts
            ],
        )
