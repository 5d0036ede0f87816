"""The node: what runs in a process once a Management is entered.

A :class:`Node` opens the bus and the store, creates the topics, starts this process's
roles and supervises them, sends the process's heartbeats and probes its backends
(:mod:`hms_bus._heartbeats`), reports its health (``/healthz``) and serves
``/metrics``, and stops everything gracefully. It knows the roles only through the
:class:`~hms_bus.roles.Role` Protocol (readiness, lag, stats). The client API
(:mod:`hms_bus._client`) runs on the bus and store a node opened; a process that only
starts and queries workflows runs a node with no roles.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from opentelemetry import metrics as otel_metrics
from opentelemetry import trace as otel_trace

from . import _gc
from ._backends import in_process, open_bus, open_store, private, redact, scheme_of
from ._definitions import Registry, StepDefinition
from ._errors import ConfigError, HmsBusError
from ._heartbeats import HOUSEKEEPING_TASKS, Housekeeping
from ._otel_setup import configure_from_environment, prometheus_reader
from ._outage import Outage, Recovery
from ._pii import Sealer, sensitive_names
from ._settings import Settings
from ._telemetry import Attr, Telemetry
from ._topics import Topics
from .roles import Role, RoleStats, Runtime
from .roles.coordinator import Coordinator
from .roles.monitor import Monitor
from .roles.projector import Projector
from .roles.scheduler import Scheduler
from .roles.worker import Worker
from .store import StateStore
from .transport import Transport

__all__ = ["Node"]

log = logging.getLogger("hms_bus")


@dataclass(frozen=True, slots=True)
class _Providers:
    tracer: otel_trace.TracerProvider | None
    meter: otel_metrics.MeterProvider | None


class Node:
    """The runtime of one Management in one process (see module docs)."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        topics: Topics,
        process_id: str,
        *,
        tracer_provider: otel_trace.TracerProvider | None = None,
        meter_provider: otel_metrics.MeterProvider | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.topics = topics
        self.process_id = process_id
        self._providers = _Providers(tracer_provider, meter_provider)
        self.transport: Transport | None = None
        self.store: StateStore | None = None
        self.telemetry: Telemetry | None = None
        self.sealer: Sealer | None = None
        self.roles: dict[str, Role] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._gc_held = False  # a hold on the collector's threshold (see _gc)
        self._server: Any = None
        self._stop = asyncio.Event()
        self.failure: BaseException | None = None
        """The exception of a role that stopped unexpectedly, if one did."""
        self.clean = True
        """False once a :meth:`close` cut work short or left records uncommitted."""
        self.outages: dict[str, Outage] = {}
        """The bus's and the store's outages ("bus", "store"), as the probe sees them."""
        self.recovery = Recovery()
        """Wakes the roles' retrying loops when the probe sees an outage end."""
        self.on_failure: Callable[[BaseException], None] | None = None
        self._housekeeping = Housekeeping(self, self._stop)

    def connected_transport(self) -> Transport:
        """The open bus; :class:`HmsBusError` while not connected."""
        if self.transport is None:
            raise HmsBusError(
                f"Management {self.settings.service_name!r} is not connected: "
                "use 'async with mgmt:' (or await mgmt.connect()) first"
            )
        return self.transport

    # -- starting and stopping ----------------------------------------------------------

    async def connect(self, topics: list[str]) -> None:
        """Open the bus and store, create ``topics`` and start this process's roles."""
        if self.transport is not None:
            raise HmsBusError("this Management is already running")
        s = self.settings
        served = self.served_steps()
        transport, store = open_bus(s), open_store(s)
        await transport.__aenter__()
        try:
            await store.__aenter__()
        except BaseException:
            await transport.__aexit__(None, None, None)
            raise
        self.transport, self.store = transport, store
        self._stop.clear()
        self.failure = None
        try:
            telemetry = self.telemetry = self._make_telemetry(transport.url)
            sealer = self.sealer = self._make_sealer(transport.url)
            await transport.ensure_topics(topics)
            self.outages = {
                "bus": Outage(f"bus {redact(transport.url)}", log),
                "store": Outage(f"store {redact(store.url)}", log),
            }
            rt = Runtime(
                s,
                self.registry,
                transport,
                store,
                self.topics,
                self.process_id,
                telemetry,
                sealer,
                self.outages,
                self.recovery,
            )
            factories: dict[str, Callable[[], Role]] = {
                "projector": lambda: Projector(rt),
                "coordinator": lambda: Coordinator(rt),
                "scheduler": lambda: Scheduler(rt),
                "monitor": lambda: Monitor(rt),
                "worker": lambda: Worker(rt, served),
            }
            for name in s.roles:
                if name == "worker" and not served:
                    log.warning("worker role: no step handlers registered; not consuming")
                    continue
                self.roles[name] = factories[name]()
            if self.roles:
                self._gc_held = _gc.hold(s.gc_threshold)
            for role in self.roles.values():
                self._tasks.append(self._spawn(role))
            self._observe(telemetry)
            if s.telemetry.http_port is not None:
                await self._serve_http()
            await self._until_ready()
            if self.roles:
                self._tasks.extend(self._housekeeping.start())
        except BaseException:
            await self.close()
            raise
        log.info(
            "%s connected (bus %s, store %s, roles %s)",
            s.service_name,
            redact(transport.url),
            redact(store.url),
            ",".join(self.roles) or "none",
        )

    async def close(self) -> None:
        """Stop the roles gracefully (workers drain), then close the bus and store.

        Bounded even with the bus or the store gone: the roles get
        ``worker.shutdown_grace`` plus ``transport.close_timeout`` to drain and commit,
        and are then cancelled; closing the bus and the store is bounded by their own
        ``close_timeout``. :attr:`clean` then says whether everything taken was
        committed (work cut short is delivered again: still at least once).
        """
        transport = self.transport
        if transport is None:
            return
        s = self.settings
        self._stop.set()
        for role in self.roles.values():
            role.stop()
        clean = True
        tasks = [t for t in self._tasks if t.get_name() not in HOUSEKEEPING_TASKS]
        chores = [t for t in self._tasks if t not in tasks]
        for t in chores:
            t.cancel()  # a heartbeat in flight to a lost broker would hold up closing
        await asyncio.gather(*chores, return_exceptions=True)
        if tasks:
            bound = s.worker.shutdown_grace + s.transport.close_timeout
            _, pending = await asyncio.wait(tasks, timeout=bound)
            if pending:
                clean = False
                log.warning(
                    "%d role(s) still stopping after %.1fs (%s); cancelling them",
                    len(pending),
                    bound,
                    ", ".join(t.get_name() for t in pending),
                )
                for t in pending:
                    t.cancel()
                # Their consumers' own closing is bounded by close_timeout.
                _, stuck = await asyncio.wait(pending, timeout=s.transport.close_timeout * 3)
                if stuck:  # pragma: no cover - a closing step lacks its bound
                    log.error("%d role task(s) did not end when cancelled", len(stuck))
        left = sum(role.stats().left for role in self.roles.values())
        if left:
            clean = False
            log.warning(
                "%d record(s) were left uncommitted at shutdown; they will be delivered again",
                left,
            )
        if self.roles:
            await self._housekeeping.farewell(transport)
        self.clean = clean
        self._tasks.clear()
        self.roles.clear()
        if self._gc_held:
            self._gc_held = False
            _gc.release()
        if self._server is not None:
            await self._server.close()
            self._server = None
        if self.telemetry is not None:
            self.telemetry.forget_sources()
        store = self.store
        self.transport = self.store = None
        try:
            if store is not None:
                await store.__aexit__(None, None, None)
        finally:
            await transport.__aexit__(None, None, None)

    async def serve(self) -> None:
        """Run the roles until :meth:`request_stop` (or a role crashes, which re-raises)."""
        await self._stop.wait()
        self.raise_if_failed()

    def request_stop(self) -> None:
        """Make :meth:`serve` return (signal handlers call this)."""
        self._stop.set()

    def raise_if_failed(self) -> None:
        """Raise :meth:`role_failure` if a role of this process crashed."""
        if self.failure is not None:
            raise self.role_failure()

    def role_failure(self) -> HmsBusError:
        """The error that says a role of this process crashed, with it as the cause."""
        error = HmsBusError(
            f"a role of this process stopped unexpectedly ({self.failure!r}); "
            "see the log for the traceback"
        )
        error.__cause__ = self.failure
        return error

    def served_steps(self) -> list[StepDefinition]:
        """The steps this process's worker serves (``worker.steps``, else every step that
        has a handler).

        Raises:
            ConfigError: ``worker.steps`` names a step without a handler here, or (on a
                private ``memory://`` bus, where no other process can run them) a step
                has no handler.
        """
        s = self.settings
        if "worker" not in s.roles:
            return []
        if s.worker.steps is not None:
            chosen = [self.registry.resolve(q) for q in s.worker.steps]
            missing = [d.qualname for d in chosen if d.handler is None]
            if missing:
                raise ConfigError(
                    f"--steps names steps without a handler in this app: {', '.join(missing)}"
                )
            return chosen
        steps = self.registry.all_steps()
        missing = [d.qualname for d in steps if d.handler is None]
        if missing and private(s.bus_url):
            raise ConfigError(
                f"steps without a handler: {', '.join(missing)} (on a private memory:// bus "
                "no other process can run them; register them with @mgmt.on_step)"
            )
        if missing:
            log.warning("no handler in this process for: %s", ", ".join(missing))
        return [d for d in steps if d.handler is not None]

    # -- what the process says of itself ------------------------------------------------

    def lag(self) -> dict[str, dict[str, int]]:
        """Records not yet fetched by each role of this process, per topic."""
        out: dict[str, dict[str, int]] = {}
        for name, role in self.roles.items():
            per_topic: dict[str, int] = {}
            for (topic, _), n in role.lag().items():
                per_topic[topic] = per_topic.get(topic, 0) + n
            out[name] = per_topic
        return out

    def worker_stats(self) -> RoleStats:
        """The stats of this process's worker (empty without one): what heartbeats
        and ``/healthz`` report as the process's steps, in flight and done."""
        worker = self.roles.get("worker")
        return worker.stats() if worker is not None else RoleStats()

    def health(self) -> tuple[bool, dict[str, Any]]:
        """This process's health, as ``/healthz`` reports it: (healthy, details).

        Healthy once every role has joined its group and while none has crashed and the
        process is not stopping.
        """
        running = self.transport is not None and not self._stop.is_set()
        crashed = [t.get_name() for t in self._tasks if t.done() and not t.cancelled()]
        joined = {name: role.is_ready for name, role in self.roles.items()}
        healthy = running and not crashed and all(joined.values())
        details: dict[str, Any] = {
            "status": "ok" if healthy else ("stopping" if self._stop.is_set() else "unhealthy"),
            "service": self.settings.service_name,
            "process_id": self.process_id,
            "roles": {name: ("ready" if ok else "starting") for name, ok in joined.items()},
            "in_flight": self.worker_stats().in_flight,
            "lag": {role: sum(t.values()) for role, t in self.lag().items()},
        }
        down = {name: o for name, o in self.outages.items() if o.attempts}
        if down:
            healthy = False
            details["status"] = "stopping" if self._stop.is_set() else "unhealthy"
            details["outages"] = {
                name: {"for": round(o.lasted, 1), "error": o.error} for name, o in down.items()
            }
        if crashed:
            details["crashed"] = crashed
        if self.failure is not None:
            details["error"] = repr(self.failure)
        return healthy, details

    @property
    def monitor(self) -> Monitor | None:
        """The monitor role of this process, if it runs one."""
        m = self.roles.get("monitor")
        return m if isinstance(m, Monitor) else None

    @property
    def http_port(self) -> int | None:
        """The port ``/healthz`` and ``/metrics`` are served on, while connected."""
        return self._server.port if self._server is not None else None

    # -- the parts ----------------------------------------------------------------------

    def _make_telemetry(self, bus_url: str) -> Telemetry:
        t = self.settings.telemetry
        if self._providers.tracer is None or self._providers.meter is None:
            configure_from_environment(
                self.settings.service_name, prometheus=t.http_port is not None and t.metrics
            )
        return Telemetry(
            service_name=self.settings.service_name,
            system=scheme_of(bus_url),
            tracing=t.tracing,
            metrics=t.metrics,
            tracer_provider=self._providers.tracer,
            meter_provider=self._providers.meter,
        )

    def _make_sealer(self, bus_url: str) -> Sealer:
        s = self.settings
        names = sensitive_names(self.registry.models()) | set(s.pii.fields)
        sealer = Sealer(names, s.pii.key_list())
        if names and sealer.generated and not in_process(bus_url):
            log.warning(
                "sensitive fields (%s) are sealed with a key of this process only: set the "
                "same HMS_PII__KEYS on every process, or workers elsewhere cannot open them",
                ", ".join(sorted(names)),
            )
        return sealer

    def _observe(self, telemetry: Telemetry) -> None:
        if not telemetry.metrics:
            return
        role_attr = Attr.HMS_ROLE

        def in_flight() -> list[tuple[float, dict[str, Any]]]:
            return [(self.worker_stats().in_flight, {})] if "worker" in self.roles else []

        def lag() -> list[tuple[float, dict[str, Any]]]:
            return [
                (n, {role_attr: role, Attr.MESSAGING_DESTINATION_NAME: topic})
                for role, topics in self.lag().items()
                for topic, n in topics.items()
            ]

        telemetry.observe_in_flight(in_flight)
        telemetry.observe_lag(lag)
        monitor = self.monitor
        if monitor is not None:
            telemetry.observe_processes(monitor.process_counts)

    async def _serve_http(self) -> None:
        from ._http import StatusServer

        t = self.settings.telemetry
        if t.http_port is None:  # pragma: no cover - checked by the caller
            return
        reader = prometheus_reader()
        metrics = reader.render if reader is not None and t.metrics else None
        self._server = StatusServer(t.http_host, t.http_port, health=self.health, metrics=metrics)
        await self._server.start()
        log.info(
            "serving /healthz%s on http://%s:%d",
            " and /metrics" if metrics is not None else "",
            t.http_host,
            self._server.port,
        )

    async def _until_ready(self) -> None:
        """Wait until every role consumes (on Kafka, a group join takes a moment), so
        work started right after entering is picked up at once; raise if one crashed."""
        if not self.roles:
            return
        ready: asyncio.Future[Any] = asyncio.ensure_future(
            asyncio.gather(*(r.ready() for r in self.roles.values()))
        )
        stopped: asyncio.Future[Any] = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({ready, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for f in (ready, stopped):
                f.cancel()
            # Collect both, so an interrupted connect leaves no unretrieved exception.
            await asyncio.gather(ready, stopped, return_exceptions=True)
        self.raise_if_failed()

    def _spawn(self, role: Role) -> asyncio.Task[None]:
        task = asyncio.create_task(role.run(), name=f"hms-{role.name}")

        def crashed(t: asyncio.Task[None]) -> None:
            if not t.cancelled() and t.exception() is not None and not self._stop.is_set():
                self.failure = t.exception()
                log.critical("role %s stopped unexpectedly", role.name, exc_info=t.exception())
                if self.on_failure is not None:
                    self.on_failure(self.role_failure())
                self._stop.set()

        task.add_done_callback(crashed)
        return task
