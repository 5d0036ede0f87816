"""The ``kafka://`` transport on a real broker: what the roles rely on, checked directly.

(The public-API contract suite runs on Kafka too, through ``conftest.BACKENDS``.)
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from typing import Any

import pytest
from kafka_broker import Broker

import hms_bus
from hms_bus._errors import ConfigError, TransportError
from hms_bus.transport import Consumer, Outgoing, Record, Transport, create_transport
from hms_bus.transport.kafka import KafkaTransport, parse_kafka_url

pytestmark = pytest.mark.kafka  # the configuration tests need no broker, but live here

FAST = {"session_timeout": 2.0, "heartbeat_interval": 0.5, "fetch_max_wait": 0.01}


def _topic() -> str:
    return f"kt-{uuid.uuid4().hex[:12]}"


def _bus(broker: Broker, **options: Any) -> KafkaTransport:
    return KafkaTransport(broker.url, **{**FAST, **options})


async def _drain(consumer: Consumer, *, idle: float = 1.0) -> list[Record]:
    """Fetch until nothing arrives for ``idle`` seconds."""
    got: list[Record] = []
    while batch := await consumer.fetch(timeout=idle):
        got.extend(batch)
    return got


# -- configuration (no broker needed) -------------------------------------------------


@pytest.mark.parametrize(
    ("url", "bootstrap", "user"),
    [
        ("kafka://localhost:9092", "localhost:9092", None),
        ("kafka://a:9092,b:9093", "a:9092,b:9093", None),
        ("kafka://svc:p%40ss@k1:9092,k2:9092", "k1:9092,k2:9092", "svc"),
        ("KAFKA://h:1", "h:1", None),
    ],
)
def test_url_names_brokers_and_credentials(url: str, bootstrap: str, user: str | None) -> None:
    got = parse_kafka_url(url)
    assert (got[0], got[1]) == (bootstrap, user)


@pytest.mark.parametrize(
    "url", ["kafka://", "kafka://host", "kafka://host:notaport", "kafka://h:99999", "kfk://h:1"]
)
def test_bad_url_is_a_config_error_without_the_password(url: str) -> None:
    with pytest.raises(ConfigError, match="kafka"):
        parse_kafka_url(url)
    with pytest.raises(ConfigError) as info:
        parse_kafka_url("kafka://u:secret@nohostport")
    assert "secret" not in str(info.value)


def test_options_are_checked_when_the_transport_is_made() -> None:
    with pytest.raises(ConfigError, match="heartbeat_interval"):
        KafkaTransport("kafka://h:9092", session_timeout=1.0, heartbeat_interval=1.0)
    with pytest.raises(ConfigError, match="SASL"):
        KafkaTransport("kafka://u:p@h:9092")  # credentials need a SASL protocol
    bus = KafkaTransport("kafka://u:secret@h:9092", security_protocol="SASL_PLAINTEXT")
    assert "secret" not in bus.url
    with pytest.raises(ConfigError, match="cramjam"):
        KafkaTransport("kafka://h:9092", compression="zstd")
    # The same checks run at init, from settings, before anything connects.
    with pytest.raises(ConfigError, match="heartbeat_interval"):
        hms_bus.init(
            "t", bus="kafka://h:9092", transport={"session_timeout": 1, "heartbeat_interval": 2}
        )


async def test_unreachable_broker_is_a_retriable_transport_error() -> None:
    bus = create_transport("kafka://127.0.0.1:1", request_timeout=2.0)
    started = time.monotonic()
    with pytest.raises(TransportError) as info:
        await bus.__aenter__()
    assert info.value.retriable
    assert "127.0.0.1:1" in str(info.value)
    assert time.monotonic() - started < 10


# -- on the broker ---------------------------------------------------------------------


async def test_implements_the_protocols(kafka_broker: Broker) -> None:
    async with _bus(kafka_broker) as bus:
        assert isinstance(bus, Transport)
        assert isinstance(bus.consumer("g", ["t"]), Consumer)
        assert bus.url == kafka_broker.url


async def test_topics_are_created_once_with_their_partitions(kafka_broker: Broker) -> None:
    a, b = _topic(), _topic()
    async with _bus(kafka_broker, partitions=3) as one, _bus(kafka_broker, partitions=5) as two:
        # Two processes provisioning at once: "already exists" is success.
        await asyncio.gather(one.ensure_topics([a, b]), two.ensure_topics([a, b]))
        topics = await one.list_topics()
        assert topics[a] in (3, 5) and topics[b] in (3, 5)
        await one.ensure_topics([a])  # idempotent
        assert (await two.list_topics())[a] == topics[a]


async def test_keyed_records_keep_their_order_and_headers(kafka_broker: Broker) -> None:
    topic = _topic()
    async with _bus(kafka_broker) as bus:
        await bus.ensure_topics([topic])
        keys = [f"wf-{i}".encode() for i in range(8)]
        await bus.publish(
            [
                Outgoing(topic, b"%s:%d" % (k, n), key=k, headers=(("traceparent", b"00-x"),))
                for n in range(20)
                for k in keys
            ]
        )
        async with bus.consumer(f"g-{topic}", [topic]) as consumer:
            got = await _drain(consumer)
    assert len(got) == 160
    for key in keys:
        mine = [r for r in got if r.key == key]
        assert len({r.partition for r in mine}) == 1
        assert [r.value for r in mine] == [b"%s:%d" % (key, n) for n in range(20)]
    assert all(r.headers == (("traceparent", b"00-x"),) for r in got)
    assert all(abs(r.timestamp - time.time()) < 60 for r in got)


async def test_oversized_record_rejects_the_whole_call_before_sending(
    kafka_broker: Broker,
) -> None:
    topic = _topic()
    async with _bus(kafka_broker, max_message_bytes=2048) as bus:
        await bus.ensure_topics([topic])
        with pytest.raises(TransportError, match="over the limit") as info:
            await bus.publish([Outgoing(topic, b"small"), Outgoing(topic, b"x" * 4096)])
        assert info.value.retriable is False
        async with bus.consumer(f"g-{topic}", [topic]) as consumer:
            assert await _drain(consumer) == []


async def test_commits_are_manual_and_a_new_member_resumes_there(kafka_broker: Broker) -> None:
    topic = _topic()
    group = f"g-{topic}"
    async with _bus(kafka_broker, partitions=1) as bus:
        await bus.ensure_topics([topic])
        await bus.publish([Outgoing(topic, b"%d" % i, key=b"k") for i in range(10)])
        async with bus.consumer(group, [topic]) as first:
            got = await _drain(first)
            assert [r.value for r in got] == [b"%d" % i for i in range(10)]
            await first.commit({(topic, 0): 4})  # processed 0..3 only
            assert first.lag() == {(topic, 0): 0}
        async with bus.consumer(group, [topic]) as second:
            again = await _drain(second)
    # What was not committed is delivered again, nothing that was.
    assert [r.value for r in again] == [b"%d" % i for i in range(4, 10)]


async def test_members_share_partitions_and_leaving_revokes_first(kafka_broker: Broker) -> None:
    topic = _topic()
    group = f"g-{topic}"
    revoked: list[set[tuple[str, int]]] = []

    async def on_revoked(tps: set[tuple[str, int]]) -> None:
        revoked.append(tps)

    async with _bus(kafka_broker, partitions=4) as bus:
        await bus.ensure_topics([topic])
        async with bus.consumer(group, [topic], on_revoked=on_revoked) as a:
            assert len(a.assignment()) == 4

            async def join_b() -> frozenset[tuple[str, int]]:
                async with bus.consumer(group, [topic]) as b:
                    while len(b.assignment()) != 2:
                        await b.fetch(timeout=0.1)
                    return b.assignment()

            async def keep_polling(until: asyncio.Task[Any]) -> None:
                while not until.done():
                    await a.fetch(timeout=0.1)

            joined = asyncio.ensure_future(join_b())
            await keep_polling(joined)
            b_had = await joined
            assert revoked and revoked[0] == {(topic, p) for p in range(4)}
            assert len(a.assignment() | b_had) == 4
        # Leaving calls on_revoked with what the member still owned.
        assert revoked[-1] == a.assignment() or len(revoked) >= 2


async def test_fetching_nothing_keeps_the_membership_and_takes_nothing(
    kafka_broker: Broker,
) -> None:
    topic = _topic()
    async with _bus(kafka_broker, partitions=1) as bus:
        await bus.ensure_topics([topic])
        await bus.publish([Outgoing(topic, b"a"), Outgoing(topic, b"b")])
        async with bus.consumer(f"g-{topic}", [topic]) as consumer:
            assert await consumer.fetch(max_records=0, timeout=0.3) == []
            got = await _drain(consumer)
    assert [r.value for r in got] == [b"a", b"b"]


async def test_a_step_slower_than_the_poll_interval_runs_once(kafka_broker: Broker) -> None:
    """With every worker slot busy past ``max_poll_interval``, the worker stays in its
    group (it keeps fetching nothing) instead of being dropped and running steps twice."""
    runs: Counter[str] = Counter()
    mgmt = hms_bus.init(
        "slow",
        bus=kafka_broker.url,
        namespace=f"slow{uuid.uuid4().hex[:8]}",
        transport={**FAST, "max_poll_interval": 1.0},
        worker={"concurrency": 1, "max_in_flight": 1},
        monitor={"heartbeat_interval": 0},
    )
    mgmt.define_workflow("wf", ["nap"])

    @mgmt.on_step("wf.nap")
    async def nap(ctx: hms_bus.StepContext) -> Any:
        runs[ctx.workflow_id] += 1
        await asyncio.sleep(2.5)

    async with mgmt:
        started = [await mgmt.start("wf", {}, workflow_id=f"w{i}") for i in range(2)]
        finals = [await s.wait(timeout=30) for s in started]
        await asyncio.sleep(1.5)  # a member dropped from its group would run them again
    assert [f.status for f in finals] == ["completed", "completed"]
    assert runs == Counter({"w0": 1, "w1": 1})


async def test_keys_land_where_any_kafka_client_puts_them(kafka_broker: Broker) -> None:
    """The producer's partition for a key is Kafka's default (murmur2 modulo the current
    partition count), so every process and every other client agrees on it."""
    from aiokafka.partitioner import murmur2

    topic = _topic()
    async with _bus(kafka_broker, partitions=5) as bus:
        await bus.ensure_topics([topic])
        keys = [f"wf-{i}".encode() for i in range(40)]
        await bus.publish([Outgoing(topic, b"x", key=k) for k in keys])
        await bus.publish([Outgoing(topic, b"y", key=k) for k in keys])  # cached hashes
        async with bus.consumer(f"g-{topic}", [topic]) as consumer:
            got = await _drain(consumer)
    assert len(got) == 80
    assert all(r.partition == (murmur2(r.key or b"") & 0x7FFFFFFF) % 5 for r in got)
