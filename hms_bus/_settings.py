"""Settings: one pydantic model, from keyword arguments and ``HMS_*`` environment variables.

Keyword arguments to :func:`hms_bus.init` win over the environment, which wins over
the defaults. Nested sections read ``HMS_<SECTION>__<FIELD>``, e.g.
``HMS_WORKER__CONCURRENCY=16``.

=============================  ==============================  ==================
setting (``init`` keyword)     environment variable            default
=============================  ==============================  ==================
``bus``                        ``HMS_BUS_URL``                 ``memory://``
``store``                      ``HMS_STORE_URL``               ``memory://``
``namespace``                  ``HMS_NAMESPACE``               (empty)
``roles``                      ``HMS_ROLES`` (comma list)      ``all``
``gc_threshold``               ``HMS_GC_THRESHOLD``            10000 (0: leave alone)
``worker.concurrency``         ``HMS_WORKER__CONCURRENCY``     64
``worker.steps``               ``HMS_WORKER__STEPS``           all steps
``worker.shutdown_grace``      ``HMS_WORKER__SHUTDOWN_GRACE``  30 s
``transport.close_timeout``    ``HMS_TRANSPORT__CLOSE_TIMEOUT`` 5 s
``scheduler.poll_interval``    ``HMS_SCHEDULER__POLL_INTERVAL`` 1 s
``monitor.heartbeat_interval`` ``HMS_MONITOR__HEARTBEAT_INTERVAL`` 5 s
``transport.partitions``       ``HMS_TRANSPORT__PARTITIONS``   6
``transport.linger_ms``        ``HMS_TRANSPORT__LINGER_MS``    5
``transport.security_protocol`` ``HMS_TRANSPORT__SECURITY_PROTOCOL`` PLAINTEXT
``telemetry.http_port``        ``HMS_TELEMETRY__HTTP_PORT``    none (no server)
``pii.keys``                   ``HMS_PII__KEYS``               a random key per process
=============================  ==============================  ==================
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from ._errors import ConfigError

__all__ = [
    "ALL_ROLES",
    "CoordinatorSettings",
    "MonitorSettings",
    "PiiSettings",
    "PostgresSettings",
    "RetentionSettings",
    "SchedulerSettings",
    "Settings",
    "TelemetrySettings",
    "TransportSettings",
    "UiSettings",
    "WorkerSettings",
    "build_settings",
]

ALL_ROLES: tuple[str, ...] = ("worker", "coordinator", "projector", "scheduler", "monitor")


def _csv(value: Any) -> Any:
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WorkerSettings(_Section):
    """How workers run handlers.

    Attributes:
        concurrency: handlers running at once in this process.
        steps: ``workflow.step`` names this process serves; None serves every step
            that has a handler.
        max_in_flight: records fetched but not finished (defaults to 2 × concurrency).
        shutdown_grace: seconds to let in-flight steps finish on stop before they are
            abandoned (and redelivered elsewhere). Match Kubernetes'
            ``terminationGracePeriodSeconds``.
        announce_after: a step's ``stepStarted`` event is published once it has run
            this long; a quicker step sends it together with its ``completeStep`` (same
            history, one send instead of two). 0 announces every step at once.
        max_deliveries: a step command that was running when its worker process was
            lost (killed, out of memory, ``os._exit``) is delivered again at most this
            many times, each after the first running alone in its worker; the next
            delivery quarantines it (a dead letter, and the attempt fails as
            ``CrashLoop``, not retried). Counted in the store, so only on Postgres.
            0 never quarantines.
    """

    concurrency: int = Field(64, ge=1, le=10_000)
    steps: Annotated[tuple[str, ...] | None, NoDecode] = None
    max_in_flight: int | None = Field(None, ge=1)
    shutdown_grace: float = Field(30.0, ge=0)
    announce_after: float = Field(0.05, ge=0)
    max_deliveries: int = Field(3, ge=0)

    _split = field_validator("steps", mode="before")(_csv)


class CoordinatorSettings(_Section):
    """How the coordinator and projector consume ``hms.events``.

    Attributes:
        batch_size: events read and decided per round trip to the store.
        max_fanout: the most items one ``Each`` may fan out to; more fails the step,
            naming this limit.
    """

    batch_size: int = Field(500, ge=1)
    max_fanout: int = Field(1000, ge=1)


class SchedulerSettings(_Section):
    """How timers are fired.

    Attributes:
        poll_interval: longest sleep between looks at the store for due timers.
        lease: seconds a claimed timer stays invisible to other schedulers.
        batch_size: timers claimed per look.
        misfire_grace: seconds after which a schedule's tick that has not started
            counts as missed (see ``catchup`` of ``mgmt.schedule``).
    """

    poll_interval: float = Field(1.0, gt=0)
    lease: float = Field(30.0, gt=0)
    batch_size: int = Field(500, ge=1)
    misfire_grace: float = Field(60.0, gt=0)


class RetentionSettings(_Section):
    """How long finished workflows are kept (the scheduler prunes them; ``hms-bus prune``
    does it by hand).

    Attributes:
        older_than: seconds after it finished that a workflow (completed, failed or
            cancelled) is deleted with its steps, history and ledger; None keeps
            everything. Running workflows are never touched.
        interval: seconds between the scheduler's prunes.
        batch_size: workflows deleted per transaction.
        duty: the share of the time a prune deletes (it pauses in between), so that
            the store's other work keeps the rest; 1 deletes without pausing.
    """

    older_than: float | None = Field(None, gt=0)
    interval: float = Field(3600.0, gt=0)
    batch_size: int = Field(500, ge=1)
    duty: float = Field(0.1, gt=0, le=1)


class MonitorSettings(_Section):
    """Heartbeats and SLA checks.

    Attributes:
        heartbeat_interval: seconds between a process's heartbeats (0 disables them).
        missed_heartbeats: heartbeats a process may miss before it is reported down.
        check_interval: seconds between SLA deadline checks.
        forget_after: seconds a process reported down stays listed (in ``hms-bus
            health``) before the monitor forgets it.
    """

    heartbeat_interval: float = Field(5.0, ge=0)
    missed_heartbeats: int = Field(3, ge=1)
    check_interval: float = Field(1.0, gt=0)
    forget_after: float = Field(3600.0, gt=0)


class TransportSettings(_Section):
    """Bus options. The first two apply to every backend; the rest to ``kafka://``.

    Attributes:
        partitions: partitions per topic created by hms-bus.
        max_message_bytes: records larger than this are refused before sending.
        replication_factor: replicas per topic created by hms-bus (3 in production).
        linger_ms: how long the producer waits to fill a batch (throughput vs latency).
        batch_bytes: largest producer batch per partition.
        compression: ``none``, ``gzip``, ``snappy``, ``lz4`` or ``zstd`` (the last three
            need ``pip install cramjam``).
        enable_idempotence: Kafka's idempotent producer. Off by default because some
            Kafka-compatible brokers (Tansu) lack it; turn it on with Apache Kafka.
        session_timeout: seconds without heartbeats before a member is dropped.
        heartbeat_interval: seconds between a member's heartbeats.
        max_poll_interval: seconds a member may go without fetching before it leaves
            its group; also how long a rebalance waits for a worker to drain.
        fetch_max_wait: longest the broker holds a fetch that has no records yet.
        request_timeout: seconds before a request to the broker is given up.
        close_timeout: seconds shutdown gives the bus, once the roles have stopped or
            been given up on, to take the last commits, leave the groups and flush;
            past it the connections are closed regardless (the broker expires the
            sessions, and what was not committed is delivered again).
        client_id: the client id brokers log.
        security_protocol: ``PLAINTEXT``, ``SSL``, ``SASL_PLAINTEXT`` or ``SASL_SSL``.
        sasl_mechanism: e.g. ``PLAIN``, ``SCRAM-SHA-256``, ``SCRAM-SHA-512``.
        sasl_username, sasl_password: SASL credentials (or put them in the bus URL).
        ssl_cafile, ssl_certfile, ssl_keyfile: TLS trust and client certificate files.
    """

    partitions: int = Field(6, ge=1, le=10_000)
    max_message_bytes: int = Field(1_048_576, ge=1024)
    replication_factor: int = Field(1, ge=1, le=32)
    linger_ms: float = Field(5.0, ge=0)
    batch_bytes: int = Field(1_048_576, ge=1024)
    compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "none"
    enable_idempotence: bool = False
    session_timeout: float = Field(10.0, gt=0)
    heartbeat_interval: float = Field(3.0, gt=0)
    max_poll_interval: float = Field(300.0, gt=0)
    fetch_max_wait: float = Field(0.1, ge=0)
    request_timeout: float = Field(40.0, gt=0)
    close_timeout: float = Field(5.0, gt=0)
    client_id: str = Field("hms-bus", min_length=1)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str = "PLAIN"
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    def options(self) -> dict[str, Any]:
        """Keyword arguments for the transport factory (secrets revealed)."""
        values = self.model_dump()
        if self.sasl_password is not None:
            values["sasl_password"] = self.sasl_password.get_secret_value()
        return values


class PostgresSettings(_Section):
    """Options of the ``postgresql://`` store.

    Attributes:
        migrate: apply missing schema migrations when connecting (``hms-bus migrate``
            does it on its own, e.g. as a deployment job, when this is off).
        pool_min, pool_max: connections kept open and allowed, per process, for the
            roles (projector, coordinator, scheduler, monitor).
        client_pool_min, client_pool_max: the same for the client calls (``start``,
            ``status``, ``list``, ``history``, ``wait``). They have a pool of their own,
            so that callers, however many, never delay the roles.
        command_timeout: seconds before a statement is given up.
        wait_recheck: seconds between checks that a process's listening connection
            still answers. Waiters wake on the store's notifications; a connection that
            stops answering is replaced, and every pending waiter is then read again
            (one query for all of them).
        close_timeout: seconds shutdown gives the pools to finish their statements;
            past it their connections are terminated (a transaction cut short rolls
            back).
    """

    migrate: bool = True
    pool_min: int = Field(1, ge=0, le=1000)
    pool_max: int = Field(10, ge=1, le=1000)
    client_pool_min: int = Field(1, ge=0, le=1000)
    client_pool_max: int = Field(4, ge=1, le=1000)
    command_timeout: float = Field(30.0, gt=0)
    wait_recheck: float = Field(10.0, gt=0)
    close_timeout: float = Field(5.0, gt=0)


class TelemetrySettings(_Section):
    """Tracing, metrics and the health/metrics HTTP endpoint.

    Spans and metrics go to the OpenTelemetry providers given to :func:`hms_bus.init`,
    else to the global ones, which the standard ``OTEL_*`` variables configure (see
    :mod:`hms_bus._otel_setup`); with none configured nothing is exported.

    Attributes:
        tracing: create spans and carry trace context in message headers.
        metrics: record the hms-bus metrics.
        http_port: serve ``/healthz`` and Prometheus ``/metrics`` on this port (0 picks
            a free one); None serves nothing.
        http_host: the address that server listens on.
    """

    tracing: bool = True
    metrics: bool = True
    http_port: int | None = Field(None, ge=0, le=65535)
    http_host: str = "0.0.0.0"


class UiSettings(_Section):
    """The operator's console (``hms-bus ui``).

    Attributes:
        token: enables the console's actions (cancel, redrive, signal, dead-letter
            redrive), and every action request must carry it; without it the console is
            read-only.
        host: the address the console listens on.
        port: its port.
    """

    token: SecretStr | None = None
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)


class PiiSettings(_Section):
    """Sensitive fields (see :mod:`hms_bus._pii`).

    Attributes:
        keys: Fernet keys (comma-separated) sealing sensitive values on the bus and in the
            store; the first seals, every one opens. Rotate in two rollouts: add the new
            key second everywhere, then move it first.
            Every process that starts workflows or runs workers needs them. Empty: a
            random key per process, enough only when everything runs in one process.
        fields: more field names to treat as sensitive, besides those marked
            :class:`~hms_bus.Sensitive` in the ``input=`` models.
    """

    keys: SecretStr | None = None
    fields: Annotated[tuple[str, ...], NoDecode] = ()

    _split = field_validator("fields", mode="before")(_csv)

    def key_list(self) -> list[str]:
        """The keys, revealed."""
        if self.keys is None:
            return []
        return [k.strip() for k in self.keys.get_secret_value().split(",") if k.strip()]


class Settings(BaseSettings):
    """Everything a :class:`~hms_bus.Management` is configured with (see module docs)."""

    model_config = SettingsConfigDict(
        env_prefix="HMS_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    service_name: str = Field("hms-bus", min_length=1)
    bus_url: str = "memory://"
    store_url: str = "memory://"
    namespace: str = Field("", pattern=r"^[A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*$")
    roles: Annotated[tuple[str, ...], NoDecode] = ALL_ROLES
    gc_threshold: int = Field(10_000, ge=0)
    """While this process runs roles, the first threshold of Python's cyclic garbage
    collector is at least this (the interpreter's default is 700); 0 leaves the
    thresholds alone. See :mod:`hms_bus._gc`."""
    worker: WorkerSettings = WorkerSettings()
    coordinator: CoordinatorSettings = CoordinatorSettings()
    scheduler: SchedulerSettings = SchedulerSettings()
    retention: RetentionSettings = RetentionSettings()
    monitor: MonitorSettings = MonitorSettings()
    transport: TransportSettings = TransportSettings()
    postgres: PostgresSettings = PostgresSettings()
    telemetry: TelemetrySettings = TelemetrySettings()
    ui: UiSettings = UiSettings()
    pii: PiiSettings = PiiSettings()

    @field_validator("roles", mode="before")
    @classmethod
    def _roles(cls, value: Any) -> Any:
        if value == "all" or value == ("all",):
            return ALL_ROLES
        value = _csv(value)
        if isinstance(value, (list, tuple)):
            value = tuple("" if v is None else v for v in value)
            if "all" in value:
                return ALL_ROLES
            bad = [v for v in value if v not in ALL_ROLES]
            if bad:
                raise ValueError(
                    f"unknown role(s) {', '.join(map(repr, bad))}; roles are "
                    f"{', '.join(ALL_ROLES)}, 'all', or () for a pure client"
                )
            return tuple(dict.fromkeys(value))
        return value


def build_settings(**values: Any) -> Settings:
    """Build :class:`Settings`, turning pydantic's errors into one ConfigError."""
    values = {k: v for k, v in values.items() if v is not None}
    try:
        return Settings(**values)
    except ValidationError as exc:
        problems = []
        for e in exc.errors():
            loc = ".".join(str(p) for p in e["loc"])
            if e["type"] == "extra_forbidden":
                problems.append(f"unknown setting {loc!r}")
            else:
                problems.append(f"{loc}={e.get('input')!r}: {e['msg']}")
        raise ConfigError("invalid settings: " + "; ".join(problems)) from exc
