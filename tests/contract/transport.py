"""The Transport contract: what every message bus does, checked the same way on each.

:class:`TransportContract` holds the checks of the ``Transport`` and ``Consumer``
Protocols (``hms_bus/transport/__init__.py``); a backend's test class subclasses it and
provides the ``bus_url`` fixture, its options and its pace (see the class). Each test
makes its own topics and groups (``names``), so tests sharing one broker never see
each other. Assertions hold for every partition assignment a backend may choose: the
checks say which partitions moved, not which ones they had to be.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import pytest

from hms_bus._errors import TransportError
from hms_bus.transport import (
    Consumer,
    Outgoing,
    Record,
    TopicPartition,
    Transport,
    create_transport,
)

__all__ = ["MakeBus", "Names", "TransportContract", "take", "take_all", "until"]

MakeBus = Callable[..., Transport]
"""``make_bus(**options)`` -> an unentered transport on this test's bus."""

Names = Callable[[str], str]
"""``names(label)`` -> a topic or group name of this test's own."""


async def take(consumer: Consumer, n: int, *, within: float) -> list[Record]:
    """Fetch until ``n`` records arrived, or fewer once ``within`` seconds passed."""
    got: list[Record] = []
    deadline = time.monotonic() + within
    while len(got) < n and (left := deadline - time.monotonic()) > 0:
        got.extend(await consumer.fetch(max_records=n - len(got), timeout=min(left, 0.5)))
    return got


async def take_all(
    members: Sequence[Consumer], n: int, *, within: float, idle: float
) -> list[list[Record]]:
    """What each member fetches, all fetching at once, until ``n`` records arrived in
    all (or ``within`` seconds passed) and then nothing more for ``idle`` seconds."""
    got: list[list[Record]] = [[] for _ in members]
    deadline = time.monotonic() + within
    while sum(map(len, got)) < n and time.monotonic() < deadline:
        batches = await asyncio.gather(*(m.fetch(timeout=0.2) for m in members))
        for mine, batch in zip(got, batches, strict=True):
            mine.extend(batch)
    for mine, batch in zip(
        got, await asyncio.gather(*(m.fetch(timeout=idle) for m in members)), strict=True
    ):
        mine.extend(batch)
    return got


async def until(
    done: Callable[[], bool], members: Sequence[Consumer], *, within: float, what: str
) -> None:
    """Keep ``members`` fetching nothing (so a rebalance proceeds) until ``done()``."""
    deadline = time.monotonic() + within
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {within}s")
        await asyncio.gather(*(m.fetch(max_records=0, timeout=0.02) for m in members))
        await asyncio.sleep(0.005)


def _values(records: Sequence[Record]) -> list[bytes]:
    return [r.value for r in records]


