"""The ``memory://`` transport behaves like a Kafka cluster."""

from __future__ import annotations

import asyncio
import time
import uuid
import zlib

import pytest

from hms_bus._errors import ConfigError, TransportError
from hms_bus.transport import Consumer, Outgoing, Record, TopicPartition, Transport
from hms_bus.transport.memory import MemoryConsumer, MemoryTransport


def _name() -> str:
    return uuid.uuid4().hex[:12]


async def _drain(consumer: MemoryConsumer, *, idle: float = 0.02) -> list[Record]:
    """Fetch until a fetch comes back empty."""
    got: list[Record] = []
    while batch := await consumer.fetch(timeout=idle):
        got.extend(batch)
    return got


async def test_implements_the_protocols() -> None:
    async with MemoryTransport("memory://") as bus:
        assert isinstance(bus, Transport)
        assert isinstance(bus.consumer("g", ["t"]), Consumer)
        assert bus.url == "memory://"


async def test_keyed_records_keep_partition_and_order() -> None:
    async with MemoryTransport("memory://", partitions=6) as bus:
        keys = [f"wf-{i}".encode() for i in range(10)]
        await bus.publish(
            [Outgoing("t", f"{k.decode()}:{n}".encode(), key=k) for n in range(5) for k in keys]
        )
        records = bus.records("t")
        assert len(records) == 50
        assert bus.topics() == {"t": 6}
        for key in keys:
            mine = [r for r in records if r.key == key]
            assert {r.partition for r in mine} == {zlib.crc32(key) % 6}
            assert [r.value for r in mine] == [f"{key.decode()}:{n}".encode() for n in range(5)]
        for partition in range(6):
            offsets = [r.offset for r in records if r.partition == partition]
            assert offsets == list(range(len(offsets)))
        assert all(r.timestamp > time.time() - 5 for r in records)


async def test_unkeyed_records_go_round_robin() -> None:
    async with MemoryTransport("memory://", partitions=3) as bus:
        await bus.publish([Outgoing("t", b"%d" % i) for i in range(7)])
        by_value = {r.value: r.partition for r in bus.records("t")}
        assert [by_value[b"%d" % i] for i in range(7)] == [0, 1, 2, 0, 1, 2, 0]


async def test_ensure_topics_is_idempotent_and_keeps_partition_counts() -> None:
    url = f"memory://{_name()}"
    async with MemoryTransport(url, partitions=3) as a, MemoryTransport(url, partitions=8) as b:
        await a.ensure_topics(["x", "y"])
        await a.ensure_topics(["x"])
        await b.ensure_topics(["x", "z"])
        await b.publish([Outgoing("y", b"v"), Outgoing("auto", b"v")])
        assert a.topics() == {"x": 3, "y": 3, "z": 8, "auto": 8}
        assert len(a.records("y")) == 1
        with pytest.raises(ConfigError, match="bad topic"):
            await a.ensure_topics(["bad topic"])


async def test_oversized_message_rejects_the_whole_batch() -> None:
    async with MemoryTransport("memory://", max_message_bytes=100) as bus:
        with pytest.raises(TransportError) as caught:
            await bus.publish([Outgoing("small", b"ok"), Outgoing("big", b"x" * 101)])
        assert caught.value.retriable is False
        assert "'big'" in str(caught.value)
        assert "101 bytes" in str(caught.value)
        assert "limit of 100 bytes" in str(caught.value)
        # key and headers count toward the size too
        with pytest.raises(TransportError, match="102 bytes"):
            await bus.publish([Outgoing("h", b"x" * 90, key=b"k", headers=(("tp", b"y" * 9),))])
        assert bus.records("small") == []
        assert bus.records("h") == []
        await bus.publish([Outgoing("fits", b"x" * 99, key=b"k")])
        assert len(bus.records("fits")) == 1


async def test_group_splits_partitions_and_delivers_each_record_once() -> None:
    async with MemoryTransport("memory://", partitions=6) as bus:
        await bus.publish([Outgoing("t", b"%d" % i, key=b"%d" % i) for i in range(60)])
        async with bus.consumer("g", ["t"]) as a, bus.consumer("g", ["t"]) as b:
            got_a, got_b = await asyncio.gather(_drain(a), _drain(b))
            assert a.assignment() | b.assignment() == {("t", p) for p in range(6)}
            assert len(a.assignment()) == 3
            assert len(b.assignment()) == 3
            assert not a.assignment() & b.assignment()
            assert {r.tp for r in got_a} <= a.assignment()
            assert {r.tp for r in got_b} <= b.assignment()
            values = sorted(int(r.value) for r in got_a + got_b)
            assert values == list(range(60))


