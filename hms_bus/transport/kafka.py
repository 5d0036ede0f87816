"""The ``kafka://`` transport: Apache Kafka through aiokafka.

``kafka://host:9092[,host2:9092]`` lists the bootstrap brokers. ``kafka://user:pass@host:9092``
gives SASL credentials (the password is redacted from every message); the security
protocol, SASL mechanism and TLS files come from the ``transport`` settings section.

Producer: ``acks=all`` always; records are batched (``linger_ms``, ``batch_bytes``) and
optionally compressed; :meth:`KafkaTransport.publish` sends a whole call's records, then
waits until the broker has acknowledged every one. The idempotent producer is off by
default, because brokers such as Tansu do not implement it; turn it on with
``transport.enable_idempotence`` on Apache Kafka. Ordering per key does not depend on
it: aiokafka keeps at most one batch in flight per partition.

Consumers: one aiokafka consumer per role and group, offsets committed only by the
caller (never automatically), reading from the earliest offset when a group has no
committed one, so nothing published before a group first joined is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Generator, Iterable, Sequence
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import unquote

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2
from aiokafka.structs import TopicPartition as AIOTopicPartition

from .._backends import redact
from .._errors import ConfigError, TransportError
from .._outage import quiet
from . import Outgoing, RevokeCallback, TopicPartition, check_sizes
from ._kafka_common import RECORD_OVERHEAD, error
from ._kafka_consumer import KafkaConsumer

__all__ = ["KafkaConsumer", "KafkaTransport", "parse_kafka_url"]

log = logging.getLogger(__name__)

_SCHEME = "kafka://"
_TOPIC_EXISTS = 36  # Kafka error code TOPIC_ALREADY_EXISTS
_PARTITION_CACHE = 100_000  # keys whose murmur2 hash is remembered

Compression = Literal["none", "gzip", "snappy", "lz4", "zstd"]
SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]


def parse_kafka_url(url: str) -> tuple[str, str | None, str | None]:
    """``kafka://[user:pass@]host:port[,host:port]`` -> (bootstrap, user, password).

    Raises:
        ConfigError: the URL is not of that form (the message redacts the password).
    """
    if not isinstance(url, str) or url[: len(_SCHEME)].lower() != _SCHEME:
        raise ConfigError(f"invalid kafka bus URL {url!r}: use kafka://host:port[,host:port]")
    rest = url[len(_SCHEME) :].split("/", 1)[0].split("?", 1)[0]
    user = password = None
    if "@" in rest:
        creds, rest = rest.rsplit("@", 1)
        user_part, _, pass_part = creds.partition(":")
        user, password = unquote(user_part), unquote(pass_part)
    hosts = [h.strip() for h in rest.split(",") if h.strip()]
    if not hosts:
        raise ConfigError(
            f"invalid kafka bus URL {redact(url)!r}: no broker given; "
            "use kafka://host:port[,host:port]"
        )
    for host in hosts:
        name, sep, port = host.rpartition(":")
        if not sep or not name or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(
                f"invalid kafka bus URL {redact(url)!r}: broker {host!r} must be host:port"
            )
    return ",".join(hosts), user, password


class _Acks:
    """Awaitable: the broker's acknowledgements of one :meth:`KafkaTransport.send`.

    A plain object rather than a coroutine, so one that is never awaited (its sender
    was cancelled) leaves no "never awaited" warning behind.
    """

    __slots__ = ("_futures", "_url")

    def __init__(self, futures: list[asyncio.Future[Any]], url: str) -> None:
        self._futures = futures
        self._url = url

    def __await__(self) -> Generator[Any, None, None]:
        i = 0
        try:
            for i, future in enumerate(self._futures):  # noqa: B007 (read after the loop)
                yield from future.__await__()
        except BaseException as exc:
            # Nobody waits for the rest now (the call failed, or was cancelled): take
            # their outcome when it comes, so none is reported as never retrieved.
            for future in self._futures[i:]:
                future.add_done_callback(_retrieve)
            if isinstance(exc, KafkaError):
                raise error(f"publish to {self._url} failed", exc) from exc
            raise


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class KafkaTransport:
    """The Kafka transport (see ``Transport`` and the module docs).

    Args:
        url: ``kafka://[user:pass@]host:port[,host:port]``.
        partitions: partitions of each topic this transport creates.
        replication_factor: replicas of each topic it creates (3 on a production cluster).
        max_message_bytes: largest record accepted (value + key + headers); larger ones
            are refused before anything is sent.
        linger_ms: how long the producer waits to fill a batch.
        batch_bytes: largest producer batch per partition.
        compression: ``none``, ``gzip``, or ``snappy``/``lz4``/``zstd`` (these need
            ``pip install cramjam``).
        enable_idempotence: the idempotent producer (off: Tansu lacks it).
        session_timeout, heartbeat_interval: group membership, in seconds.
        max_poll_interval: seconds a member may go without fetching before it leaves
            its group; also how long a rebalance waits for members to finish revoking.
        fetch_max_wait: longest the broker holds a fetch that has no records yet.
        request_timeout: seconds before a request to the broker is given up.
        close_timeout: seconds closing may take to leave groups and flush; past it
            the connections are closed regardless.
        client_id: the client id brokers log.
        security_protocol, sasl_mechanism, sasl_username, sasl_password, ssl_cafile,
        ssl_certfile, ssl_keyfile: passed through to aiokafka. Credentials in the URL
            win over ``sasl_username``/``sasl_password``.
        **_ignored: options meant for other backends.

    Raises:
        ConfigError: a malformed URL or an unusable option.
    """

    def __init__(
        self,
        url: str,
        *,
        partitions: int = 6,
        replication_factor: int = 1,
        max_message_bytes: int = 1_048_576,
        linger_ms: float = 5.0,
        batch_bytes: int = 1_048_576,
        compression: Compression = "none",
        enable_idempotence: bool = False,
        session_timeout: float = 10.0,
        heartbeat_interval: float = 3.0,
        max_poll_interval: float = 300.0,
        fetch_max_wait: float = 0.1,
        request_timeout: float = 40.0,
        close_timeout: float = 5.0,
        client_id: str = "hms-bus",
        security_protocol: SecurityProtocol = "PLAINTEXT",
        sasl_mechanism: str = "PLAIN",
        sasl_username: str | None = None,
        sasl_password: str | None = None,
        ssl_cafile: str | None = None,
        ssl_certfile: str | None = None,
        ssl_keyfile: str | None = None,
        **_ignored: object,
    ) -> None:
        self._bootstrap, user, password = parse_kafka_url(url)
        quiet("aiokafka")  # hms-bus logs an outage itself, once a minute
        self._url = redact(url)
        if partitions < 1 or replication_factor < 1:
            raise ConfigError(
                f"kafka bus needs partitions >= 1 and replication_factor >= 1, got "
                f"{partitions} and {replication_factor}"
            )
        if heartbeat_interval >= session_timeout:
            raise ConfigError(
                f"transport.heartbeat_interval ({heartbeat_interval}s) must be shorter than "
                f"transport.session_timeout ({session_timeout}s)"
            )
        if compression not in ("none", "gzip"):
            from aiokafka import codec

            if not getattr(codec, f"has_{compression}", lambda: False)():
                raise ConfigError(
                    f"transport.compression={compression!r} needs the package 'cramjam': "
                    "pip install cramjam"
                )
        self._partitions = partitions
        self._replication = replication_factor
        self._max_bytes = max_message_bytes
        self._client_id = client_id
        self._opts: dict[str, Any] = {
            "linger_ms": linger_ms,
            "batch_bytes": batch_bytes,
            "compression": None if compression == "none" else compression,
            "enable_idempotence": enable_idempotence,
            "session_timeout": session_timeout,
            "heartbeat_interval": heartbeat_interval,
            "max_poll_interval": max_poll_interval,
            "fetch_max_wait": fetch_max_wait,
            "request_timeout": request_timeout,
            "close_timeout": close_timeout,
        }
        security: dict[str, Any] = {"security_protocol": security_protocol}
        user = user if user is not None else sasl_username
        password = password if password is not None else sasl_password
        if security_protocol.startswith("SASL"):
            security.update(
                sasl_mechanism=sasl_mechanism,
                sasl_plain_username=user,
                sasl_plain_password=password,
            )
        elif user is not None:
            raise ConfigError(
                f"kafka bus URL {self._url!r} has credentials but transport.security_protocol "
                f"is {security_protocol}; use SASL_PLAINTEXT or SASL_SSL"
            )
        if security_protocol.endswith("SSL"):
            context = ssl.create_default_context(cafile=ssl_cafile)
            if ssl_certfile:
                context.load_cert_chain(ssl_certfile, ssl_keyfile)
            security["ssl_context"] = context
        self._security = security
        self._producer: AIOKafkaProducer | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._known_topics: set[str] = set()
        self._tracked: set[str] = set()  # topics the producer keeps in its metadata
        self._hashes: dict[bytes, int] = {}  # key -> murmur2 hash (see _partition)
        self._consumers: set[KafkaConsumer] = set()
        self._state: Literal["new", "open", "closed"] = "new"

    @property
    def url(self) -> str:
        """The URL this transport was made from, password redacted."""
        return self._url

    async def __aenter__(self) -> Self:
        if self._state == "closed":
            raise TransportError(f"transport {self._url!r} is closed; make a new one")
        o = self._opts
        producer = AIOKafkaProducer(
            bootstrap_servers=self._bootstrap,
            client_id=self._client_id,
            acks="all",
            linger_ms=o["linger_ms"],
            max_batch_size=o["batch_bytes"],
            max_request_size=max(o["batch_bytes"], self._max_bytes + RECORD_OVERHEAD),
            compression_type=o["compression"],
            enable_idempotence=o["enable_idempotence"],
            request_timeout_ms=int(o["request_timeout"] * 1000),
            **self._security,
        )
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self._bootstrap,
            client_id=self._client_id,
            request_timeout_ms=int(o["request_timeout"] * 1000),
            **self._security,
        )
        try:
            await producer.start()
            await admin.start()
        except (KafkaError, OSError) as exc:
            await producer.stop()
            await admin.close()
            raise error(f"cannot connect to the bus at {self._url}", exc) from exc
        self._producer, self._admin = producer, admin
        self._state = "open"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._state = "closed"
        for consumer in list(self._consumers):
            await consumer.__aexit__(None, None, None)
        producer, self._producer = self._producer, None
        admin, self._admin = self._admin, None
        try:
            if producer is not None:
                await self._stop_producer(producer)
        finally:
            if admin is not None:
                await admin.close()

    async def _stop_producer(self, producer: AIOKafkaProducer) -> None:
        """Flush and close the producer, within ``close_timeout``.

        Every :meth:`publish` waits for its acknowledgements, so what is still batched
        here belongs to calls that never returned: nobody counts on it. With the broker
        gone the flush would wait ``request_timeout`` per batch; past ``close_timeout``
        the batches are failed instead, and the producer closes at once.
        """
        stopping = asyncio.ensure_future(producer.stop())
        done, _ = await asyncio.wait({stopping}, timeout=self._opts["close_timeout"])
        if done:
            if not stopping.cancelled() and stopping.exception() is not None:
                log.warning(
                    "bus %s: closing the producer failed: %r", self._url, stopping.exception()
                )
            return
        log.warning(
            "bus %s: records still unsent after %.1fs at shutdown; closing regardless",
            self._url,
            self._opts["close_timeout"],
        )
        stopping.cancel()
        # aiokafka has no public way to close without flushing: stop the sender task
        # and close the connections, as stop() does once its flush is over.
        sender = producer._sender.sender_task
        if sender is not None and not sender.done():
            sender.cancel()
        await asyncio.wait({stopping, *([sender] if sender is not None else [])})
        with contextlib.suppress(Exception):
            await producer.client.close()

    def _open(self) -> tuple[AIOKafkaProducer, AIOKafkaAdminClient]:
        if self._state != "open" or self._producer is None or self._admin is None:
            state = "closed" if self._state == "closed" else "not open"
            raise TransportError(
                f"transport {self._url!r} is {state}; use it inside 'async with'",
                retriable=False,
            )
        return self._producer, self._admin

    async def list_topics(self) -> dict[str, int]:
        """Every topic on the cluster with its partition count (internal ones excluded)."""
        _, admin = self._open()
        try:
            described = await admin.describe_topics()
        except KafkaError as exc:
            raise error("listing topics failed", exc) from exc
        return {
            t["topic"]: len(t["partitions"])
            for t in described
            if not t.get("is_internal") and not t["topic"].startswith("__")
        }

    async def group_lag(self, group: str, topics: Sequence[str]) -> dict[TopicPartition, int]:
        """End offsets minus the group's committed offsets, per partition of ``topics``.

        Read by a consumer started for the call under the group's id that never
        subscribes, so it reads the group's offsets without joining it (the group is not
        rebalanced). The admin client's ``list_consumer_group_offsets`` would do, but
        its OffsetFetch version is not one every Kafka-compatible broker answers.
        """
        self._open()
        probe = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            group_id=group,
            client_id=self._client_id,
            enable_auto_commit=False,
            request_timeout_ms=int(self._opts["request_timeout"] * 1000),
            **self._security,
        )
        out: dict[TopicPartition, int] = {}
        try:
            # Every topic, rather than those asked for: asking a broker about a topic
            # that does not exist may create it.
            existing = await self.list_topics() if topics else {}
            wanted = [
                AIOTopicPartition(t, p)
                for t in dict.fromkeys(topics)
                if t in existing
                for p in range(existing[t])
            ]
            await probe.start()
            ends = await probe.end_offsets(wanted) if wanted else {}
            for tp, end in ends.items():
                done = await probe.committed(tp)
                out[(tp.topic, tp.partition)] = max(0, end - (done or 0))
        except KafkaError as exc:
            raise error(f"reading the lag of group {group!r} failed", exc) from exc
        finally:
            await probe.stop()
        return out

    async def ping(self) -> None:
        """Ask the cluster for its brokers (within ``request_timeout``, at most 5 s)."""
        _, admin = self._open()
        try:
            async with asyncio.timeout(min(5.0, self._opts["request_timeout"])):
                await admin.describe_cluster()
        except (KafkaError, OSError, TimeoutError) as exc:
            raise error(f"the bus at {self._url} does not answer", exc) from exc

    async def ensure_topics(self, topics: Iterable[str]) -> None:
        """Create any of ``topics`` that do not exist (``partitions``, ``replication_factor``).

        Safe when several processes do it at once: "already exists" counts as success.

        Raises:
            TransportError: the broker refused to create one (the reason is named).
        """
        _, admin = self._open()
        wanted = [t for t in dict.fromkeys(topics) if t not in self._known_topics]
        if not wanted:
            return
        try:
            response = await admin.create_topics(
                [NewTopic(t, self._partitions, self._replication) for t in wanted]
            )
        except KafkaError as exc:
            raise error("creating topics failed", exc) from exc
        problems = [
            f"{name}: {message or f'error {code}'}"
            for name, code, message in response.topic_errors
            if code not in (0, _TOPIC_EXISTS)
        ]
        if problems:
            raise TransportError("could not create topics: " + "; ".join(problems))
        self._known_topics.update(wanted)

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        """Send ``messages`` and return once the broker acknowledged each (acks=all).

        Records of one topic and key keep their order. Raises TransportError
        (``retriable=False``) before anything is sent when a record is over
        ``max_message_bytes``; (``retriable=True``) when the broker is unreachable or
        refuses a record; then some records of the call may have been stored, so the
        caller publishes the whole call again (consumers tolerate duplicates).
        """
        await (await self.send(messages))

    async def send(self, messages: Sequence[Outgoing]) -> Awaitable[None]:
        """Hand ``messages`` to the producer in order; the result completes once the
        broker acknowledged every one (see :meth:`publish` for the errors)."""
        producer, _ = self._open()
        check_sizes(messages, self._max_bytes)
        futures: list[asyncio.Future[Any]] = []
        tracked = self._tracked
        try:
            for m in messages:
                if m.topic not in tracked:
                    self._track(producer, m.topic)
                futures.append(
                    await producer.send(
                        m.topic,
                        m.value,
                        key=m.key,
                        partition=self._partition(producer, m.topic, m.key),
                        headers=list(m.headers) if m.headers else None,
                    )
                )
        except KafkaError as exc:
            raise error(f"publish to {self._url} failed", exc) from exc
        return _Acks(futures, self._url)

    def _track(self, producer: AIOKafkaProducer, topic: str) -> None:
        """Keep ``topic`` in the producer's metadata from now on.

        aiokafka refreshes metadata for the topics it tracks (once it tracks any), and a
        refresh replaces what it knew. A topic known only from the metadata read at
        start (created before this process) is not tracked: the first send to a topic
        created later makes aiokafka track that one alone, and the refresh that follows
        drops the others, leaving records already handed over for them waiting, with
        no leader, for good. So every topic this process sends to is tracked before its
        first record is handed over.
        """
        self._tracked.add(topic)
        refresh = producer.client.add_topic(topic)
        refresh.add_done_callback(_retrieve)

    def _partition(self, producer: AIOKafkaProducer, topic: str, key: bytes | None) -> int | None:
        """Kafka's default partition of ``key``: murmur2 modulo the topic's partitions.

        The hash is cached per key (a workflow's id keys every one of its records, and
        aiokafka's murmur2 is pure Python); the partition count is read from the current
        metadata on every call, exactly as aiokafka's own partitioner does. Caching the
        count too is wrong: a count read from incomplete metadata would stick, and this
        process would put a workflow's records on other partitions than every other
        process does, which breaks their order.
        """
        if key is None:
            return None
        partitions: set[int] | None = producer.client.cluster.partitions_for_topic(topic)
        if not partitions:
            return None  # metadata not known yet: let the producer fetch it
        hashed = self._hashes.get(key)
        if hashed is None:
            if len(self._hashes) >= _PARTITION_CACHE:
                self._hashes.clear()
            hashed = self._hashes[key] = murmur2(key) & 0x7FFFFFFF
        count = len(partitions)
        if max(partitions) + 1 == count:  # ids 0..count-1, the normal case
            return hashed % count
        chosen: int = sorted(partitions)[hashed % count]
        return chosen

    def consumer(
        self,
        group: str,
        topics: Sequence[str],
        *,
        on_revoked: RevokeCallback | None = None,
    ) -> KafkaConsumer:
        """A new member of ``group`` subscribed to ``topics`` (enter it to join).

        Raises:
            ConfigError: for an empty group name.
        """
        if not group:
            raise ConfigError("a consumer group name must not be empty")
        return KafkaConsumer(self, group, topics, on_revoked)