class TransportContract:
    """The checks every ``Transport`` backend passes (not collected itself).

    A subclass provides:

    - the ``bus_url`` fixture: the URL of this test's bus;
    - ``OPTIONS``: transport options every test's transports get (``partitions`` and
      ``max_message_bytes`` are given per test, as every backend takes them);
    - ``SHARED``: whether two transports made from ``bus_url`` reach one bus (False
      for the private ``memory://``; tests that need two skip, visibly);
    - ``IDLE``: seconds after which a fetch that brought nothing means nothing is
      coming; ``WITHIN``: seconds a rebalance or a first delivery may take.
    """

    OPTIONS: ClassVar[dict[str, Any]] = {}
    SHARED: ClassVar[bool] = True
    IDLE: ClassVar[float] = 0.05
    WITHIN: ClassVar[float] = 5.0

    @pytest.fixture
    def bus_url(self) -> str:
        raise NotImplementedError("a TransportContract subclass provides bus_url")

    @pytest.fixture
    def make_bus(self, bus_url: str) -> MakeBus:
        def make(**options: Any) -> Transport:
            return create_transport(bus_url, **{**self.OPTIONS, **options})

        return make

    @pytest.fixture
    def names(self) -> Names:
        prefix = f"c{uuid.uuid4().hex[:12]}"
        return lambda label: f"{prefix}.{label}"

    def needs_shared_bus(self) -> None:
        if not self.SHARED:
            pytest.skip("two transports of this URL do not share a bus")

    # -- the transport ----------------------------------------------------------------

    async def test_implements_the_protocols(self, make_bus: MakeBus, bus_url: str) -> None:
        async with make_bus() as bus:
            assert isinstance(bus, Transport)
            assert isinstance(bus.consumer("g", ["t"]), Consumer)
            assert bus.url == bus_url

    async def test_a_topic_made_after_start_and_an_older_one_take_one_publish(
        self, make_bus: MakeBus, names: Names
    ) -> None:
        # A process that starts while topics exist, then makes a topic of its own (a new
        # step in a new release) and publishes to an old and the new one in one call.
        self.needs_shared_bus()
        old, new = names("old"), names("new")
        async with make_bus(partitions=2) as first:
            await first.ensure_topics([old])
            await first.publish([Outgoing(old, b"0", key=b"k")])
        async with make_bus(partitions=2) as bus:
            await bus.publish([Outgoing(old, b"1", key=b"k")])
            await bus.ensure_topics([new])
            async with asyncio.timeout(self.WITHIN):
                await bus.publish([Outgoing(old, b"2", key=b"k"), Outgoing(new, b"3", key=b"k")])
                await bus.publish([Outgoing(old, b"4", key=b"k")])
            async with bus.consumer(names("g"), [old, new]) as consumer:
                got = await take(consumer, 5, within=self.WITHIN)
        assert sorted(_values(got)) == [b"0", b"1", b"2", b"3", b"4"]

    async def test_group_lag_counts_what_a_group_has_not_committed(
        self, make_bus: MakeBus, names: Names
    ) -> None:
        topic, group = names("t"), names("g")
        async with make_bus(partitions=2) as bus:
            await bus.ensure_topics([topic])
            # One record per call: Tansu answers a partition's latest offset with its
            # last batch's base offset + 1, so a batch of several undercounts there (a
            # broker defect; Apache Kafka counts every record).
            for i in range(5):
                await bus.publish([Outgoing(topic, f"{i}".encode(), key=b"k")])
            before = await bus.group_lag(group, [topic, names("none")])
            async with bus.consumer(group, [topic]) as consumer:
                got = await take(consumer, 5, within=self.WITHIN)
                part = got[0].partition
                await consumer.commit({(topic, part): got[2].offset + 1})
            after = await bus.group_lag(group, [topic])
        assert sorted(before) == [(topic, 0), (topic, 1)]  # the missing topic: left out
        assert sum(before.values()) == 5 and before[(topic, part)] == 5
        assert after[(topic, part)] == 2

    async def test_ping_answers_while_open_and_is_refused_once_closed(
        self, make_bus: MakeBus
    ) -> None:
        bus = make_bus()
        async with bus:
            await bus.ping()
        with pytest.raises(TransportError, match="closed"):
            await bus.ping()

    async def test_publish_refused_before_the_transport_is_entered_and_after_it_closed(
        self, make_bus: MakeBus, names: Names
    ) -> None:
        topic = names("t")
        bus = make_bus()
        with pytest.raises(TransportError, match="not open") as before:
            await bus.publish([Outgoing(topic, b"v")])
        assert before.value.retriable is False
        async with bus:
            await bus.ensure_topics([topic])
            await bus.publish([Outgoing(topic, b"v")])
        with pytest.raises(TransportError, match="closed") as after:
            await bus.publish([Outgoing(topic, b"v")])
        assert after.value.retriable is False
        with pytest.raises(TransportError, match="closed"):
            await bus.send([Outgoing(topic, b"v")])

    async def test_a_consumer_cannot_join_through_a_closed_transport(
        self, make_bus: MakeBus, names: Names
    ) -> None:
        bus = make_bus()
        async with bus:
            await bus.ensure_topics([names("t")])
        consumer = bus.consumer(names("g"), [names("t")])
        try:
            with pytest.raises(TransportError, match="closed"):
                await consumer.__aenter__()
            assert consumer.assignment() == frozenset()
        finally:
            await consumer.__aexit__(None, None, None)  # leaves, should it have joined

    async def test_ensure_topics_is_idempotent_and_list_topics_names_them(
        self, make_bus: MakeBus, names: Names
    ) -> None:
        a, b = names("a"), names("b")
        async with make_bus(partitions=3) as bus:
            await bus.ensure_topics([a, b])
            await bus.ensure_topics([a])
            await bus.ensure_topics([])
            topics = await bus.list_topics()
            assert {a: 3, b: 3}.items() <= topics.items()
            await bus.ensure_topics([b, a, b])
            assert (await bus.list_topics()).items() >= {a: 3, b: 3}.items()

    async def test_transports_provisioning_at_once_create_each_topic_once(
        self, make_bus: MakeBus, names: Names
    ) -> None:
        self.needs_shared_bus()
        a, b, c = names("a"), names("b"), names("c")
        async with make_bus(partitions=3) as one, make_bus(partitions=5) as two:
            # Two processes provisioning at once: "already exists" is success.
            await asyncio.gather(one.ensure_topics([a, b]), two.ensure_topics([a, b]))
            seen = await one.list_topics()
            assert seen[a] in (3, 5)
            assert seen[b] in (3, 5)
            await two.ensure_topics([a, c])  # a keeps its count; c gets two's
            seen_by_two = await two.list_topics()
            assert (seen_by_two[a], seen_by_two[b], seen_by_two[c]) == (seen[a], seen[b], 5)

    async def test_oversized_record_rejects_the_whole_call_before_sending(
        self, make_bus: MakeBus, names: Names
    ) -> None:
        small, big, h, fits = names("small"), names("big"), names("h"), names("fits")
        async with make_bus(max_message_bytes=100, partitions=1) as bus:
            await bus.ensure_topics([small, big, h, fits])
            with pytest.raises(TransportError) as caught:
                await bus.publish([Outgoing(small, b"ok"), Outgoing(big, b"x" * 101)])
            assert caught.value.retriable is False
            assert repr(big) in str(caught.value)
            assert "101 bytes" in str(caught.value)
            assert "limit of 100 bytes" in str(caught.value)
            # key and headers count toward the size too
            with pytest.raises(TransportError, match="102 bytes"):
                await bus.publish([Outgoing(h, b"x" * 90, key=b"k", headers=(("tp", b"y" * 9),))])
            with pytest.raises(TransportError, match="101 bytes"):
                await bus.send([Outgoing(small, b"ok"), Outgoing(big, b"x" * 101)])
            await bus.publish([Outgoing(fits, b"x" * 99, key=b"k")])
            # One partition per topic: whatever had been sent would come before these.
            await bus.publish([Outgoing(t, b"end") for t in (small, big, h)])
            async with bus.consumer(names("g"), [small, big, h, fits]) as consumer:
                got = await take(consumer, 4, within=self.WITHIN)
        assert sorted((r.topic, r.value) for r in got) == sorted(
            [(small, b"end"), (big, b"end"), (h, b"end"), (fits, b"x" * 99)]
        )

    # -- records ----------------------------------------------------------------------

    async def test_keyed_records_keep_their_partition_order_and_headers(
        self, make_bus: MakeBus, names: Names
    ) -> None:
        topic = names("t")
        keys = [f"wf-{i}".encode() for i in range(8)]
        async with make_bus(partitions=6) as bus:
            await bus.ensure_topics([topic])
            await bus.publish(
                [
                    Outgoing(topic, b"%s:%d" % (k, n), key=k, headers=(("traceparent", b"00-x"),))
                    for n in range(20)
                    for k in keys
                ]
            )
            async with bus.consumer(names("g"), [topic]) as consumer:
                got = await take(consumer, 160, within=self.WITHIN)
                assert await consumer.fetch(timeout=self.IDLE) == []
        assert len(got) == 160
        for key in keys:
            mine = [r for r in got if r.key == key]
            assert len({r.partition for r in mine}) == 1
            assert [r.value for r in mine] == [b"%s:%d" % (key, n) for n in range(20)]
        for partition in {r.partition for r in got}:
            offsets = [r.offset for r in got if r.partition == partition]
            assert offsets == list(range(len(offsets)))
        assert all(r.topic == topic and r.tp == (topic, r.partition) for r in got)
        assert all(r.headers == (("traceparent", b"00-x"),) for r in got)
        assert all(abs(r.timestamp - time.time()) < 60 for r in got)

    async def test_send_hands_records_over_and_its_result_waits_for_them(
        self, make_bus: MakeBus, names: Names
    ) -> None:
        topic = names("t")
        async with make_bus(partitions=1) as bus:
            await bus.ensure_topics([topic])
            acks = await bus.send([Outgoing(topic, b"%d" % i, key=b"k") for i in range(5)])
            await acks
            async with bus.consumer(names("g"), [topic]) as consumer:
                got = await take(consumer, 5, within=self.WITHIN)
        assert _values(got) == [b"%d" % i for i in range(5)]

    async def test_fetch_takes_at_most_max_records_in_offset_order_per_partition(
        self, make_bus: MakeBus, names: Names
    ) -> None:
        topic = names("t")
        async with make_bus(partitions=2) as bus:
            await bus.ensure_topics([topic])
            await bus.publish([Outgoing(topic, b"%d" % i, key=b"k%d" % i) for i in range(20)])
            async with bus.consumer(names("g"), [topic]) as consumer:
                first: list[Record] = []
                while not first:
                    first = await consumer.fetch(max_records=4, timeout=self.WITHIN)
                assert 1 <= len(first) <= 4
                rest = await take(consumer, 20 - len(first), within=self.WITHIN)
        assert sorted(int(r.value) for r in first + rest) == list(range(20))
        for p in (0, 1):
            offsets = [r.offset for r in first + rest if r.partition == p]
            assert offsets == list(range(len(offsets)))

    async def test_fetch_times_out_quickly_with_nothing_to_read(
        self, make_bus: MakeBus, names: Names
    ) -> None:
        async with make_bus() as bus:
            await bus.ensure_topics([names("t")])
            async with bus.consumer(names("g"), [names("t")]) as consumer:
                started = time.monotonic()
                assert await consumer.fetch(timeout=0.05) == []
                assert 0.04 <= time.monotonic() - started < 0.5

    async def test_fetching_nothing_keeps_the_membership_and_takes_nothing(
        self, make_bus: MakeBus, names: Names
    ) -> None:
        topic = names("t")
        async with make_bus(partitions=1) as bus:
            await bus.ensure_topics([topic])
            await bus.publish([Outgoing(topic, b"a"), Outgoing(topic, b"b")])
            async with bus.consumer(names("g"), [topic]) as consumer:
                assert await consumer.fetch(max_records=0, timeout=0.3) == []
                assert consumer.assignment() == {(topic, 0)}
                got = await take(consumer, 2, within=self.WITHIN)
        assert _values(got) == [b"a", b"b"]

    async def test_lag_counts_the_records_of_a_partition_not_yet_fetched(
        self, make_bus: MakeBus, names: Names
    ) -> None:
        topic = names("t")
        async with make_bus(partitions=1) as bus:
            await bus.ensure_topics([topic])
            await bus.publish([Outgoing(topic, b"v", key=b"k")] * 5)
            async with bus.consumer(names("g"), [topic]) as consumer:
                got = await take(consumer, 2, within=self.WITHIN)
                assert len(got) == 2
                assert consumer.lag() == {(topic, 0): 3}
                assert set(consumer.lag()) <= consumer.assignment()
                await take(consumer, 3, within=self.WITHIN)
                assert consumer.lag() == {(topic, 0): 0}

    # -- groups -----------------------------------------------------------------------

    async def test_a_group_shares_partitions_and_delivers_each_record_once(
        self, make_bus: MakeBus, names: Names
    ) -> None:
        topic, group = names("t"), names("g")
        every = {(topic, p) for p in range(6)}
        async with make_bus(partitions=6) as bus:
            await bus.ensure_topics([topic])
            async with bus.consumer(group, [topic]) as a, bus.consumer(group, [topic]) as b:
                await until(
                    lambda: len(a.assignment()) == 3 and a.assignment() | b.assignment() == every,
                    [a, b],
                    within=self.WITHIN,
                    what="six partitions shared three and three",
                )
                assert not a.assignment() & b.assignment()
                await bus.publish([Outgoing(topic, b"%d" % i, key=b"%d" % i) for i in range(60)])
                got_a, got_b = await take_all([a, b], 60, within=self.WITHIN, idle=self.IDLE)
                assert {r.tp for r in got_a} <= a.assignment()
                assert {r.tp for r in got_b} <= b.assignment()
        assert sorted(int(r.value) for r in got_a + got_b) == list(range(60))

    async def test_members_may_subscribe_to_different_topics(
        self, make_bus: MakeBus, names: Names
    ) -> None:
        t1, t2, group = names("t1"), names("t2"), names("g")
        async with make_bus(partitions=2) as bus:
            await bus.ensure_topics([t1, t2])
            async with bus.consumer(group, [t1, t2]) as a, bus.consumer(group, [t2]) as b:
                await until(
                    lambda: len(b.assignment()) == 1 and len(a.assignment()) == 3,
                    [a, b],
                    within=self.WITHIN,
                    what="t2 shared, t1 all a's",
                )
                assert {tp for tp in a.assignment() if tp[0] == t1} == {(t1, 0), (t1, 1)}
                assert next(iter(b.assignment()))[0] == t2
                assert not a.assignment() & b.assignment()

    async def test_two_groups_each_get_every_record(self, make_bus: MakeBus, names: Names) -> None:
        topic = names("t")
        async with make_bus(partitions=3) as bus:
            await bus.ensure_topics([topic])
            async with (
                bus.consumer(names("g1"), [topic]) as one,
                bus.consumer(names("g2"), [topic]) as two,
            ):
                await bus.publish([Outgoing(topic, b"%d" % i, key=b"%d" % i) for i in range(30)])
                got_one, got_two = await asyncio.gather(
                    take(one, 30, within=self.WITHIN), take(two, 30, within=self.WITHIN)
                )
        assert sorted(int(r.value) for r in got_one) == list(range(30))
        assert sorted(int(r.value) for r in got_two) == list(range(30))

    async def test_a_new_member_resumes_at_the_committed_offset_and_gets_the_rest_again(
        self, make_bus: MakeBus, names: Names
    ) -> None:
        topic, group = names("t"), names("g")
        async with make_bus(partitions=1) as bus:
            await bus.ensure_topics([topic])
            await bus.publish([Outgoing(topic, b"%d" % i, key=b"k") for i in range(10)])
            async with bus.consumer(group, [topic]) as a:
                first = await take(a, 10, within=self.WITHIN)
                assert [r.offset for r in first] == list(range(10))
                await a.commit({(topic, 0): 4})  # processed 0..3 only
                await a.commit({(names("other"), 0): 1})  # not owned: skipped
            async with bus.consumer(group, [topic]) as b:
                again = await take(b, 6, within=self.WITHIN)
                assert [r.offset for r in again] == [4, 5, 6, 7, 8, 9]
            # leaving does not commit: the next member starts at 4 again
            async with bus.consumer(group, [topic]) as c:
                third = await take(c, 6, within=self.WITHIN)
                assert [r.offset for r in third] == [4, 5, 6, 7, 8, 9]
        assert [r.value for r in third] == [b"%d" % i for i in range(4, 10)]

    async def test_a_rebalance_revokes_before_the_new_owner_reads(
        self, make_bus: MakeBus, names: Names
    ) -> None:
        topic, group = names("t"), names("g")
        # What a's on_revoked saw: the partitions, and what b owned and had read then.
        revokes: list[tuple[set[TopicPartition], frozenset[TopicPartition], int]] = []
        b_got: list[Record] = []
        checked = False  # leaving at the end revokes too (checked on its own elsewhere)

        async with make_bus(partitions=2) as bus:
            await bus.ensure_topics([topic])
            await bus.publish([Outgoing(topic, b"%d" % i, key=b"k%d" % i) for i in range(20)])
            b = bus.consumer(group, [topic])

            async def on_revoked(tps: set[TopicPartition]) -> None:
                if checked:
                    return
                revokes.append((tps, b.assignment(), len(b_got)))
                await asyncio.sleep(0.01)  # finishing in-flight work
                await a.commit(dict.fromkeys(tps, 3))  # three of each partition were done

            async with bus.consumer(group, [topic], on_revoked=on_revoked) as a:
                held = await take(a, 20, within=self.WITHIN)
                assert len(held) == 20
                joining = asyncio.ensure_future(b.__aenter__())
                try:
                    await until(
                        lambda: joining.done() and len(b.assignment()) == 1,
                        [a],
                        within=self.WITHIN,
                        what="b owning one partition",
                    )
                    (moved,) = b.assignment()
                    assert not a.assignment() & b.assignment()
                    left = sum(r.tp == moved for r in held) - 3
                    b_got.extend(await take(b, left, within=self.WITHIN))
                    seen = list(revokes)
                finally:
                    checked = True
                    await joining
                    await b.__aexit__(None, None, None)
        # a gave the partition up (and committed) before b owned or read it.
        assert [(had, read) for tps, had, read in seen if moved in tps] == [(frozenset(), 0)]
        assert [(r.tp, r.offset) for r in b_got] == [(moved, 3 + i) for i in range(left)]

    async def test_a_member_waiting_in_fetch_does_not_hold_up_a_rebalance(
        self, make_bus: MakeBus, names: Names
    ) -> None:
        topic, group = names("t"), names("g")
        released = asyncio.Event()

        async def on_revoked(tps: set[TopicPartition]) -> None:
            released.set()

        async with make_bus(partitions=2) as bus:
            await bus.ensure_topics([topic])
            async with bus.consumer(group, [topic], on_revoked=on_revoked) as a:
                waiting = asyncio.ensure_future(a.fetch(timeout=4 * self.WITHIN))
                await asyncio.sleep(0)
                started = time.monotonic()
                async with bus.consumer(group, [topic]) as b:
                    await asyncio.wait_for(released.wait(), self.WITHIN)
                    await until(
                        lambda: len(b.assignment()) == 1 and len(a.assignment()) == 1,
                        [b],
                        within=self.WITHIN,
                        what="one partition each",
                    )
                    assert time.monotonic() - started < 2 * self.WITHIN
                    assert not waiting.done()  # a went back to waiting for records
                    await bus.publish(
                        [Outgoing(topic, b"k%d" % i, key=b"k%d" % i) for i in range(16)]
                    )
                    first_a = await waiting
                    got_a, got_b = await take_all(
                        [a, b], 16 - len(first_a), within=self.WITHIN, idle=self.IDLE
                    )
                    got_a = first_a + got_a
                    # Sixteen keys land on both partitions: each member read its own.
                    assert got_a
                    assert got_b
                    assert {r.tp for r in got_a} == a.assignment()
                    assert {r.tp for r in got_b} == b.assignment()
        assert sorted(_values(got_a + got_b)) == sorted(b"k%d" % i for i in range(16))

    async def test_leaving_calls_on_revoked_so_the_member_can_commit(
        self, make_bus: MakeBus, names: Names
    ) -> None:
        topic, group = names("t"), names("g")
        revoked: list[set[TopicPartition]] = []

        async def on_revoked(tps: set[TopicPartition]) -> None:
            revoked.append(tps)
            await a.commit({(topic, 0): 2})

        async with make_bus(partitions=1) as bus:
            await bus.ensure_topics([topic])
            await bus.publish([Outgoing(topic, b"%d" % i) for i in range(5)])
            async with bus.consumer(group, [topic], on_revoked=on_revoked) as a:
                assert len(await take(a, 5, within=self.WITHIN)) == 5
                assert revoked == []
            assert revoked == [{(topic, 0)}]
            assert a.assignment() == frozenset()
            async with bus.consumer(group, [topic]) as b:
                assert [r.offset for r in await take(b, 3, within=self.WITHIN)] == [2, 3, 4]

    async def test_a_consumer_that_left_refuses_to_fetch(
        self, make_bus: MakeBus, names: Names
    ) -> None:
        topic = names("t")
        async with make_bus() as bus:
            await bus.ensure_topics([topic])
            async with bus.consumer(names("g"), [topic]) as consumer:
                await consumer.fetch(timeout=0)
            with pytest.raises(TransportError) as caught:
                await consumer.fetch(timeout=0.5)
        assert caught.value.retriable is False

    async def test_a_consumer_cannot_be_entered_twice(
        self, make_bus: MakeBus, names: Names
    ) -> None:
        topic = names("t")
        async with make_bus() as bus:
            await bus.ensure_topics([topic])
            consumer = bus.consumer(names("g"), [topic])
            async with consumer:
                with pytest.raises(TransportError, match="twice"):
                    await consumer.__aenter__()
                assert consumer.assignment()

    async def test_closing_a_transport_hands_its_consumers_partitions_to_the_group(
        self, make_bus: MakeBus, names: Names
    ) -> None:
        self.needs_shared_bus()
        topic, group = names("t"), names("g")
        async with make_bus(partitions=2) as stays:
            await stays.ensure_topics([topic])
            async with stays.consumer(group, [topic]) as staying:
                going_bus = make_bus(partitions=2)
                async with going_bus:
                    going = going_bus.consumer(group, [topic])
                    await going.__aenter__()
                    await until(
                        lambda: len(staying.assignment()) == 1 and len(going.assignment()) == 1,
                        [staying, going],
                        within=self.WITHIN,
                        what="one partition each",
                    )
                assert going.assignment() == frozenset()
                await until(
                    lambda: len(staying.assignment()) == 2,
                    [staying],
                    within=self.WITHIN,
                    what="the staying member owning both partitions",
                )

    async def test_closing_a_transport_revokes_its_consumers_partitions_first(
        self, make_bus: MakeBus, names: Names
    ) -> None:
        topic = names("t")
        revoked: list[set[TopicPartition]] = []

        async def on_revoked(tps: set[TopicPartition]) -> None:
            revoked.append(tps)

        bus = make_bus(partitions=1)
        async with bus:
            await bus.ensure_topics([topic])
            consumer = bus.consumer(names("g"), [topic], on_revoked=on_revoked)
            await consumer.__aenter__()
            assert consumer.assignment() == {(topic, 0)}
        assert revoked == [{(topic, 0)}]
        assert consumer.assignment() == frozenset()
        await consumer.__aexit__(None, None, None)  # leaving again does nothing
        assert revoked == [{(topic, 0)}]
