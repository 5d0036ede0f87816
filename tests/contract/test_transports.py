"""The Transport contract on every backend: ``memory://`` (private and named) and Kafka.

Each class is one backend; the checks are :class:`contract.transport.TransportContract`.
A check a backend could not pass would be overridden here, marked ``xfail(strict=True)``
with the reason, so that it fails loudly once the backend is fixed; none is.
"""

from __future__ import annotations

import uuid
from typing import Any, ClassVar

import pytest
from kafka_broker import Broker

from contract.transport import TransportContract


class TestMemoryTransport(TransportContract):
    """``memory://``: a broker private to each transport."""

    SHARED = False
    IDLE = 0.02
    WITHIN = 1.0

    @pytest.fixture
    def bus_url(self) -> str:
        return "memory://"


class TestNamedMemoryTransport(TestMemoryTransport):
    """``memory://name``: one broker shared by every transport of the process."""

    SHARED = True

    @pytest.fixture
    def bus_url(self) -> str:
        return f"memory://c{uuid.uuid4().hex[:12]}"


@pytest.mark.kafka
class TestKafkaTransport(TransportContract):
    """``kafka://`` on the session's broker (Tansu, or ``HMS_TEST_KAFKA_URL``)."""

    # A member joins a group in about a second on Tansu (see tests/conftest.py FAST).
    OPTIONS: ClassVar[dict[str, Any]] = {
        "session_timeout": 2.0,
        "heartbeat_interval": 0.5,
        "linger_ms": 1.0,
        "fetch_max_wait": 0.01,
    }
    IDLE = 0.5
    WITHIN = 10.0

    @pytest.fixture
    def bus_url(self, kafka_broker: Broker) -> str:
        return kafka_broker.url
