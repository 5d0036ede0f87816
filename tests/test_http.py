"""The health and metrics HTTP server (hms_bus._http), over real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route

from hms_bus._http import StatusServer, status_app
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
    async with StatusServer("127.0.0.1", 0, health=probe.health, metrics=probe.metrics) as server:
        yield server


@pytest.fixture
async def client(server: StatusServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
        yield client


async def test_healthz_is_200_with_json_when_healthy(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    assert orjson.loads(response.content) == {"status": "ok", "lag": 3}


async def test_healthz_is_503_with_the_same_json_when_not(
    client: httpx.AsyncClient, probe: Probe
) -> None:
    probe.healthy = False
    response = await client.get("/healthz")
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/json"
    assert orjson.loads(response.content) == {"status": "stalled", "lag": 3}


async def test_a_query_string_is_ignored_and_urllib_understands_the_answer(
    server: StatusServer,
) -> None:
    def fetch() -> tuple[int, str, bytes]:
        url = f"http://127.0.0.1:{server.port}/healthz?verbose=1"
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read()

    assert await asyncio.to_thread(fetch) == (200, "application/json", b'{"status":"ok","lag":3}')


async def test_metrics_serves_the_exposition(client: httpx.AsyncClient) -> None:
    response = await client.get("/metrics")
    assert (response.status_code, response.headers["content-type"], response.content) == (
        200,
        CONTENT_TYPE,
        b"# TYPE up gauge\nup 1\n",
    )
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"


async def test_metrics_of_a_real_meter_provider() -> None:
    reader = PrometheusReader()
    provider = MeterProvider(
        metric_readers=[reader], resource=Resource.get_empty(), shutdown_on_exit=False
    )
    try:
        provider.get_meter("hms_bus").create_counter("hms.steps").add(2, {"step": "a"})
        async with (
            StatusServer("127.0.0.1", 0, health=lambda: (True, {}), metrics=reader.render) as s,
            httpx.AsyncClient() as client,
        ):
            response = await client.get(f"http://127.0.0.1:{s.port}/metrics")
    finally:
        provider.shutdown()
    assert response.status_code == 200
    assert "# TYPE hms_steps_total counter\n" in response.text
    assert 'hms_steps_total{otel_scope_name="hms_bus",' in response.text
    assert 'step="a"} 2.0\n' in response.text


async def test_without_metrics_it_is_404() -> None:
    async with (
        StatusServer("127.0.0.1", 0, health=lambda: (True, {})) as server,
        httpx.AsyncClient() as client,
    ):
        response = await client.get(f"http://127.0.0.1:{server.port}/metrics")
    assert response.status_code == 404


async def test_head_has_the_headers_of_get_and_no_body(client: httpx.AsyncClient) -> None:
    for path in ("/healthz", "/metrics"):
        get, head = await client.get(path), await client.head(path)
        assert (head.status_code, head.content) == (200, b"")
        assert head.headers["content-type"] == get.headers["content-type"]
        assert head.headers["content-length"] == str(len(get.content))


async def test_other_methods_are_405(client: httpx.AsyncClient) -> None:
    response = await client.post("/healthz", content=b"hello")
    assert response.status_code == 405
    assert set(response.headers["allow"].split(", ")) == {"GET", "HEAD"}
    assert (await client.get("/healthz")).status_code == 200


@pytest.mark.parametrize("path", ["/", "/healthz/x", "/health", "/metrics.txt"])
async def test_unknown_paths_are_404(client: httpx.AsyncClient, path: str) -> None:
    assert (await client.get(path)).status_code == 404


async def test_an_exception_in_health_or_metrics_is_500_and_logged(
    client: httpx.AsyncClient, probe: Probe, caplog: pytest.LogCaptureFixture
) -> None:
    probe.fail = RuntimeError("store is gone")
    with caplog.at_level(logging.ERROR, logger="hms_bus.http"):
        assert (await client.get("/healthz")).status_code == 500
        assert (await client.get("/metrics")).status_code == 500
    errors = [r for r in caplog.records if r.name == "hms_bus.http"]
    assert [r.getMessage() for r in errors] == [
        "HTTP GET /healthz failed",
        "HTTP GET /metrics failed",
    ]
    assert all(r.exc_info and r.exc_info[1] is probe.fail for r in errors)
    probe.fail = None
    assert (await client.get("/healthz")).status_code == 200


async def test_an_unserializable_health_is_500(caplog: pytest.LogCaptureFixture) -> None:
    async with (
        StatusServer("127.0.0.1", 0, health=lambda: (True, {1j: "x"})) as server,  # type: ignore[dict-item]
        httpx.AsyncClient() as client,
    ):
        with caplog.at_level(logging.ERROR, logger="hms_bus.http"):
            response = await client.get(f"http://127.0.0.1:{server.port}/healthz")
    assert response.status_code == 500


async def test_several_clients_at_once(server: StatusServer, probe: Probe) -> None:
    idle = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(5)]
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
            results = await asyncio.gather(*(client.get("/healthz") for _ in range(20)))
    finally:
        for _, writer in idle:
            writer.close()
            await writer.wait_closed()
    assert [r.status_code for r in results] == [200] * 20
    assert probe.calls == 20


async def test_close_drops_connected_clients_at_once(probe: Probe) -> None:
    server = StatusServer("127.0.0.1", 0, health=probe.health, timeout=30)
    await server.start()
    port = server.port
    # One client in the middle of its request, one idle on a kept-alive connection.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    kept = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}")
    try:
        assert (await kept.get("/healthz")).headers.get("connection") != "close"
        writer.write(b"GET /healthz HTTP/1.1\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)  # the server is now reading the headers
        started = time.monotonic()
        await server.close()
        assert time.monotonic() - started < 1
        with contextlib.suppress(ConnectionError):
            assert await asyncio.wait_for(reader.read(), 1) == b""
    finally:
        await kept.aclose()
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


async def test_a_port_in_use_is_an_oserror_from_start(server: StatusServer, probe: Probe) -> None:
    other = StatusServer("127.0.0.1", server.port, health=probe.health)
    with pytest.raises(OSError):
        await other.start()
    with pytest.raises(RuntimeError, match="not started"):
        _ = other.port
    await other.close()


async def test_the_cli_keeps_its_signal_handlers(probe: Probe) -> None:
    """uvicorn must not take SIGTERM or SIGINT over: the CLI drains the roles on them."""
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    async with StatusServer("127.0.0.1", 0, health=probe.health) as server:
        assert server.port > 0
        assert {sig: signal.getsignal(sig) for sig in before} == before
    assert {sig: signal.getsignal(sig) for sig in before} == before


async def test_more_routes_and_mounts_are_served_beside_health_and_metrics(
    probe: Probe,
) -> None:
    async def hello(request: Request) -> Response:
        return PlainTextResponse(f"hello {request.path_params['name']}")

    console = status_app(health=lambda: (False, {"console": True}))
    server = StatusServer(
        "127.0.0.1",
        0,
        health=probe.health,
        routes=[Route("/hello/{name}", hello), Mount("/console", console)],
    )
    async with server, httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
        assert (await client.get("/hello/ada")).text == "hello ada"
        nested = await client.get("/console/healthz")
        assert (nested.status_code, nested.json()) == (503, {"console": True})
        assert (await client.get("/healthz")).status_code == 200
        server.app.add_route("/later", hello_later)  # added while serving
        assert (await client.get("/later")).text == "later"


async def hello_later(request: Request) -> Response:
    return PlainTextResponse("later")
