"""A tiny HTTP/1.1 server for ``/healthz`` and ``/metrics``, on the application's event loop.

It answers one request per connection (``Connection: close``), ``GET`` and ``HEAD``
only, and nothing but the two paths; a query string is ignored, and so is a request
body. It is meant for probes and scrapers on a private port, not for the internet, but
a misbehaving client costs it little: the request head is capped at :data:`MAX_HEAD`
bytes, a client is dropped after ``timeout`` seconds, and an exception in ``health`` or
``metrics`` is logged (logger ``hms_bus.http``) and answered with 500.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

import orjson

from ._prometheus import CONTENT_TYPE

__all__ = ["MAX_HEAD", "StatusServer"]

log = logging.getLogger("hms_bus.http")

MAX_HEAD = 8192
"""Most bytes of request line and headers accepted; more is answered with 431."""

_MAX_BODY = 65536  # a larger request body is left unread
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_REQUEST_LINE = re.compile(r"([!#$%&'*+.^_`|~0-9A-Za-z-]+) (\S+) HTTP/1\.[0-9]")

_Response = tuple[int, str, bytes]  # status, content type, body


class _BadRequest(Exception):
    """The request cannot be answered but with ``status``."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def _text(status: int) -> _Response:
    return status, "text/plain; charset=utf-8", f"{_REASONS[status].lower()}\n".encode()


class StatusServer:
    """Serves ``GET /healthz`` and ``GET /metrics`` over HTTP/1.1.

    ``health`` returns ``(healthy, details)``: ``/healthz`` answers 200 or 503 with
    ``details`` as JSON. ``metrics`` returns a Prometheus text exposition (see
    :class:`~hms_bus._prometheus.PrometheusReader`); without it ``/metrics`` is 404.
    Both are called on the event loop and must be quick. Use ``async with``, or
    :meth:`start` and :meth:`close`.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        health: Callable[[], tuple[bool, dict[str, Any]]],
        metrics: Callable[[], str] | None = None,
        timeout: float = 5.0,
    ) -> None:
        self._host = host
        self._port = port
        self._health = health
        self._metrics = metrics
        self._timeout = timeout
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        """Bind and start accepting connections (port 0 picks a free port)."""
        if self._server is None:
            self._server = await asyncio.start_server(
                self._serve, self._host, self._port, limit=MAX_HEAD
            )

    @property
    def port(self) -> int:
        """The bound port (of the first socket, if ``host`` resolved to several)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("StatusServer is not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def close(self) -> None:
        """Stop accepting, drop the connections still open, and wait until they are gone."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        while self._connections:  # a connection accepted just before may start meanwhile
            for task in self._connections:
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)
        await server.wait_closed()

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

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            async with asyncio.timeout(self._timeout):
                response = await self._answer(reader)
                if response:
                    writer.write(response)
                    await writer.drain()
                writer.close()
                await writer.wait_closed()
        except (TimeoutError, ConnectionError) as exc:
            log.debug("dropped an HTTP client: %r", exc)
        except asyncio.CancelledError:
            pass  # by close(); Python 3.11's start_server would log a cancelled task
        except Exception:
            log.exception("HTTP connection failed")
        finally:
            writer.transport.abort()  # nothing left to do if it closed cleanly
            self._connections.discard(task)

    async def _answer(self, reader: asyncio.StreamReader) -> bytes:
        """The response to the request on ``reader``; empty if there is none to answer."""
        try:
            head = await _read_head(reader)
            if not head:
                return b""
            method, path, headers = _parse(head.decode("latin-1"))
        except _BadRequest as bad:
            return _encode(*_text(bad.status), head=False)
        length = headers.get("content-length", "0")
        if not (length.isascii() and length.isdigit()):
            return _encode(*_text(400), head=False)
        if int(length) <= _MAX_BODY:  # read it, so that closing with it unread does not reset
            try:
                await reader.readexactly(int(length))
            except asyncio.IncompleteReadError:
                return b""  # the client gave up
        if method not in ("GET", "HEAD"):
            return _encode(*_text(405), head=False, allow=True)
        return _encode(*self._respond(path), head=method == "HEAD")

    def _respond(self, path: str) -> _Response:
        try:
            if path == "/healthz":
                healthy, details = self._health()
                return (
                    200 if healthy else 503,
                    "application/json",
                    orjson.dumps(details, default=str),
                )
            if path == "/metrics" and self._metrics is not None:
                return 200, CONTENT_TYPE, self._metrics().encode()
            return _text(404)
        except Exception:
            log.exception("HTTP GET %s failed", path)
            return _text(500)


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    """Request line and headers, through the empty line; empty if the client sent nothing."""
    head = b""
    while True:
        try:
            line = await reader.readline()
        except ValueError:  # a line longer than the reader's limit
            raise _BadRequest(431) from None
        if not line.endswith(b"\n"):  # the client closed its side
            if head or line:
                raise _BadRequest(400)
            return b""
        if line in (b"\r\n", b"\n"):
            if head:
                return head
            continue  # RFC 9112: empty lines before the request line are skipped
        head += line
        if len(head) > MAX_HEAD:
            raise _BadRequest(431)


def _parse(head: str) -> tuple[str, str, dict[str, str]]:
    """Method, path and headers (names in lower case) of a request head."""
    request_line, *lines = head.strip("\r\n").split("\n")
    match = _REQUEST_LINE.fullmatch(request_line.rstrip("\r"))
    if match is None:
        raise _BadRequest(400)
    headers: dict[str, str] = {}
    for line in lines:
        name, colon, value = line.rstrip("\r").partition(":")
        if not colon or not name or name != name.strip():  # also rejects obsolete folding
            raise _BadRequest(400)
        headers[name.lower()] = value.strip()
    return match[1], urlsplit(match[2]).path, headers


def _encode(
    status: int, content_type: str, body: bytes, *, head: bool, allow: bool = False
) -> bytes:
    """A whole response; with ``head`` its headers only."""
    lines = [
        f"HTTP/1.1 {status} {_REASONS[status]}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        *(["Allow: GET, HEAD"] if allow else []),
        "Connection: close",
        "Cache-Control: no-store",
    ]
    return "\r\n".join([*lines, "", ""]).encode("latin-1") + (b"" if head else body)
