"""``/healthz`` and ``/metrics`` over HTTP: a Starlette app, served by uvicorn on the loop.

Two pieces, so that the product can put more on the same port (the operator's console
mounts on this app):

- :func:`status_app` builds the ASGI application: ``GET /healthz`` and ``GET /metrics``
  (``HEAD`` too) from two callables, plus whatever routes and mounts the caller adds,
  then or later (``app.mount(...)``, ``app.add_route(...)``).
- :class:`StatusServer` serves that app with uvicorn's ``Server`` as a task of the
  running event loop: no thread, no lifespan, uvicorn's logs at warning and no access
  log, and no signal handlers (SIGTERM and SIGINT stay the CLI's, which drains the
  roles on them). It binds its listening sockets itself before uvicorn starts, so a
  port in use is an ``OSError`` from :meth:`~StatusServer.start` (uvicorn would exit the
  process instead) and :attr:`~StatusServer.port` is known at once.

``health`` and ``metrics`` are called on the event loop, because they read the roles'
state; they must be quick. An exception in either is logged (logger ``hms_bus.http``)
and answered with 500. Connections are HTTP/1.1 keep-alive; closing the server drops
idle ones and those still sending their request at once, and gives responses under way
a short grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Any, Self

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from ._prometheus import CONTENT_TYPE

__all__ = ["Health", "Metrics", "StatusServer", "status_app"]

log = logging.getLogger("hms_bus.http")

Health = Callable[[], tuple[bool, dict[str, Any]]]
"""Returns ``(healthy, details)``: ``/healthz`` answers 200 or 503 with ``details`` as JSON."""
Metrics = Callable[[], str]
"""Returns a Prometheus text exposition (:data:`~hms_bus._prometheus.CONTENT_TYPE`)."""

_NO_STORE = {"Cache-Control": "no-store"}


def status_app(
    *,
    health: Health,
    metrics: Metrics | None = None,
    routes: Sequence[BaseRoute] = (),
) -> Starlette:
    """The Starlette application behind :class:`StatusServer`.

    Args:
        health: answers ``/healthz``: 200 when healthy, else 503, with the details as
            JSON either way (values JSON cannot hold are written as their ``str``).
        metrics: answers ``/metrics`` with its text; without it ``/metrics`` is 404.
        routes: more routes or mounts (``starlette.routing.Route``, ``Mount``), served
            after the two above. More can be added to the returned app at any time.

    Every other path is 404; other methods on the two paths are 405.
    """

    async def healthz(request: Request) -> Response:
        try:
            healthy, details = health()
            body = orjson.dumps(details, default=str)
        except Exception:
            return _failed(request)
        return Response(
            body, 200 if healthy else 503, headers=_NO_STORE, media_type="application/json"
        )

    ours = [Route("/healthz", healthz, methods=["GET"])]  # HEAD comes with GET
    if metrics is not None:
        render = metrics

        async def exposition(request: Request) -> Response:
            try:
                text = render()
            except Exception:
                return _failed(request)
            return Response(text, headers=_NO_STORE, media_type=CONTENT_TYPE)

        ours.append(Route("/metrics", exposition, methods=["GET"]))
    return Starlette(routes=[*ours, *routes])


def _failed(request: Request) -> Response:
    log.exception("HTTP %s %s failed", request.method, request.url.path)
    return PlainTextResponse("Internal Server Error", 500, headers=_NO_STORE)


class _Server(uvicorn.Server):
    """uvicorn's server without its signal handlers: they stay the application's."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class StatusServer:
    """Serves :func:`status_app` (``/healthz``, ``/metrics`` and any extra routes) over HTTP.

    Use ``async with``, or :meth:`start` and :meth:`close`, inside the running event loop.
    :attr:`app` is the Starlette application: mount more on it before or after starting.

    Args:
        host: the address to listen on (all of them, when it resolves to several).
        port: the port; 0 picks a free one (see :attr:`port`).
        health: see :func:`status_app`.
        metrics: see :func:`status_app`.
        routes: see :func:`status_app`.
        timeout: seconds an idle keep-alive connection is kept open.
        grace: seconds :meth:`close` waits for responses under way (a stream, say)
            before cancelling them.
        max_connections: connections and requests at once; past that uvicorn answers
            503 at once.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        health: Health,
        metrics: Metrics | None = None,
        routes: Sequence[BaseRoute] = (),
        timeout: int = 5,
        grace: int = 1,
        max_connections: int = 100,
    ) -> None:
        self._host = host
        self._port = port
        self.app = status_app(health=health, metrics=metrics, routes=routes)
        """The ASGI application served."""
        self._config: dict[str, Any] = {
            "timeout_keep_alive": timeout,
            "timeout_graceful_shutdown": grace,
            "limit_concurrency": max_connections,
        }
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._sockets: list[socket.socket] = []

    async def start(self) -> None:
        """Bind and start serving; return once uvicorn accepts connections.

        Raises:
            OSError: the address cannot be bound (a port in use, say).
        """
        if self._task is not None:
            return
        sockets = await _bind(self._host, self._port)
        config = uvicorn.Config(
            self.app,
            host=self._host,
            port=sockets[0].getsockname()[1],  # uvicorn serves the sockets bound above
            log_config=None,  # the application's logging configuration stays as it is
            log_level="warning",
            access_log=False,
            lifespan="off",
            ws="none",
            **self._config,
        )
        server = _Server(config)
        task = asyncio.create_task(_serve(server, sockets), name="hms-http")
        try:
            while not server.started:
                if task.done():
                    task.result()  # raises why it stopped
                    raise RuntimeError("the HTTP server stopped before it started")
                await asyncio.sleep(0.005)
        except BaseException:
            server.should_exit = True
            await asyncio.gather(task, return_exceptions=True)
            for sock in sockets:
                sock.close()
            raise
        self._server, self._task, self._sockets = server, task, sockets

    @property
    def port(self) -> int:
        """The bound port (of the first socket, if ``host`` resolved to several)."""
        if not self._sockets:
            raise RuntimeError("StatusServer is not started")
        port: int = self._sockets[0].getsockname()[1]
        return port

    async def close(self) -> None:
        """Stop accepting, drop idle connections, and return once the server is down.

        Responses under way get ``grace`` seconds. A second call does nothing.
        """
        server, task = self._server, self._task
        self._server, self._task, self._sockets = None, None, []
        if server is None or task is None:
            return
        server.should_exit = True
        try:
            await task
        except Exception:
            log.exception("the HTTP server failed")

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


async def _serve(server: uvicorn.Server, sockets: list[socket.socket]) -> None:
    try:
        await server.serve(sockets=sockets)
    except SystemExit as exc:  # uvicorn's way out when it cannot start: not the process's
        raise RuntimeError(f"the HTTP server could not start (uvicorn exit {exc.code})") from None


async def _bind(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for every address ``host`` resolves to, on one port.

    As asyncio's ``create_server`` binds them (address reuse on POSIX, IPv6 sockets
    IPv6-only), except that with port 0 every socket gets the port the first one got.
    """
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    sockets: list[socket.socket] = []
    try:
        for family, type_, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, type_, proto)
            sockets.append(sock)
            if os.name == "posix":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if len(sockets) > 1 and port == 0:
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            sock.bind(address)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets
