"""The embedded state store: everything in this process's memory.

``memory://`` is private to one Management; ``memory://name`` is shared by every
Management of the process that names it, which is how a client, workers and a
coordinator built as separate Managements see one state in a single process. It keeps
everything until the process exits (no retention), which suits demos, tests and
single-process deployments whose state need not outlive them.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

import orjson
from pydantic import JsonValue

from .._codec import decode_event, encode
from .._errors import ConfigError, StoreError
from .._events import WorkflowEvent
from .._ledger import plan_claims, reads_of
from .._projection import WorkflowRow, fold
from .._status import WorkflowPage, WorkflowStatus
from ..transport import Outgoing, TopicPartition
from . import (
    ChangeCallback,
    ClaimResult,
    ListQuery,
    Pruned,
    RecordAt,
    StartResult,
    Timer,
    TransitionClaim,
)
from ._cursor import encode_cursor, parse_cursor

__all__ = ["MemoryStore"]


@dataclass(slots=True)
class _Transition:
    messages: tuple[Outgoing, ...] | None  # dropped once published
    published: bool = False


@dataclass(slots=True)
class _State:
    workflows: dict[str, WorkflowRow] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)  # creation order, oldest first
    seen: set[str] = field(default_factory=set)
    # Encoded, not as models: one untracked bytes object per event instead of a few
    # tracked objects each, which keeps the garbage collector's full passes short.
    history: dict[str, list[bytes]] = field(default_factory=dict)
    transitions: dict[tuple[str, str], _Transition] = field(default_factory=dict)
    closed: set[str] = field(default_factory=set)
    facts: dict[str, dict[str, JsonValue]] = field(default_factory=dict)  # by workflow
    ticks: dict[str, datetime] = field(default_factory=dict)  # schedule -> last tick
    timers: dict[str, Timer] = field(default_factory=dict)
    timers_by_workflow: dict[str, set[str]] = field(default_factory=dict)
    # (available_at as epoch seconds, timer_id); stale entries are skipped lazily
    timer_heap: list[tuple[float, str]] = field(default_factory=list)
    timer_added: asyncio.Event = field(default_factory=asyncio.Event)
    watchers: list[ChangeCallback] = field(default_factory=list)
    health: dict[str, Any] | None = None
    worker_starts: dict[RecordAt, int] = field(default_factory=dict)


_NAMED: dict[tuple[str, str], _State] = {}


class MemoryStore:
    """A :class:`~hms_bus.store.StateStore` in process memory (see module docs)."""

    durable = False

    def __init__(self, url: str = "memory://", *, namespace: str = "", **_options: object) -> None:
        parts = urlsplit(url)
        if parts.scheme != "memory" or parts.path not in ("", "/") or parts.query:
            raise ConfigError(f"invalid memory store URL {url!r}: use memory:// or memory://name")
        self._url = url
        self._name = parts.netloc
        self._namespace = namespace
        self._state: _State | None = None
        self._watching: list[ChangeCallback] = []

    @property
    def url(self) -> str:
        """The URL this store was made from."""
        return self._url

    async def __aenter__(self) -> Self:
        if self._name:
            # Each namespace has its own state, as it has its own topics.
            self._state = _NAMED.setdefault((self._name, self._namespace), _State())
        else:
            self._state = self._state or _State()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._state is not None:
            for callback in self._watching:
                with contextlib.suppress(ValueError):
                    self._state.watchers.remove(callback)
        self._watching.clear()

    @property
    def _s(self) -> _State:
        if self._state is None:
            raise StoreError("the memory store is not open: use 'async with'")
        return self._state

    # -- starts -------------------------------------------------------------------------

    async def register_start(
        self,
        workflow_id: str,
        workflow: str,
        payload: JsonValue,
        start_event_id: str,
        now: datetime,
    ) -> StartResult:
        """Register a workflow as running unless its id exists already."""
        s = self._s
        row = s.workflows.get(workflow_id)
        if row is not None:
            return StartResult(False, row.workflow, row.start_event_id, row.confirmed, row.payload)
        row = WorkflowRow(
            workflow_id=workflow_id,
            workflow=workflow,
            created_at=now,
            updated_at=now,
            payload=_copy(payload),
            start_event_id=start_event_id,
        )
        s.workflows[workflow_id] = row
        s.order.append(workflow_id)
        return StartResult(True, workflow, start_event_id, False, payload)

    # -- projection ---------------------------------------------------------------------

    async def apply_events(
        self, events: Sequence[WorkflowEvent], bodies: Sequence[bytes] | None = None
    ) -> int:
        """Fold events into workflow status, skipping event ids seen before, and tell
        the watchers what changed."""
        s = self._s
        new: list[Any] = []
        for i, ev in enumerate(events):
            if ev.event_id in s.seen:
                continue
            s.seen.add(ev.event_id)
            new.append(ev)
            body = bodies[i] if bodies is not None else encode(ev)
            s.history.setdefault(ev.workflow_id, []).append(body)
        fresh = [w for w in dict.fromkeys(e.workflow_id for e in new) if w not in s.workflows]
        changes = fold(s.workflows, new).changes
        s.order.extend(fresh)
        if changes:
            for callback in list(s.watchers):
                callback(changes)
        return len(new)

    # -- coordinator ledger -------------------------------------------------------------

    async def claim_transitions(self, claims: Sequence[TransitionClaim]) -> list[ClaimResult]:
        """Record each claim once (:func:`~hms_bus._ledger.plan_claims`)."""
        s = self._s
        keys = {(c.workflow_id, c.transition_id) for c in claims}
        known = {k: s.transitions[k] for k in keys if k in s.transitions}
        facts = {
            (wid, k): v
            for wid, prefix in reads_of(claims)
            for k, v in s.facts.get(wid, {}).items()
            if k.startswith(prefix)
        }
        plan = plan_claims(
            claims,
            {k: t.published for k, t in known.items()},
            lambda k: known[k].messages or (),
            {c.workflow_id for c in claims if c.workflow_id in s.closed},
            facts,
        )
        for c in plan.new:
            s.transitions[(c.workflow_id, c.transition_id)] = _Transition(messages=c.messages)
        for (wid, k), v in plan.facts.items():
            s.facts.setdefault(wid, {})[k] = None if v is None else orjson.loads(orjson.dumps(v))
        for t in plan.timers:
            self._add_timer(t)
        for wid in plan.reopening:
            s.closed.discard(wid)
        for wid in plan.closing:
            s.closed.add(wid)
            for tid in s.timers_by_workflow.pop(wid, set()):
                s.timers.pop(tid, None)
        return plan.results

    async def mark_published(self, keys: Sequence[tuple[str, str]]) -> None:
        """Mark claims published and drop their recorded messages."""
        for key in keys:
            t = self._s.transitions.get(key)
            if t is not None:
                t.published = True
                t.messages = None

    # -- timers -------------------------------------------------------------------------

    def _add_timer(self, timer: Timer) -> None:
        s = self._s
        if timer.timer_id in s.timers:
            return
        s.timers[timer.timer_id] = timer
        s.timers_by_workflow.setdefault(timer.workflow_id, set()).add(timer.timer_id)
        heapq.heappush(s.timer_heap, (timer.due_at.timestamp(), timer.timer_id))
        s.timer_added.set()

    async def claim_due_timers(
        self, *, now: datetime | None = None, limit: int, lease: float, owner: str
    ) -> list[Timer]:
        """Lease due timers (by ``now``, else this process's clock): each goes back on
        the heap at ``now + lease``."""
        s = self._s
        heap = s.timer_heap
        out: list[Timer] = []
        t_now = time.time() if now is None else now.timestamp()
        while heap and heap[0][0] <= t_now and len(out) < limit:
            _, tid = heapq.heappop(heap)
            timer = s.timers.get(tid)
            if timer is None:
                continue  # deleted, or dropped when its workflow closed
            heapq.heappush(heap, (t_now + lease, tid))
            out.append(timer)
        return out

    async def delete_timers(self, timer_ids: Sequence[str]) -> None:
        """Forget timers (their heap entries are skipped when reached)."""
        s = self._s
        for tid in timer_ids:
            timer = s.timers.pop(tid, None)
            if timer is not None:
                ids = s.timers_by_workflow.get(timer.workflow_id)
                if ids is not None:
                    ids.discard(tid)
                    if not ids:
                        del s.timers_by_workflow[timer.workflow_id]

    async def wait_for_timers(self, timeout: float) -> None:
        """Sleep until the earliest timer is due, a timer is added, or ``timeout``."""
        s = self._s
        if s.timer_heap:
            timeout = min(timeout, max(0.0, s.timer_heap[0][0] - time.time()))
        if timeout <= 0:
            return
        s.timer_added.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await s.timer_added.wait()

    # -- queries ------------------------------------------------------------------------

    async def get_workflow(self, workflow_id: str) -> WorkflowStatus | None:
        """The workflow with its steps, or None."""
        row = self._s.workflows.get(workflow_id)
        return None if row is None else _frozen(row)

    async def get_workflows(self, workflow_ids: Sequence[str]) -> dict[str, WorkflowStatus]:
        """The workflows that exist among ``workflow_ids``, by id."""
        rows = self._s.workflows
        return {w: _frozen(rows[w]) for w in workflow_ids if w in rows}

    async def watch(self, on_change: ChangeCallback) -> None:
        """Call ``on_change`` with the changes of every batch projected into this state,
        by any Management of the process that shares it (``memory://name``)."""
        self._s.watchers.append(on_change)
        self._watching.append(on_change)

    async def count_workflows(self, workflow: str | None = None) -> dict[str, int]:
        """Workflows by status."""
        counts: dict[str, int] = {}
        for row in self._s.workflows.values():
            if workflow is None or row.workflow == workflow:
                counts[row.status.value] = counts.get(row.status.value, 0) + 1
        return counts

    async def list_workflows(self, query: ListQuery) -> WorkflowPage:
        """Newest first by (created_at, workflow_id), filtered, keyset-paged."""
        s = self._s
        after = parse_cursor(query.cursor) if query.cursor else None
        rows = sorted(
            (s.workflows[w] for w in s.order),
            key=lambda r: (r.created_at, r.workflow_id),
            reverse=True,
        )
        items: list[WorkflowRow] = []
        more = False
        for row in rows:
            if after is not None and (row.created_at, row.workflow_id) >= after:
                continue
            if query.workflow is not None and row.workflow != query.workflow:
                continue
            if query.status is not None and row.status != query.status:
                continue
            if query.since is not None and row.created_at < query.since:
                continue
            if query.until is not None and row.created_at >= query.until:
                continue
            if len(items) == query.limit:
                more = True
                break
            items.append(row)
        return WorkflowPage(
            items=[_frozen(r, with_steps=False) for r in items],
            next_cursor=encode_cursor(items[-1]) if more and items else None,
        )

    async def take_over_starts(
        self, commands: Sequence[RecordAt], committed: Mapping[TopicPartition, int]
    ) -> list[int]:
        """Earlier starts of each command; those never counted are counted once."""
        starts = self._s.worker_starts
        if committed:
            for at in [at for at in starts if committed.get(at[:2], -1) > at[2]]:
                del starts[at]
        prior = [starts.get(at, 0) for at in commands]
        for at, n in zip(commands, prior, strict=True):
            if n == 0:
                starts[at] = 1
        return prior

    async def count_start(self, command: RecordAt) -> int:
        """One more start of ``command``."""
        starts = self._s.worker_starts
        starts[command] = n = starts.get(command, 0) + 1
        return n

    async def prune(self, before: datetime, *, limit: int, dry_run: bool = False) -> Pruned:
        """Forget finished workflows (see the Protocol), oldest first."""
        s = self._s
        done = [
            row
            for row in s.workflows.values()
            if row.status.terminal and row.finished_at is not None and row.finished_at < before
        ]
        done.sort(key=lambda r: r.finished_at or before)
        if not dry_run:
            done = done[:limit]
        events = sum(len(s.history.get(r.workflow_id, ())) for r in done)
        if dry_run:
            return Pruned(len(done), events)
        gone = {r.workflow_id for r in done}
        for wid in gone:
            del s.workflows[wid]
            for body in s.history.pop(wid, ()):
                s.seen.discard(orjson.loads(body)["event_id"])
            s.facts.pop(wid, None)
            s.closed.discard(wid)
            for tid in s.timers_by_workflow.pop(wid, set()):
                s.timers.pop(tid, None)
        s.order = [w for w in s.order if w not in gone]
        for key in [k for k in s.transitions if k[0] in gone]:
            del s.transitions[key]
        return Pruned(len(gone), events)

    async def schedule_ticks(self) -> dict[str, datetime]:
        """The last tick of each schedule."""
        return dict(self._s.ticks)

    async def save_schedule_ticks(
        self, ticks: Mapping[str, datetime], *, if_absent: bool = False
    ) -> dict[str, datetime]:
        """Keep the later tick per schedule (only new ones with ``if_absent``)."""
        stored = self._s.ticks
        for name, tick in ticks.items():
            before = stored.get(name)
            if before is None or (not if_absent and tick > before):
                stored[name] = tick
        return {name: stored[name] for name in ticks}

    async def save_health(self, report: dict[str, JsonValue]) -> None:
        """Keep the monitor's health report."""
        self._s.health = _copy(report)

    async def ping(self) -> None:
        """The state is in this process: it always answers."""

    async def load_health(self) -> dict[str, JsonValue] | None:
        """The last health report saved."""
        health = self._s.health
        return None if health is None else dict(_copy(health))

    async def history(self, workflow_id: str) -> list[WorkflowEvent]:
        """The events applied for the workflow, in order."""
        return [decode_event(data) for data in self._s.history.get(workflow_id, ())]


def _copy(value: Any) -> Any:
    """A deep copy of a JSON value: what the store keeps is never the caller's object,
    as with a store that serializes (Postgres)."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return orjson.loads(orjson.dumps(value))


def _frozen(row: WorkflowRow, *, with_steps: bool = True) -> WorkflowStatus:
    return row.freeze(with_steps=with_steps, copy=_copy)
