"""A node's housekeeping: its heartbeats, and its probe of the bus and the store.

A node that runs roles sends a :class:`~hms_bus._process_messages.Heartbeat` every
``monitor.heartbeat_interval`` (the monitor reports a process down when they stop, and a
last one with ``stopping`` when it closes), and pings its bus and its store, so an
outage is seen, logged once and shown by ``/healthz`` even while no role has work to
fail on, and the roles' retrying loops wake as soon as it ends. Neither task holds work:
a closing node cancels them first (:data:`HOUSEKEEPING_TASKS`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from typing import TYPE_CHECKING

from ._codec import encode
from ._outage import RECOVERY_PROBE, Outage
from ._process_messages import Heartbeat
from .transport import Outgoing, Transport

if TYPE_CHECKING:
    from ._node import Node

__all__ = ["HOUSEKEEPING_TASKS", "Housekeeping", "PROBE_INTERVAL"]

log = logging.getLogger("hms_bus")

HOUSEKEEPING_TASKS = frozenset({"hms-heartbeat", "hms-probe"})
"""The names of the housekeeping tasks (they hold no work)."""

PROBE_INTERVAL = 5.0
"""Seconds between a node's pings of its bus and store (``monitor.heartbeat_interval``
when that is set, but at least 1 s)."""


class Housekeeping:
    """The heartbeats and the probe of one node (see module docs).

    Args:
        node: the node whose bus, store, outages and stats they use.
        stop: set when the node stops; both loops end then.
    """

    def __init__(self, node: Node, stop: asyncio.Event) -> None:
        self._node = node
        self._stop = stop

    def start(self) -> list[asyncio.Task[None]]:
        """Start the heartbeats (unless ``monitor.heartbeat_interval`` is 0) and the probe."""
        tasks = []
        if self._node.settings.monitor.heartbeat_interval > 0:
            tasks.append(asyncio.create_task(self._heartbeats(), name="hms-heartbeat"))
        tasks.append(asyncio.create_task(self._probe(), name="hms-probe"))
        return tasks

    async def farewell(self, transport: Transport) -> None:
        """Send the last heartbeat (``stopping``), unless heartbeats are off or the bus is
        down; bounded by ``transport.close_timeout``, and never raises."""
        node = self._node
        s = node.settings
        if s.monitor.heartbeat_interval <= 0 or node.outages["bus"].attempts:
            return
        with contextlib.suppress(Exception):
            async with asyncio.timeout(s.transport.close_timeout):
                await transport.publish([self._heartbeat(stopping=True)])

    def _heartbeat(self, *, stopping: bool = False) -> Outgoing:
        """This process's heartbeat record, as of now."""
        node = self._node
        stats = node.worker_stats()
        hb = Heartbeat(
            process_id=node.process_id,
            service=node.settings.service_name,
            roles=list(node.roles),
            host=socket.gethostname(),
            pid=os.getpid(),
            steps=list(stats.steps),
            in_flight=stats.in_flight,
            steps_done=stats.done,
            lag={role: sum(t.values()) for role, t in node.lag().items()},
            interval=node.settings.monitor.heartbeat_interval,
            stopping=stopping,
        )
        return Outgoing(node.topics.heartbeats, encode(hb), key=node.process_id.encode())

    async def _heartbeats(self) -> None:
        interval = self._node.settings.monitor.heartbeat_interval
        outage = Outage("heartbeat", log)
        while not self._stop.is_set():
            transport = self._node.transport
            if transport is None:
                return
            try:
                await transport.publish([self._heartbeat()])
            except Exception as exc:
                outage.failed(exc)
            else:
                outage.ok()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), interval)

    async def _probe(self) -> None:
        """Ping the bus and the store every interval, so an outage is seen (and logged
        once, and shown by ``/healthz``) even while no role has work to fail on.

        While a role's loop is failing, or a ping is, the pings come every
        :data:`~hms_bus._outage.RECOVERY_PROBE` seconds instead, and the first round in
        which a failed ping answers again wakes the loops backing off
        (:class:`~hms_bus._outage.Recovery`): they resume within about a second of the
        backend's return, however long their backoff had grown.
        """
        node = self._node
        # Not faster than once a second: a probe is a round trip to each backend.
        interval = max(1.0, node.settings.monitor.heartbeat_interval or PROBE_INTERVAL)
        recovery = node.recovery
        while not self._stop.is_set():
            transport, store = node.transport, node.store
            if transport is None or store is None:
                return
            names, pings = ("bus", "store"), (transport.ping(), store.ping())
            was_down = any(node.outages[name].attempts for name in names)
            answers = await asyncio.gather(*pings, return_exceptions=True)
            for name, answer in zip(names, answers, strict=True):
                if isinstance(answer, BaseException):
                    if not isinstance(answer, Exception):
                        raise answer
                    node.outages[name].failed(answer)
                else:
                    node.outages[name].ok()
            down = any(node.outages[name].attempts for name in names)
            if not down:
                if was_down:
                    recovery.recovered()
                recovery.failing.clear()
            fast = down or recovery.failing.is_set()
            await self._pause(RECOVERY_PROBE if fast else interval)

    async def _pause(self, seconds: float) -> None:
        """Wait ``seconds``, or until stopping, or until a loop starts failing (then
        only :data:`~hms_bus._outage.RECOVERY_PROBE`): the next ping should see it."""
        recovery = self._node.recovery
        failing = None if recovery.failing.is_set() else recovery.failing
        waits = [asyncio.ensure_future(self._stop.wait())]
        if failing is not None:
            waits.append(asyncio.ensure_future(failing.wait()))
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await w
        if failing is not None and failing.is_set() and not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), RECOVERY_PROBE)