async def test_members_may_subscribe_to_different_topics() -> None:
    async with MemoryTransport("memory://", partitions=2) as bus:
        async with bus.consumer("g", ["t1", "t2"]) as a, bus.consumer("g", ["t2"]) as b:
            await a.fetch(timeout=0)  # releases what moved to b
            await b.fetch(timeout=0)
            assert {tp for tp in a.assignment() if tp[0] == "t1"} == {("t1", 0), ("t1", 1)}
            assert len([tp for tp in a.assignment() if tp[0] == "t2"]) == 1
            assert len(b.assignment()) == 1
            assert next(iter(b.assignment()))[0] == "t2"
        assert bus.topics() == {"t1": 2, "t2": 2}


async def test_new_member_resumes_at_committed_offset_and_gets_the_rest_again() -> None:
    async with MemoryTransport("memory://", partitions=1) as bus:
        await bus.publish([Outgoing("t", b"%d" % i) for i in range(10)])
        async with bus.consumer("g", ["t"]) as a:
            first = await a.fetch(max_records=100)
            assert [r.offset for r in first] == list(range(10))
            await a.commit({("t", 0): 4})
            await a.commit({("t", 9): 1})  # not owned: skipped
        async with bus.consumer("g", ["t"]) as b:
            again = await b.fetch(max_records=100)
            assert [r.offset for r in again] == [4, 5, 6, 7, 8, 9]
        # leaving does not commit: the next member starts at 4 again
        async with bus.consumer("g", ["t"]) as c:
            assert [r.offset for r in await c.fetch()] == [4, 5, 6, 7, 8, 9]


async def test_rebalance_revokes_before_the_new_owner_reads() -> None:
    async with MemoryTransport("memory://", partitions=2) as bus:
        await bus.publish([Outgoing("t", b"%d" % i) for i in range(20)])  # 10 per partition
        revoked: list[set[TopicPartition]] = []
        b_saw_during_revoke: list[frozenset[TopicPartition]] = []

        async def on_revoked(tps: set[TopicPartition]) -> None:
            revoked.append(tps)
            b_saw_during_revoke.append(b.assignment())
            await asyncio.sleep(0.01)  # finishing in-flight work
            await a.commit(dict.fromkeys(tps, 3))  # three of each partition were done

        async with bus.consumer("g", ["t"], on_revoked=on_revoked) as a:
            held = await a.fetch(max_records=100)
            assert len(held) == 20
            async with bus.consumer("g", ["t"]) as b:
                assert await b.fetch(timeout=0.02) == []  # a still holds b's partition
                assert b.assignment() == frozenset()
                assert await a.fetch(timeout=0) == []  # a releases here
                assert revoked == [{("t", 1)}]
                assert b_saw_during_revoke == [frozenset()]
                assert a.assignment() == {("t", 0)}
                got = await b.fetch(max_records=100)
                assert [(r.partition, r.offset) for r in got] == [(1, i) for i in range(3, 10)]


async def test_member_waiting_in_fetch_releases_promptly() -> None:
    async with MemoryTransport("memory://", partitions=2) as bus:
        released = asyncio.Event()

        async def on_revoked(tps: set[TopicPartition]) -> None:
            released.set()

        async with bus.consumer("g", ["t"], on_revoked=on_revoked) as a:
            waiting = asyncio.create_task(a.fetch(timeout=2.0))
            await asyncio.sleep(0)
            async with bus.consumer("g", ["t"]) as b:
                await asyncio.wait_for(released.wait(), 0.5)  # a woke up for the rebalance
                assert not waiting.done()  # and went back to waiting for records
                assert b.assignment() == {("t", 1)}
                await bus.publish([Outgoing("t", b"a"), Outgoing("t", b"b")])  # p0, p1
                got = await b.fetch(timeout=1.0)
                assert [(r.partition, r.value) for r in got] == [(1, b"b")]
                assert [(r.partition, r.value) for r in await waiting] == [(0, b"a")]


async def test_slow_on_revoked_blocks_no_other_member() -> None:
    async with MemoryTransport("memory://", partitions=3) as bus:
        await bus.publish([Outgoing("t", b"%d" % i) for i in range(3)])  # one per partition
        gate = asyncio.Event()
        revoked: list[set[TopicPartition]] = []

        async def on_revoked(tps: set[TopicPartition]) -> None:
            revoked.append(tps)
            await gate.wait()

        async with (
            bus.consumer("g", ["t"], on_revoked=on_revoked) as a,
            bus.consumer("g", ["t"]) as b,
        ):
            a_fetch = asyncio.create_task(a.fetch(timeout=1.0))
            await asyncio.sleep(0)
            assert revoked == [{("t", 1)}]  # a is stuck finishing its work
            started = time.monotonic()
            assert await b.fetch(timeout=0.02) == []
            async with bus.consumer("g", ["t"]) as c:  # a second rebalance meanwhile
                assert await c.fetch(timeout=0.02) == []
                assert time.monotonic() - started < 0.3
                gate.set()
                assert [r.tp for r in await a_fetch] == [("t", 0)]
                assert revoked == [{("t", 1)}, {("t", 2)}]
                assert [r.tp for r in await b.fetch(timeout=0.5)] == [("t", 1)]
                assert [r.tp for r in await c.fetch(timeout=0.5)] == [("t", 2)]


