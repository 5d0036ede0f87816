"""The monitor: process heartbeats and SLA deadlines.

Every process that runs a role publishes a :class:`~hms_bus._events.Heartbeat` on
``hms.heartbeats`` every ``monitor.heartbeat_interval`` seconds (and a last one, marked
``stopping``, when it shuts down cleanly). The monitor keeps the live table; a process
silent for ``missed_heartbeats`` intervals is reported down (a ``processDown`` record on
``hms.heartbeats`` and a warning log line).

It also reads ``hms.events`` and tracks deadlines: a step with ``sla=`` must finish
within that many seconds of starting, a workflow with ``sla=`` must end within that
many seconds of its start. A deadline that passes raises one ``slaBreached`` event on
``hms.events`` and a warning log line; the step is not failed. A deadline counts as
passed only once the monitor has read the bus past it (up to its last empty fetch, or
the newest record it read), so a monitor that reads late never reports a step that
finished in time. On start the monitor
rebuilds open deadlines of running workflows from the store, so a restart loses none.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .._errors import SerializationError
from .._events import (
    Heartbeat,
    ProcessDown,
    SlaBreached,
    StepCompleted,
    StepScheduled,
    StepStarted,
    WorkflowCancelled,
    WorkflowCompleted,
    WorkflowFailed,
    WorkflowStarted,
    decode_event,
    decode_heartbeat,
    encode,
)
from .._status import StepState, WorkflowState
from ..store import ListQuery
from ..transport import Outgoing, Record
from . import BatchRole, Runtime

__all__ = ["Breach", "Monitor", "ProcessInfo"]

log = logging.getLogger("hms_bus.monitor")

_WATCHES = frozenset(
    {
        "workflowStarted",
        "stepStarted",
        "completeStep",
        "stepScheduled",
        "workflowCompleted",
        "workflowFailed",
        "workflowCancelled",
    }
)


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


class Monitor(BatchRole):
    """Watches heartbeats and SLA deadlines (see module docs)."""

    name = "monitor"

    def __init__(self, rt: Runtime) -> None:
        self._processes: dict[str, ProcessInfo] = {}
        self._deadlines: dict[tuple[str, int | None], _Deadline] = {}
        self.breaches: list[Breach] = []
        self._stopping = asyncio.Event()
        self._has_sla = any(
            wf.sla or any(s.sla for s in wf.steps.values()) for wf in rt.registry.workflows.values()
        )
        # Without any sla= there are no deadlines, so the events topic need not be read.
        topics = [rt.topics.heartbeats] + ([rt.topics.events] if self._has_sla else [])
        # The bus time up to which this monitor has read everything: a deadline counts
        # as missed only once the monitor has seen past it, so a monitor that reads
        # late never reports a step that in fact finished in time.
        self._watermark = 0.0
        self._late: list[Outgoing] = []
        super().__init__(rt, topics, on_caught_up=self._caught_up)

    def processes(self) -> list[ProcessInfo]:
        """Every process heard from, live or down."""
        return list(self._processes.values())

    async def run(self) -> None:
        """Consume and check deadlines until stopped."""
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
        for record in records:
            try:
                if record.topic == self._rt.topics.heartbeats:
                    self._on_heartbeat(decode_heartbeat(record.value))
                else:
                    event = decode_event(record.value, _WATCHES)
                    if event is not None:
                        self._on_event(event)
            except SerializationError:
                continue
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

    def _on_event(self, ev: Any) -> None:
        wid = ev.workflow_id
        at = ev.ts.timestamp()
        if isinstance(ev, WorkflowStarted):
            self._watch(wid, ev.workflow, None, None, at)
        elif isinstance(ev, StepStarted):
            self._watch(wid, ev.workflow, ev.step, ev.seq, at)
        elif isinstance(ev, StepCompleted) and ev.outcome == "succeeded":
            self._end((wid, ev.seq), at)
        elif isinstance(ev, StepScheduled):
            for key in [k for k in self._deadlines if k[0] == wid and k[1] is not None]:
                if key[1] is not None and key[1] < ev.seq:
                    self._end(key, at)
        elif isinstance(ev, (WorkflowCompleted, WorkflowFailed, WorkflowCancelled)):
            for key in [k for k in self._deadlines if k[0] == wid]:
                self._end(key, at)

    def _end(self, key: tuple[str, int | None], at: float) -> None:
        """A watched step or workflow ended at ``at``: late is a breach all the same."""
        d = self._deadlines.pop(key, None)
        if d is not None and at - d.since > d.sla:
            self._late.append(self._breach(key[0], d, at - d.since))

    async def _seed(self) -> None:
        """Rebuild open deadlines of running workflows from the store."""
        if not self._has_sla:
            return
        cursor: str | None = None
        try:
            while True:
                page = await self._rt.store.list_workflows(
                    ListQuery(status=WorkflowState.RUNNING, limit=500, cursor=cursor)
                )
                for item in page.items:
                    self._watch(
                        item.workflow_id, item.workflow, None, None, item.created_at.timestamp()
                    )
                    full = await self._rt.store.get_workflow(item.workflow_id)
                    for s in full.steps if full else []:
                        if s.status is StepState.RUNNING and s.started_at is not None:
                            self._watch(
                                item.workflow_id, item.workflow, s.step, s.seq, _ts(s.started_at)
                            )
                cursor = page.next_cursor
                if cursor is None:
                    return
        except Exception as exc:
            log.warning("monitor: could not rebuild SLA deadlines from the store: %s", exc)

    # -- checks -------------------------------------------------------------------------

    async def _check_loop(self) -> None:
        interval = self._rt.settings.monitor.check_interval
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), interval)
            try:
                await self.check()
            except Exception as exc:  # keep checking; the next round retries
                log.warning("monitor: check failed: %s", exc)

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
        return Outgoing(self._rt.topics.events, encode(breach), key=wid.encode())

    async def check(self, now: float | None = None) -> None:
        """Report missed deadlines and silent processes (runs every ``check_interval``)."""
        now = time.time() if now is None else now
        seen = min(now, self._watermark)
        out: list[Outgoing] = []
        for key, d in list(self._deadlines.items()):
            if seen - d.since <= d.sla:
                continue
            del self._deadlines[key]
            out.append(self._breach(key[0], d, now - d.since))
        cfg = self._rt.settings.monitor
        for pid, info in self._processes.items():
            limit = info.heartbeat.interval * cfg.missed_heartbeats
            if not info.down and now - info.last_seen > limit:
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
                    last_seen=datetime.fromtimestamp(info.last_seen).astimezone(),
                )
                out.append(Outgoing(self._rt.topics.heartbeats, encode(down), key=pid.encode()))
        await self._rt.publish(out)


def _ts(value: datetime) -> float:
    return value.timestamp()
