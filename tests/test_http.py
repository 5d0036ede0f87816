"""The health and metrics HTTP server (hms_bus._http), over real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource

from hms_bus._http import MAX_HEAD, StatusServer
from hms_bus._prometheus import CONTENT_TYPE, PrometheusReader


class Probe:
    """What the server under test reports; tests change it."""

    def __init__(self) -> None:
        self.healthy = True
        self.fail: Exception | None = None
        self.calls = 0

    def health(self) -> tuple[bool, dict[str, Any]]:
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        return self.healthy, {"status": "ok" if self.healthy else "stalled", "lag": 3}

    def metrics(self) -> str:
        if self.fail is not None:
            raise self.fail
        return "# TYPE up gauge\nup 1\n"


@pytest.fixture
def probe() -> Probe:
    return Probe()


@pytest.fixture
async def server(probe: Probe) -> AsyncIterator[StatusServer]:
    async with StatusServer(
        "127.0.0.1", 0, health=probe.health, metrics=probe.metrics, timeout=0.5
    ) as server:
        yield server


async def exchange(port: int, raw: bytes) -> bytes:
    """Send ``raw`` and read until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        return await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def request(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (names in lower case) and body of the response to ``raw``."""
    head, _, body = (await exchange(port, raw)).partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    assert status_line.startswith("HTTP/1.1 ")
    headers = dict(line.split(": ", 1) for line in lines)
    headers = {name.lower(): value for name, value in headers.items()}
    assert headers["connection"] == "close"
    assert int(headers["content-length"]) == len(body) or not body
    return int(status_line.split()[1]), headers, body


def get(path: str, method: str = "GET", extra: str = "") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: test\r\n{extra}\r\n".encode()


async def test_healthz_is_200_with_json_when_healthy(server: StatusServer) -> None:
    status, headers, body = await request(server.port, get("/healthz"))
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert orjson.loads(body) == {"status": "ok", "lag": 3}


async def test_healthz_is_503_with_the_same_json_when_not(
    server: StatusServer, probe: Probe
) -> None:
    probe.healthy = False
    status, headers, body = await request(server.port, get("/healthz"))
    assert status == 503
    assert headers["content-type"] == "application/json"
    assert orjson.loads(body) == {"status": "stalled", "lag": 3}


async def test_a_query_string_is_ignored_and_urllib_understands_the_answer(
    server: StatusServer,
) -> None:
    def fetch() -> tuple[int, str, bytes]:
        url = f"http://127.0.0.1:{server.port}/healthz?verbose=1"
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read()

    assert await asyncio.to_thread(fetch) == (200, "application/json", b'{"status":"ok","lag":3}')


async def test_metrics_serves_the_exposition(server: StatusServer) -> None:
    status, headers, body = await request(server.port, get("/metrics"))
    assert (status, headers["content-type"], body) == (
        200,
        CONTENT_TYPE,
        b"# TYPE up gauge\nup 1\n",
    )


async def test_metrics_of_a_real_meter_provider() -> None:
    reader = PrometheusReader()
    provider = MeterProvider(
        metric_readers=[reader], resource=Resource.get_empty(), shutdown_on_exit=False
    )
    try:
        provider.get_meter("hms_bus").create_counter("hms.steps").add(2, {"step": "a"})
        async with StatusServer(
            "127.0.0.1", 0, health=lambda: (True, {}), metrics=reader.render
        ) as server:
            status, _, body = await request(server.port, get("/metrics"))
    finally:
        provider.shutdown()
    assert status == 200
    assert body == (
        b'# TYPE hms_steps_total counter\nhms_steps_total{step="a",otel_scope_name="hms_bus"} 2\n'
    )


async def test_without_metrics_it_is_404() -> None:
    async with StatusServer("127.0.0.1", 0, health=lambda: (True, {})) as server:
        status, _, _ = await request(server.port, get("/metrics"))
    assert status == 404


async def test_head_has_the_headers_of_get_and_no_body(server: StatusServer) -> None:
    status, headers, body = await request(server.port, get("/healthz", "HEAD"))
    assert (status, headers["content-type"], body) == (200, "application/json", b"")
    assert headers["content-length"] == str(len(b'{"status":"ok","lag":3}'))


async def test_other_methods_are_405_and_a_body_is_ignored(server: StatusServer) -> None:
    raw = get("/healthz", "POST", "Content-Length: 5\r\n") + b"hello"
    status, headers, _ = await request(server.port, raw)
    assert (status, headers["allow"]) == (405, "GET, HEAD")
    status, _, _ = await request(
        server.port, get("/healthz", "GET", "Content-Length: 3\r\n") + b"abc"
    )
    assert status == 200


@pytest.mark.parametrize("path", ["/", "/healthz/", "/health", "/metrics.txt", "*"])
async def test_unknown_paths_are_404(server: StatusServer, path: str) -> None:
    status, _, body = await request(server.port, get(path))
    assert (status, body) == (404, b"not found\n")


async def test_other_spellings_of_a_request_are_understood(server: StatusServer) -> None:
    for raw in (
        b"GET /healthz HTTP/1.0\r\n\r\n",
        b"GET /healthz HTTP/1.1\nHost: test\n\n",  # bare LF
        b"\r\nGET http://test/healthz HTTP/1.1\r\nHost: test\r\n\r\n",  # absolute form
    ):
        status, _, _ = await request(server.port, raw)
        assert status == 200, raw


@pytest.mark.parametrize(
    "raw",
    [
        b"garbage\r\n\r\n",
        b"GET /healthz\r\n\r\n",
        b"GET /healthz HTTP/2.0\r\n\r\n",
        b"GET  /healthz HTTP/1.1\r\n\r\n",
        b"G(T /healthz HTTP/1.1\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nno colon\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost : test\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: test\r\n folded\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nContent-Length: \xb2\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",  # TLS hello, more or less
        b"GET /healthz HTTP/1.1\r\n",  # then closes its side
    ],
)
async def test_malformed_requests_are_400(server: StatusServer, raw: bytes) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(raw)
        writer.write_eof()
        response = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    assert response.startswith(b"HTTP/1.1 400 Bad Request\r\n"), response


async def test_a_request_head_over_the_limit_is_431(server: StatusServer) -> None:
    long_line = get("/healthz?" + "x" * MAX_HEAD)
    many_headers = get("/healthz", extra="".join(f"X-{n}: {'y' * 60}\r\n" for n in range(200)))
    for raw in (long_line, many_headers):
        status, _, _ = await request(server.port, raw)
        assert status == 431


async def test_a_client_that_sends_nothing_is_dropped_after_the_timeout(
    server: StatusServer,
) -> None:
    started = time.monotonic()
    assert await exchange(server.port, b"") == b""
    assert await exchange(server.port, b"GET /healthz HTTP/1.1\r\n") == b""  # never finishes
    assert 0.9 < time.monotonic() - started < 5
    status, _, _ = await request(server.port, get("/healthz"))
    assert status == 200


async def test_a_client_that_leaves_early_costs_nothing(server: StatusServer) -> None:
    for raw in (b"", b"GET /hea", get("/healthz", "POST", "Content-Length: 100\r\n") + b"abc"):
        _, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(raw)
        writer.close()
        await writer.wait_closed()
    status, _, _ = await request(server.port, get("/healthz"))
    assert status == 200


async def test_an_exception_in_health_or_metrics_is_500_and_logged(
    server: StatusServer, probe: Probe, caplog: pytest.LogCaptureFixture
) -> None:
    probe.fail = RuntimeError("store is gone")
    with caplog.at_level(logging.ERROR, logger="hms_bus.http"):
        assert (await request(server.port, get("/healthz")))[0] == 500
        assert (await request(server.port, get("/metrics")))[0] == 500
    errors = [r for r in caplog.records if r.name == "hms_bus.http"]
    assert [r.getMessage() for r in errors] == [
        "HTTP GET /healthz failed",
        "HTTP GET /metrics failed",
    ]
    assert all(r.exc_info and r.exc_info[1] is probe.fail for r in errors)
    probe.fail = None
    assert (await request(server.port, get("/healthz")))[0] == 200


async def test_an_unserializable_health_is_500(probe: Probe) -> None:
    async with StatusServer("127.0.0.1", 0, health=lambda: (True, {1j: "x"})) as server:
        assert (await request(server.port, get("/healthz")))[0] == 500


async def test_several_clients_at_once(server: StatusServer, probe: Probe) -> None:
    idle = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(5)]
    try:
        results = await asyncio.gather(*(request(server.port, get("/healthz")) for _ in range(20)))
    finally:
        for _, writer in idle:
            writer.close()
            await writer.wait_closed()
    assert [status for status, _, _ in results] == [200] * 20
    assert probe.calls == 20


async def test_close_drops_connected_clients_without_waiting_for_the_timeout(probe: Probe) -> None:
    server = StatusServer("127.0.0.1", 0, health=probe.health, timeout=30)
    await server.start()
    port = server.port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)  # the server is now reading the headers
        started = time.monotonic()
        await server.close()
        assert time.monotonic() - started < 1
        with contextlib.suppress(ConnectionError):
            assert await reader.read() == b""
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)
    await server.close()  # a second close does nothing


async def test_port_before_start_is_an_error(probe: Probe) -> None:
    server = StatusServer("127.0.0.1", 0, health=probe.health)
    with pytest.raises(RuntimeError, match="not started"):
        _ = server.port
    await server.close()
