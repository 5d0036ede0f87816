"""The reference HMS-SVC and HMS-ACH on a loopback port, for tests.

::

    from reference_server import reference_server

    async def test_something() -> None:
        async with reference_server(settle_after=0.0) as (url, services):
            gateway = HttpPaymentGateway(url)          # HMS_SVC_URL / HMS_ACH_URL = url
            services.fail("/ach/v1/transfers", status=503, times=2)
            ...
            assert services.calls["/ach/v1/transfers"] == 3

uvicorn serves :func:`step_handlers.reference_services.create_app` as a task of the
running event loop, on a free port of 127.0.0.1, and stops when the block exits
(awaiting the task, so no socket or task outlives the test). Its logs are quiet
(``log_level="warning"``) unless asked otherwise; the levels it sets on its loggers
are put back afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator

import uvicorn

from step_handlers.reference_services import ReferenceServices, create_app

__all__ = ["reference_server"]

_UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")


class _Server(uvicorn.Server):
    """uvicorn's server without its signal handlers: Ctrl-C stays pytest's."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def reference_server(
    *,
    settle_after: float = 0.0,
    clock: Callable[[], float] = time.time,
    log_level: str = "warning",
    startup_timeout: float = 10.0,
) -> AsyncIterator[tuple[str, ReferenceServices]]:
    """Serve fresh reference services on 127.0.0.1; yield ``(base_url, services)``.

    Args:
        settle_after: seconds after initiation from which a status check settles a
            transfer (see :func:`~step_handlers.reference_services.create_app`).
        clock: the services' time, in seconds since the epoch.
        log_level: uvicorn's log level (``"info"`` for the access log).
        startup_timeout: seconds to wait for the server to listen.
    """
    services = create_app(settle_after=settle_after, clock=clock)
    levels = {name: logging.getLogger(name).level for name in _UVICORN_LOGGERS}
    config = uvicorn.Config(
        services,
        host="127.0.0.1",
        port=0,
        log_config=None,
        log_level=log_level,
        lifespan="on",
        ws="none",
        timeout_graceful_shutdown=2,
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve(), name="reference-services")
    try:
        deadline = time.monotonic() + startup_timeout
        while not server.started:
            if task.done():
                task.result()  # raises why it stopped
                raise RuntimeError("the reference services stopped before they started")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the reference services did not start in {startup_timeout}s")
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}", services
    finally:
        server.should_exit = True
        try:
            await task
        finally:
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)
