"""The StateStore contract: what every state store does, checked the same way on each.

:class:`StoreContract` holds the checks of the ``StateStore`` Protocol
(``hms_bus/store/__init__.py``); a backend's test class subclasses it and provides the
``store_url`` fixture (see the class). Each test gets a namespace of its own, and the
Postgres fixture a schema of its own, so tests never see each other's rows.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import pytest
from conftest import eventually

from hms_bus._codec import encode
from hms_bus._envelope import utcnow
from hms_bus._events import (
    ErrorInfo,
    RetryScheduled,
    StepCompleted,
    StepScheduled,
    StepStarted,
    WorkflowCancelled,
    WorkflowCompleted,
    WorkflowFailed,
    WorkflowStarted,
)
from hms_bus._status import WorkflowState
from hms_bus.store import (
    Change,
    ClaimResult,
    ClaimState,
    ListQuery,
    StartResult,
    StateStore,
    Timer,
    TransitionClaim,
    create_store,
)
from hms_bus.transport import Outgoing

__all__ = ["Flow", "MakeStore", "StoreContract"]

MakeStore = Callable[..., StateStore]
"""``make_store(namespace=None, **options)`` -> an unentered store on this test's data
(in this test's namespace unless another is given)."""


class Flow:
    """The events of one workflow, each a millisecond after the one before."""

    def __init__(self, workflow_id: str, workflow: str = "wf", at: datetime | None = None):
        self.common: dict[str, Any] = {"workflow_id": workflow_id, "workflow": workflow}
        self.at = at or utcnow()

    def _ts(self) -> datetime:
        self.at += timedelta(milliseconds=1)
        return self.at

    def started(self, payload: Any = None, **fields: Any) -> WorkflowStarted:
        return WorkflowStarted(**self.common, payload=payload, ts=self._ts(), **fields)

    def scheduled(self, step: str, seq: int, attempt: int = 1) -> StepScheduled:
        return StepScheduled(**self.common, step=step, seq=seq, attempt=attempt, ts=self._ts())

    def running(self, step: str, seq: int, attempt: int = 1) -> StepStarted:
        ts = self._ts()
        return StepStarted(**self.common, step=step, seq=seq, attempt=attempt, ts=ts)

    def done(
        self, step: str, seq: int, attempt: int = 1, error: str | None = None
    ) -> StepCompleted:
        ts = self._ts()
        return StepCompleted(
            **self.common,
            step=step,
            seq=seq,
            attempt=attempt,
            outcome="failed" if error else "succeeded",
            error=ErrorInfo(message=error, type="RuntimeError") if error else None,
            started_at=ts - timedelta(microseconds=500),
            finished_at=ts,
            ts=ts,
        )

    def retry(self, step: str, seq: int, attempt: int, error: str) -> RetryScheduled:
        ts = self._ts()
        return RetryScheduled(
            **self.common,
            step=step,
            seq=seq,
            attempt=attempt,
            due_at=ts + timedelta(seconds=5),
            error=ErrorInfo(message=error, type="RuntimeError"),
            ts=ts,
        )

    def completed(self, result: Any = None) -> WorkflowCompleted:
        return WorkflowCompleted(**self.common, result=result, ts=self._ts())

    def failed(self, message: str, step: str | None = None) -> WorkflowFailed:
        error = ErrorInfo(message=message, type="Fail", retriable=False, step=step)
        return WorkflowFailed(**self.common, error=error, ts=self._ts())

    def cancelled(self, reason: str | None = None) -> WorkflowCancelled:
        return WorkflowCancelled(**self.common, reason=reason, ts=self._ts())


def _events(wid: str) -> list[Any]:
    t0 = utcnow()
    at = [t0 + timedelta(milliseconds=i) for i in range(8)]
    common = {"workflow_id": wid, "workflow": "wf"}
    return [
        WorkflowStarted(**common, payload={"n": 1}, ts=at[0]),
        StepScheduled(**common, step="a", seq=1, ts=at[1]),
        StepStarted(**common, step="a", seq=1, attempt=1, worker="w", ts=at[2]),
        StepCompleted(
            **common,
            step="a",
            seq=1,
            attempt=1,
            outcome="succeeded",
            started_at=at[2],
            finished_at=at[3],
            ts=at[3],
        ),
        WorkflowCompleted(**common, result={"done": True}, ts=at[4]),
    ]


def timer_claims(n: int) -> list[TransitionClaim]:
    """``n`` claims of one due timer each (workflows ``w0``…), for the timer checks."""
    due = utcnow() - timedelta(seconds=1)
    return [
        TransitionClaim(
            f"w{i}",
            "a:1:2",
            timers=(Timer(f"t{i}", f"w{i}", due, Outgoing("wf.a", b'{"n": %d}' % i, key=b"k")),),
        )
        for i in range(n)
    ]


def _timer(timer_id: str, workflow_id: str, due_at: datetime) -> Timer:
    message = Outgoing(
        "wf.a", b'{"t": "%s"}' % timer_id.encode(), key=workflow_id.encode(), headers=(("h", b"v"),)
    )
    return Timer(timer_id, workflow_id, due_at, message)


class StoreContract:
    """The checks every ``StateStore`` backend passes (not collected itself).

    A subclass provides the ``store_url`` fixture: the URL of this test's store, and
    ``SHARED``: whether two stores opened on that URL see one state (False for the
    private ``memory://``; tests that need two skip, visibly).
    """

    SHARED: ClassVar[bool] = True

    @pytest.fixture
    def store_url(self) -> str:
        raise NotImplementedError("a StoreContract subclass provides store_url")

    @pytest.fixture
    def make_store(self, store_url: str) -> MakeStore:
        default = f"n{uuid.uuid4().hex[:12]}"

        def make(namespace: str | None = None, **options: Any) -> StateStore:
            return create_store(store_url, namespace=namespace or default, **options)

        return make

    def needs_shared_store(self) -> None:
        if not self.SHARED:
            pytest.skip("two stores of this URL do not share their state")

    # -- the store --------------------------------------------------------------------

    async def test_implements_the_protocol(self, make_store: MakeStore, store_url: str) -> None:
        async with make_store() as store:
            assert isinstance(store, StateStore)
            assert store.url == store_url
            await store.ping()  # answers while open

    async def test_a_store_sees_only_its_namespace(self, make_store: MakeStore) -> None:
        self.needs_shared_store()
        now = utcnow()
        flow = Flow("same")
        async with make_store("blue") as blue, make_store("green") as green:
            assert (await blue.register_start("same", "wf", {"by": "blue"}, "eb", now)).created
            assert (await green.register_start("same", "wf", {"by": "green"}, "eg", now)).created
            await blue.apply_events([flow.started(event_id="eb"), flow.completed({"r": 1})])
            assert (await green.get_workflow("same")).status == "running"  # type: ignore[union-attr]
            assert await green.history("same") == []
            assert [w.payload for w in (await green.list_workflows(ListQuery())).items] == [
                {"by": "green"}
            ]
            claim = TransitionClaim("same", "start", timers=(_timer("t", "same", now),))
            assert [r.state for r in await blue.claim_transitions([claim])] == [ClaimState.NEW]
            assert [r.state for r in await green.claim_transitions([claim])] == [ClaimState.NEW]
            await blue.delete_timers(["t"])
            assert [
                t.timer_id
                for t in await green.claim_due_timers(now=utcnow(), limit=10, lease=30, owner="g")
            ] == ["t"]
            await blue.save_health({"by": "blue"})
            assert await green.load_health() is None

    # -- starts -----------------------------------------------------------------------

    async def test_register_start_records_a_workflow_once(self, make_store: MakeStore) -> None:
        now = utcnow()
        async with make_store() as store:
            first = await store.register_start("w1", "one", {"v": 1}, "e1", now)
            again = await store.register_start("w1", "one", {"v": 2}, "e2", now)
            other = await store.register_start("w1", "two", {"v": 3}, "e3", now)
            st = await store.get_workflow("w1")
            await store.apply_events([Flow("w1", "one").started({"v": 1}, event_id="e1")])
            confirmed = await store.register_start("w1", "one", {"v": 4}, "e4", now)
        assert first == StartResult(True, "one", "e1", False, {"v": 1})
        assert again == StartResult(False, "one", "e1", False, {"v": 1})
        # Another workflow's id: the workflow on record comes back, for the caller to refuse.
        assert other == StartResult(False, "one", "e1", False, {"v": 1})
        assert confirmed == StartResult(False, "one", "e1", True, {"v": 1})
        assert st is not None
        assert (st.workflow_id, st.workflow, st.status, st.payload) == (
            "w1",
            "one",
            "running",
            {"v": 1},
        )
        assert st.created_at == now
        assert st.steps == []

    async def test_a_start_payload_is_kept_as_it_was_registered(
        self, make_store: MakeStore
    ) -> None:
        payload = {"items": [1]}
        async with make_store() as store:
            await store.register_start("w1", "wf", payload, "e1", utcnow())
            payload["items"].append(2)  # the caller goes on using its dict
            first = await store.get_workflow("w1")
            assert first is not None
            first.payload["items"].append(3)  # and the status it was given
            again = await store.register_start("w1", "wf", {}, "e2", utcnow())
            st = await store.get_workflow("w1")
        assert again.payload == {"items": [1]}
        assert st is not None
        assert st.payload == {"items": [1]}

    async def test_concurrent_starts_of_one_id_register_it_once(
        self, make_store: MakeStore
    ) -> None:
        now = utcnow()
        async with make_store() as store:
            results = await asyncio.gather(
                *(store.register_start("same", "wf", {"v": i}, f"e{i}", now) for i in range(5)),
                *(store.register_start(f"o{i}", "wf", {"v": i}, f"o{i}", now) for i in range(5)),
            )
        same = results[:5]
        assert sum(r.created for r in same) == 1
        winner = next(i for i, r in enumerate(same) if r.created)
        assert {r.start_event_id for r in same} == {f"e{winner}"}
        assert all(r.payload == {"v": winner} for r in same)
        assert all(r.created for r in results[5:])

    # -- the projection ---------------------------------------------------------------

    async def test_duplicate_and_out_of_order_events_never_move_status_back(
        self, make_store: MakeStore
    ) -> None:
        async with make_store() as store:
            started, scheduled, running, done, completed = _events("w1")
            # Out of order across batches, duplicates within and across batches.
            assert await store.apply_events([started, done, done]) == 2
            assert await store.apply_events([running, scheduled, started]) == 2
            assert await store.apply_events([completed, running, completed]) == 1
            assert await store.apply_events([done, started]) == 0
            st = await store.get_workflow("w1")
            history = await store.history("w1")
        assert st is not None
        assert st.status == "completed" and st.result == {"done": True}
        assert [(s.step, s.status, s.attempts) for s in st.steps] == [("a", "succeeded", 1)]
        assert st.steps[0].started_at == running.ts and st.steps[0].finished_at == done.finished_at
        # Each event once, in the order first applied.
        assert [e.type for e in history] == [
            "workflowStarted",
            "completeStep",
            "stepStarted",
            "stepScheduled",
            "workflowCompleted",
        ]

    async def test_a_terminal_status_is_final(self, make_store: MakeStore) -> None:
        ok, bad, off = Flow("ok"), Flow("bad"), Flow("off")
        async with make_store() as store:
            finished = [ok.completed({"r": 1}), bad.failed("no", step="a"), off.cancelled("gone")]
            assert await store.apply_events([ok.started(), bad.started(), off.started()]) == 3
            assert await store.apply_events(finished) == 3
            assert (
                await store.apply_events(
                    [ok.failed("late"), ok.cancelled(), bad.completed({"r": 2}), off.failed("x")]
                )
                == 4
            )
            got = await store.get_workflows(["ok", "bad", "off"])
        assert (got["ok"].status, got["ok"].result, got["ok"].error) == (
            "completed",
            {"r": 1},
            None,
        )
        assert (got["bad"].status, got["bad"].result) == ("failed", None)
        assert got["bad"].error == "step 'a': no"
        assert (got["off"].status, got["off"].error) == ("cancelled", "gone")
        assert [got[w].finished_at for w in ("ok", "bad", "off")] == [e.ts for e in finished]

    async def test_a_retry_supersedes_the_failed_attempt_and_a_late_event_does_not(
        self, make_store: MakeStore
    ) -> None:
        flow = Flow("w1")
        started, scheduled = flow.started(), flow.scheduled("a", 1)
        running1, failed1 = flow.running("a", 1), flow.done("a", 1, error="flaky")
        retry, running2 = flow.retry("a", 1, 2, "flaky"), flow.running("a", 1, 2)
        done2 = flow.done("a", 1, 2)
        async with make_store() as store:
            await store.apply_events([started, scheduled, running1, failed1])
            failed = (await store.get_workflow("w1")).step("a")  # type: ignore[union-attr]
            await store.apply_events([retry])
            pending = (await store.get_workflow("w1")).step("a")  # type: ignore[union-attr]
            await store.apply_events([running1, scheduled])  # late: attempt 1 again
            still = (await store.get_workflow("w1")).step("a")  # type: ignore[union-attr]
            await store.apply_events([done2, running2])  # the start arrives after the end
            final = (await store.get_workflow("w1")).step("a")  # type: ignore[union-attr]
        assert (failed.status, failed.attempts, failed.error) == ("failed", 1, "flaky")
        assert (pending.status, pending.attempts, pending.due_at) == ("pending", 2, retry.due_at)
        assert still == pending
        assert (final.status, final.attempts, final.error) == ("succeeded", 2, None)
        assert final.finished_at == done2.finished_at

    async def test_bodies_are_kept_as_given_and_events_encoded_without_them(
        self, make_store: MakeStore
    ) -> None:
        flow = Flow("w1")
        started, scheduled = flow.started({"n": 1}), flow.scheduled("a", 1)
        delivered = encode(started.model_copy(update={"payload": {"n": "as delivered"}}))
        async with make_store() as store:
            await store.apply_events([started], bodies=[delivered])
            await store.apply_events([scheduled])
            history = await store.history("w1")
            st = await store.get_workflow("w1")
            assert await store.history("unknown") == []
        assert [e.event_id for e in history] == [started.event_id, scheduled.event_id]
        assert history[0].payload == {"n": "as delivered"}  # the body, not the model
        assert history[1] == scheduled
        assert st is not None and st.payload == {"n": 1}  # the fold reads the models

    async def test_watchers_are_told_status_changes_and_succeeded_steps(
        self, make_store: MakeStore
    ) -> None:
        mine: list[Sequence[Change] | None] = []
        theirs: list[Sequence[Change] | None] = []
        flow = Flow("w1")

        def told(calls: list[Sequence[Change] | None], wid: str) -> set[Change]:
            return {c for batch in calls for c in batch or () if c[0] == wid}

        async with make_store() as store, make_store() as other:
            await store.watch(mine.append)
            watchers = [mine]
            if self.SHARED:  # another process's projection is seen too
                await other.watch(theirs.append)
                watchers.append(theirs)
            await store.apply_events([flow.started(), flow.scheduled("a", 1)])
            await store.apply_events([flow.running("a", 1), flow.done("a", 1)])
            await store.apply_events([flow.completed()])
            for calls in watchers:
                await eventually(
                    lambda calls=calls: told(calls, "w1") == {("w1", None), ("w1", "a")},
                    what="the watcher told of w1's changes",
                )
            # A batch that changes nothing is told to nobody. (Postgres tells its own
            # process's watchers at once, and once more when the NOTIFY comes back.)
            await asyncio.sleep(0.3)
            for calls in watchers:
                calls.clear()
            await store.apply_events([flow.scheduled("a", 1), flow.running("a", 1)])
            await store.apply_events([flow.done("a", 1)])  # a fresh event id, no change
            await store.apply_events([Flow("mark").started()])
            for calls in watchers:
                await eventually(lambda calls=calls: told(calls, "mark"), what="the mark told")
                assert told(calls, "w1") == set()
            # A batch that changes rows but no status and no step's success is told as
            # the one change "*" (what the console watches).
            await asyncio.sleep(0.3)
            for calls in watchers:
                calls.clear()
            other_flow = Flow("w2")
            await store.apply_events([other_flow.started()])
            await asyncio.sleep(0.3)
            for calls in watchers:
                calls.clear()
            await store.apply_events([other_flow.scheduled("a", 1), other_flow.running("a", 1)])
            for calls in watchers:
                await eventually(
                    lambda calls=calls: told(calls, "*") == {("*", None)}, what="the '*' change"
                )
                assert told(calls, "w2") == set()

    # -- queries ----------------------------------------------------------------------

    async def test_get_workflows_returns_those_that_exist_with_their_steps(
        self, make_store: MakeStore
    ) -> None:
        a, b = Flow("a"), Flow("b")
        async with make_store() as store:
            await store.apply_events([a.started(), a.scheduled("x", 1), b.started()])
            assert await store.get_workflow("nope") is None
            got = await store.get_workflows(["b", "nope", "a", "b"])
            assert await store.get_workflows([]) == {}
        assert set(got) == {"a", "b"}
        assert [(s.step, s.seq, s.status) for s in got["a"].steps] == [("x", 1, "pending")]
        assert got["b"].steps == []

    async def test_list_filters_orders_newest_first_and_pages(self, make_store: MakeStore) -> None:
        base = datetime(2030, 1, 1, tzinfo=UTC)
        ids = [(("bad" if i % 3 == 0 else "good"), f"w-{i:02d}") for i in range(7)]
        async with make_store() as store:
            for i, (name, wid) in enumerate(ids):
                await store.register_start(
                    wid, name, {"i": i}, f"e{i}", base + timedelta(seconds=i)
                )
            # Two at the same instant: the larger id counts as the newer.
            await store.register_start("w-07b", "good", {}, "e7b", base + timedelta(seconds=7))
            await store.register_start("w-07a", "good", {}, "e7a", base + timedelta(seconds=7))
            ids += [("good", "w-07a"), ("good", "w-07b")]
            await store.apply_events(
                [Flow(w, n).failed("no") for n, w in ids if n == "bad"]
                + [Flow("w-01", "good").completed()]
            )
            everything = await store.list_workflows(ListQuery())
            goods = await store.list_workflows(ListQuery(workflow="good"))
            failed = await store.list_workflows(ListQuery(status=WorkflowState.FAILED))
            done = await store.list_workflows(
                ListQuery(workflow="good", status=WorkflowState.COMPLETED)
            )
            none = await store.list_workflows(
                ListQuery(workflow="bad", status=WorkflowState.RUNNING)
            )
            window = await store.list_workflows(
                ListQuery(since=base + timedelta(seconds=2), until=base + timedelta(seconds=5))
            )
            pages, cursor = [], None
            while True:
                page = await store.list_workflows(ListQuery(limit=4, cursor=cursor))
                pages.append([w.workflow_id for w in page.items])
                cursor = page.next_cursor
                if cursor is None:
                    break
            good_pages, cursor = [], None
            while True:
                page = await store.list_workflows(
                    ListQuery(workflow="good", limit=3, cursor=cursor)
                )
                good_pages.append([w.workflow_id for w in page.items])
                cursor = page.next_cursor
                if cursor is None:
                    break
        newest_first = ["w-07b", "w-07a", *(f"w-{i:02d}" for i in reversed(range(7)))]
        assert [w.workflow_id for w in everything.items] == newest_first
        assert everything.next_cursor is None
        assert all(w.steps == [] for w in everything.items)
        kind = {wid: name for name, wid in ids}
        assert [w.workflow_id for w in goods.items] == [
            w for w in newest_first if kind[w] == "good"
        ]
        assert [w.workflow_id for w in failed.items] == ["w-06", "w-03", "w-00"]
        assert all(w.status == "failed" for w in failed.items)
        assert [w.workflow_id for w in done.items] == ["w-01"]
        assert none.items == []
        assert [w.workflow_id for w in window.items] == ["w-04", "w-03", "w-02"]
        assert [len(p) for p in pages] == [4, 4, 1]
        assert [wid for p in pages for wid in p] == newest_first
        assert [wid for p in good_pages for wid in p] == [w.workflow_id for w in goods.items]
        assert [len(p) for p in good_pages] == [3, 3]

    async def test_workflows_are_counted_by_status(self, make_store: MakeStore) -> None:
        async with make_store() as store:
            assert await store.count_workflows() == {}
            for wid, wf in (("w1", "a"), ("w2", "a"), ("w3", "b")):
                await store.register_start(wid, wf, {}, f"e-{wid}", utcnow())
            await store.apply_events(
                [WorkflowCompleted(workflow_id="w2", workflow="a", result=None)]
            )
            assert await store.count_workflows() == {"running": 2, "completed": 1}
            assert await store.count_workflows("a") == {"running": 1, "completed": 1}
            assert await store.count_workflows("nope") == {}

    # -- the coordinator's ledger -----------------------------------------------------

    async def test_claims_are_recorded_once_and_answered_from_the_record(
        self, make_store: MakeStore
    ) -> None:
        first = (Outgoing("wf.a", b"1", key=b"w1", headers=(("traceparent", b"00-x"),)),)
        second = (Outgoing("wf.a", b"2", key=b"w1"),)
        async with make_store() as store:
            assert await store.claim_transitions([]) == []
            new = await store.claim_transitions([TransitionClaim("w1", "start", messages=first)])
            # Decided again before it was published: the recorded messages, not new ones.
            again = await store.claim_transitions([TransitionClaim("w1", "start", messages=second)])
            await store.mark_published([("w1", "start"), ("w1", "unknown"), ("nobody", "x")])
            await store.mark_published([])
            done = await store.claim_transitions([TransitionClaim("w1", "start", messages=second)])
            other = await store.claim_transitions([TransitionClaim("w1", "a:1:1")])
        assert new == [ClaimResult(ClaimState.NEW, first)]
        assert again == [ClaimResult(ClaimState.UNPUBLISHED, first)]
        assert done == [ClaimResult(ClaimState.DONE)]
        assert other == [ClaimResult(ClaimState.NEW)]

    async def test_a_duplicate_within_a_batch_is_answered_by_the_first(
        self, make_store: MakeStore
    ) -> None:
        past = utcnow() - timedelta(seconds=1)
        one = (Outgoing("wf.b", b"one", key=b"w1"),)
        two = (Outgoing("wf.b", b"two", key=b"w1"),)
        async with make_store() as store:
            results = await store.claim_transitions(
                [
                    TransitionClaim(
                        "w1", "a:1:1", messages=one, timers=(_timer("t1", "w1", past),)
                    ),
                    TransitionClaim(
                        "w1", "a:1:1", messages=two, timers=(_timer("t2", "w1", past),)
                    ),
                ]
            )
            timers = await store.claim_due_timers(now=utcnow(), limit=10, lease=30, owner="s")
        assert results == [
            ClaimResult(ClaimState.NEW, one),
            ClaimResult(ClaimState.UNPUBLISHED, one),
        ]
        assert [t.timer_id for t in timers] == ["t1"]

    async def test_a_closing_claim_refuses_every_later_one_and_drops_the_workflows_timers(
        self, make_store: MakeStore
    ) -> None:
        past = utcnow() - timedelta(seconds=1)
        bye = (Outgoing("hms.events", b"cancelled", key=b"w1"),)
        async with make_store() as store:
            await store.claim_transitions(
                [
                    TransitionClaim("w1", "a:1:1", timers=(_timer("w1-a", "w1", past),)),
                    TransitionClaim("w2", "a:1:1", timers=(_timer("w2-a", "w2", past),)),
                ]
            )
            batch = await store.claim_transitions(
                [
                    # Its timer is dropped by the close later in the same batch.
                    TransitionClaim("w1", "b:2:1", timers=(_timer("w1-b", "w1", past),)),
                    TransitionClaim("w1", "cancel", messages=bye, closes=True),
                    TransitionClaim("w1", "c:3:1", timers=(_timer("w1-c", "w1", past),)),
                ]
            )
            later = await store.claim_transitions(
                [
                    TransitionClaim("w1", "d:4:1", timers=(_timer("w1-d", "w1", past),)),
                    TransitionClaim("w1", "cancel", closes=True),  # recorded: not CLOSED
                    TransitionClaim("w2", "b:2:1"),
                ]
            )
            timers = await store.claim_due_timers(now=utcnow(), limit=10, lease=30, owner="s")
        assert [r.state for r in batch] == [ClaimState.NEW, ClaimState.NEW, ClaimState.CLOSED]
        assert later == [
            ClaimResult(ClaimState.CLOSED),
            ClaimResult(ClaimState.UNPUBLISHED, bye),
            ClaimResult(ClaimState.NEW),
        ]
        assert [t.timer_id for t in timers] == ["w2-a"]

    async def test_a_new_claim_writes_its_facts_and_every_claim_reads_them_after(
        self, make_store: MakeStore
    ) -> None:
        async with make_store() as store:
            first = await store.claim_transitions(
                [
                    TransitionClaim(
                        "w1", "a:2:1", facts=(("join:2:0", {"data": [1, "x"]}),), reads=("join:2:",)
                    ),
                    # Later in the batch: sees the fact written before it.
                    TransitionClaim(
                        "w1", "b:3:1", facts=(("join:2:1", {"data": None}),), reads=("join:2:",)
                    ),
                    TransitionClaim("w2", "a:2:1", reads=("join:2:",)),  # another workflow's
                ]
            )
            # A redelivered claim writes nothing new but still reads.
            again = await store.claim_transitions(
                [TransitionClaim("w1", "a:2:1", facts=(("join:2:0", "changed"),), reads=("join:",))]
            )
            # None removes a fact; a prefix reads only its keys.
            gone = await store.claim_transitions(
                [
                    TransitionClaim(
                        "w1",
                        "wake:4",
                        facts=(("join:2:1", None), ("wait:report", {"seq": 4})),
                        reads=("join:", "wait:rep"),
                    )
                ]
            )
        assert first[0].facts == {"join:2:0": {"data": [1, "x"]}}
        assert first[1].facts == {"join:2:0": {"data": [1, "x"]}, "join:2:1": {"data": None}}
        assert first[2].facts == {}
        assert again[0].state is ClaimState.UNPUBLISHED
        assert again[0].facts == {"join:2:0": {"data": [1, "x"]}, "join:2:1": {"data": None}}
        assert gone[0].facts == {"join:2:0": {"data": [1, "x"]}, "wait:report": {"seq": 4}}

    async def test_a_closed_workflow_writes_no_facts_but_reads_them(
        self, make_store: MakeStore
    ) -> None:
        async with make_store() as store:
            await store.claim_transitions(
                [
                    TransitionClaim("w1", "start", facts=(("parent", {"id": "p"}),)),
                    TransitionClaim("w1", "a:1:1", closes=True, reads=("parent", "child:")),
                ]
            )
            late = await store.claim_transitions(
                [TransitionClaim("w1", "b:2:1", facts=(("child:2", "c"),), reads=("child:",))]
            )
            reread = await store.claim_transitions(
                [TransitionClaim("w1", "a:1:1", closes=True, reads=("parent", "child:"))]
            )
        assert late == [ClaimResult(ClaimState.CLOSED)]
        assert reread[0].facts == {"parent": {"id": "p"}}

    # -- schedules --------------------------------------------------------------------

    async def test_schedule_ticks_only_move_forward(self, make_store: MakeStore) -> None:
        t0 = datetime(2026, 12, 7, 2, 0, tzinfo=UTC)
        async with make_store() as store:
            assert await store.schedule_ticks() == {}
            assert await store.save_schedule_ticks({}) == {}
            first = await store.save_schedule_ticks({"a": t0}, if_absent=True)
            kept = await store.save_schedule_ticks({"a": t0 + timedelta(days=1)}, if_absent=True)
            later = await store.save_schedule_ticks({"a": t0 + timedelta(days=2), "b": t0})
            back = await store.save_schedule_ticks({"a": t0})
            stored = await store.schedule_ticks()
        assert first == kept == {"a": t0}
        assert later == {"a": t0 + timedelta(days=2), "b": t0}
        assert back == {"a": t0 + timedelta(days=2)}
        assert stored == {"a": t0 + timedelta(days=2), "b": t0}

    # -- timers -----------------------------------------------------------------------

    async def test_without_now_timers_are_due_by_the_stores_own_clock(
        self, make_store: MakeStore
    ) -> None:
        async with make_store() as store:
            await store.claim_transitions(
                [
                    TransitionClaim(
                        "w1",
                        "a:1:1",
                        timers=(
                            _timer("past", "w1", utcnow() - timedelta(seconds=1)),
                            _timer("soon", "w1", utcnow() + timedelta(seconds=0.5)),
                            _timer("later", "w1", utcnow() + timedelta(hours=1)),
                        ),
                    )
                ]
            )
            first = await store.claim_due_timers(limit=10, lease=30, owner="s")
            # The wait ends when "soon" is due by the store's clock, not after an hour.
            await asyncio.wait_for(store.wait_for_timers(3600), timeout=5)
            second = await store.claim_due_timers(limit=10, lease=30, owner="s")
        assert [t.timer_id for t in first] == ["past"]
        assert [t.timer_id for t in second] == ["soon"]

    async def test_leased_timers_come_back_when_the_lease_runs_out(
        self, make_store: MakeStore
    ) -> None:
        async with make_store() as store:
            await store.claim_transitions(timer_claims(3))
            first = await store.claim_due_timers(now=utcnow(), limit=10, lease=0.2, owner="dead")
            assert len(first) == 3
            assert await store.claim_due_timers(now=utcnow(), limit=10, lease=0.2, owner="b") == []
            await asyncio.sleep(0.3)  # the first scheduler died holding them
            again = await store.claim_due_timers(now=utcnow(), limit=10, lease=30, owner="b")
        assert sorted(t.timer_id for t in again) == ["t0", "t1", "t2"]
        assert again[0].message == Outgoing("wf.a", b'{"n": 0}', key=b"k")

    async def test_only_due_timers_are_claimed_up_to_the_limit_and_deleted_ones_are_gone(
        self, make_store: MakeStore
    ) -> None:
        now = utcnow()
        due = [_timer(f"t{i}", f"w{i}", now - timedelta(seconds=10 - i)) for i in range(5)]
        future = _timer("later", "w9", now + timedelta(seconds=60))
        async with make_store() as store:
            await store.claim_transitions(
                [TransitionClaim(t.workflow_id, "a:1:2", timers=(t,)) for t in [*due, future]]
                # The same timer id again (a redelivered decision): stored once.
                + [TransitionClaim("w0", "b:2:1", timers=(due[0],))]
            )
            first = await store.claim_due_timers(now=now, limit=2, lease=30, owner="s")
            rest = await store.claim_due_timers(now=now, limit=10, lease=30, owner="s")
            await store.delete_timers([t.timer_id for t in first + rest])
            await store.delete_timers([])
            after = await store.claim_due_timers(
                now=now + timedelta(seconds=120), limit=10, lease=30, owner="s"
            )
        assert [t.timer_id for t in first] == ["t0", "t1"]  # the earliest due first
        assert [t.timer_id for t in rest] == ["t2", "t3", "t4"]
        assert first[0] == due[0]
        assert [t.timer_id for t in after] == ["later"]
        assert after[0].message == future.message
        assert after[0].due_at == future.due_at

    async def test_wait_for_timers_wakes_when_a_timer_is_added_or_falls_due(
        self, make_store: MakeStore
    ) -> None:
        async with make_store() as store, make_store() as other:
            started = time.monotonic()
            await store.wait_for_timers(0.1)  # none: sleeps the whole timeout
            assert 0.09 <= time.monotonic() - started < 1.0
            adders = [store] + ([other] if self.SHARED else [])
            for i, adder in enumerate(adders):
                far = _timer(f"far{i}", f"w{i}", utcnow() + timedelta(seconds=60))
                for _ in range(3):
                    waiting = asyncio.ensure_future(store.wait_for_timers(10))
                    await asyncio.sleep(0.3)  # asleep, until the next timer (far) at the latest
                    if not waiting.done():
                        break
                    # Waking with nothing new is allowed (on Postgres, the NOTIFY of the
                    # timer added last arrives after the store's own wake-up).
                assert not waiting.done()
                started = time.monotonic()
                await adder.claim_transitions([TransitionClaim(f"w{i}", "a:1:1", timers=(far,))])
                await asyncio.wait_for(waiting, 5)
                assert time.monotonic() - started < 2.0
            soon = _timer("soon", "ws", utcnow() + timedelta(seconds=0.3))
            await store.claim_transitions([TransitionClaim("ws", "a:1:1", timers=(soon,))])
            started = time.monotonic()
            for _ in range(3):  # until the earliest timer is due
                await store.wait_for_timers(10)
                if time.monotonic() - started >= 0.1:
                    break
                # Woken by the NOTIFY of "soon" itself, as in the loop above: wait again.
            assert 0.1 <= time.monotonic() - started < 2.0

    # -- health -----------------------------------------------------------------------

    async def test_the_health_report_is_replaced_and_read_back(self, make_store: MakeStore) -> None:
        report = {"healthy": True, "processes": [{"id": "p1", "lag": {"a": 1}}], "n": 1.5}
        async with make_store() as store:
            assert await store.load_health() is None
            await store.save_health(report)
            assert await store.load_health() == report
            await store.save_health({"healthy": False})
            assert await store.load_health() == {"healthy": False}

    async def test_a_health_report_is_kept_as_it_was_saved(self, make_store: MakeStore) -> None:
        report: dict[str, Any] = {"healthy": True, "problems": []}
        async with make_store() as store:
            await store.save_health(report)
            report["problems"].append("the caller goes on using its dict")
            loaded = await store.load_health()
            assert loaded is not None
            loaded["healthy"] = False  # and the report it was given
            assert await store.load_health() == {"healthy": True, "problems": []}

    # -- worker starts (crash loops) --------------------------------------------------

    async def test_starts_of_commands_taken_over_are_counted_and_forgotten_once_committed(
        self, make_store: MakeStore
    ) -> None:
        a0, a1, b0 = ("t", 0, 10), ("t", 0, 11), ("t", 1, 5)
        async with make_store() as store:
            # Taken over for the first time: no earlier starts, each now counted once.
            assert await store.take_over_starts([a0, a1, b0], {("t", 0): 10, ("t", 1): 5}) == [
                0,
                0,
                0,
            ]
            # Taken over again before they were committed: started once each; the
            # uncounted one is counted once now.
            assert await store.take_over_starts([a0, ("t", 0, 12)], {}) == [1, 0]
            assert await store.count_start(a0) == 2
            assert await store.count_start(a0) == 3
            assert await store.take_over_starts([a0, a1, b0], {}) == [3, 1, 1]
            # Partition 0 taken over at offset 12: what sat below it is forgotten, the
            # other partition's counts are kept.
            assert await store.take_over_starts([("t", 0, 12), b0], {("t", 0): 12}) == [1, 1]
            assert await store.take_over_starts([a0, a1], {}) == [0, 0]
            # A command never taken over has no earlier starts either.
            assert await store.count_start(("u", 3, 7)) == 1

    async def test_worker_starts_are_per_namespace(self, make_store: MakeStore) -> None:
        at = ("t", 0, 1)
        async with make_store() as one, make_store(namespace=f"o{uuid.uuid4().hex[:8]}") as other:
            await one.count_start(at)
            await one.count_start(at)
            assert await other.take_over_starts([at], {}) == [0]
            assert await one.take_over_starts([at], {}) == [2]
