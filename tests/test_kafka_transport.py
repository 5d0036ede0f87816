"""What only the ``kafka://`` transport does: its URL and options, an unreachable
broker, Kafka's key placement and its poll interval.

Everything a transport must do on every backend is the contract
(``tests/contract/transport.py``), run on the session's broker by
``tests/contract/test_transports.py``; the public-API suite runs on Kafka too, through
``conftest.BACKENDS``.
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
from hms_bus.transport import Consumer, Outgoing, Record, create_transport
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