async def test_leaving_calls_on_revoked_so_the_member_can_commit() -> None:
    async with MemoryTransport("memory://", partitions=1) as bus:
        await bus.publish([Outgoing("t", b"%d" % i) for i in range(5)])

        async def on_revoked(tps: set[TopicPartition]) -> None:
            assert tps == {("t", 0)}
            await a.commit({("t", 0): 2})

        async with bus.consumer("g", ["t"], on_revoked=on_revoked) as a:
            assert len(await a.fetch()) == 5
        assert await a.fetch(timeout=0.5) == []  # left: returns at once
        async with bus.consumer("g", ["t"]) as b:
            assert [r.offset for r in await b.fetch()] == [2, 3, 4]


async def test_two_groups_each_get_every_record() -> None:
    async with (
        MemoryTransport("memory://", partitions=3) as bus,
        bus.consumer("g1", ["t"]) as one,
        bus.consumer("g2", ["t"]) as two,
    ):
        await bus.publish([Outgoing("t", b"%d" % i) for i in range(30)])
        got_one, got_two = await asyncio.gather(_drain(one), _drain(two))
        assert sorted(int(r.value) for r in got_one) == list(range(30))
        assert sorted(int(r.value) for r in got_two) == list(range(30))


async def test_fetch_is_fair_across_partitions_and_ordered_within_each() -> None:
    async with MemoryTransport("memory://", partitions=2) as bus:
        await bus.publish([Outgoing("t", b"%d" % i) for i in range(20)])
        async with bus.consumer("g", ["t"]) as a:
            batch = await a.fetch(max_records=4)
            assert sorted(r.partition for r in batch) == [0, 0, 1, 1]
            rest = await a.fetch(max_records=100)
            for p in (0, 1):
                offsets = [r.offset for r in batch + rest if r.partition == p]
                assert offsets == list(range(10))


async def test_named_brokers_are_shared_and_private_ones_isolated() -> None:
    url = f"memory://{_name()}"
    async with (
        MemoryTransport(url) as x1,
        MemoryTransport(url) as x2,
        MemoryTransport(f"memory://{_name()}") as other,
        MemoryTransport("memory://") as p1,
        MemoryTransport("memory://") as p2,
    ):
        await x1.publish([Outgoing("t", b"shared")])
        await p1.publish([Outgoing("t", b"private")])
        assert [r.value for r in x2.records("t")] == [b"shared"]
        async with x2.consumer("g", ["t"]) as c:
            assert [r.value for r in await c.fetch()] == [b"shared"]
        assert other.records("t") == []
        assert [r.value for r in p1.records("t")] == [b"private"]
        assert p2.records("t") == []
        assert p2.topics() == {}


@pytest.mark.parametrize(
    "url",
    ["memory://a/b", "memory://a?x=1", "memory:///", "memory://a:1", "memory://u@a", "kafka://h"],
)
def test_bad_url_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        MemoryTransport(url)
    assert repr(url) in str(caught.value)


async def test_fetch_times_out_quickly_with_nothing_to_read() -> None:
    async with MemoryTransport("memory://") as bus, bus.consumer("g", ["t"]) as c:
        started = time.monotonic()
        assert await c.fetch(timeout=0.05) == []
        assert 0.04 <= time.monotonic() - started < 0.5


async def test_lag_counts_unfetched_records_per_owned_partition() -> None:
    async with MemoryTransport("memory://", partitions=2) as bus:
        await bus.publish([Outgoing("t", b"v", key=b"k")] * 5)
        p = zlib.crc32(b"k") % 2
        async with bus.consumer("g", ["t"]) as c:
            assert c.lag() == {("t", 0): 0, ("t", 1): 0} | {("t", p): 5}
            assert len(await c.fetch(max_records=2)) == 2
            assert c.lag()[("t", p)] == 3
            await bus.publish([Outgoing("t", b"v", key=b"k")])
            assert c.lag()[("t", p)] == 4


async def test_closed_transport_refuses_publish_and_consumers_get_nothing() -> None:
    bus = MemoryTransport("memory://")
    with pytest.raises(TransportError, match="not open"):
        await bus.publish([Outgoing("t", b"v")])
    async with bus:
        consumer = bus.consumer("g", ["t"])
        await consumer.__aenter__()
        await bus.publish([Outgoing("t", b"v")])
    with pytest.raises(TransportError, match="closed"):
        await bus.publish([Outgoing("t", b"v")])
    started = time.monotonic()
    assert await consumer.fetch(timeout=0.5) == []
    assert time.monotonic() - started < 0.1
    assert consumer.assignment() == frozenset()
    await consumer.__aexit__(None, None, None)
