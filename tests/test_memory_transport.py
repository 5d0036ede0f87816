"""What only the ``memory://`` transport does: where it puts records, its named brokers,
its URL forms, and its incremental rebalances.

Everything a transport must do on every backend is the contract
(``tests/contract/transport.py``), run on ``memory://`` by ``tests/contract/test_transports.py``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
import zlib

import pytest

from hms_bus._errors import ConfigError
from hms_bus.transport import Outgoing, TopicPartition
from hms_bus.transport.memory import MemoryTransport


def _name() -> str:
    return uuid.uuid4().hex[:12]


async def test_keys_land_on_the_crc32_of_the_key() -> None:
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


async def test_unkeyed_records_go_round_robin() -> None:
    async with MemoryTransport("memory://", partitions=3) as bus:
        await bus.publish([Outgoing("t", b"%d" % i) for i in range(7)])
        by_value = {r.value: r.partition for r in bus.records("t")}
        assert [by_value[b"%d" % i] for i in range(7)] == [0, 1, 2, 0, 1, 2, 0]


async def test_publishing_or_subscribing_creates_a_topic_and_bad_names_are_refused() -> None:
    url = f"memory://{_name()}"
    async with MemoryTransport(url, partitions=3) as a, MemoryTransport(url, partitions=8) as b:
        await a.ensure_topics(["x", "y"])
        await b.publish([Outgoing("y", b"v"), Outgoing("auto", b"v")])
        async with b.consumer("g", ["sub"]):
            pass
        assert a.topics() == {"x": 3, "y": 3, "auto": 8, "sub": 8}
        assert len(a.records("y")) == 1
        with pytest.raises(ConfigError, match="bad topic"):
            await a.ensure_topics(["bad topic"])
        with pytest.raises(ConfigError, match="bad topic"):
            await a.publish([Outgoing("bad topic", b"v")])
        assert "bad topic" not in a.topics()


async def test_only_the_partitions_that_move_are_revoked() -> None:
    async with MemoryTransport("memory://", partitions=2) as bus:
        await bus.publish([Outgoing("t", b"%d" % i) for i in range(20)])  # 10 per partition
        revoked: list[set[TopicPartition]] = []

        async def on_revoked(tps: set[TopicPartition]) -> None:
            revoked.append(tps)

        async with bus.consumer("g", ["t"], on_revoked=on_revoked) as a:
            held = await a.fetch(max_records=100)
            assert len(held) == 20
            async with bus.consumer("g", ["t"]) as b:
                assert await b.fetch(timeout=0.02) == []  # a still holds b's partition
                assert b.assignment() == frozenset()
                assert await a.fetch(timeout=0) == []  # a releases here
                assert revoked == [{("t", 1)}]
                assert a.assignment() == {("t", 0)}
                # a keeps its place in the partition it kept: nothing comes again
                await bus.publish([Outgoing("t", b"new")])  # round robin: partition 0
                assert [(r.partition, r.offset) for r in await a.fetch()] == [(0, 10)]


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


async def test_fetch_is_fair_across_partitions() -> None:
    async with MemoryTransport("memory://", partitions=2) as bus:
        await bus.publish([Outgoing("t", b"%d" % i) for i in range(20)])
        async with bus.consumer("g", ["t"]) as a:
            batch = await a.fetch(max_records=4)
            assert sorted(r.partition for r in batch) == [0, 0, 1, 1]


async def test_lag_is_known_for_every_owned_partition_before_any_fetch() -> None:
    async with MemoryTransport("memory://", partitions=2) as bus:
        await bus.publish([Outgoing("t", b"v", key=b"k")] * 5)
        p = zlib.crc32(b"k") % 2
        async with bus.consumer("g", ["t"]) as c:
            assert c.lag() == {("t", 0): 0, ("t", 1): 0} | {("t", p): 5}
            await bus.publish([Outgoing("t", b"v", key=b"k")])
            assert c.lag()[("t", p)] == 6  # at once, without a fetch


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
