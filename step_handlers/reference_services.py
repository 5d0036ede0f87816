"""Reference HMS-SVC and HMS-ACH: one small ASGI app, state in memory.

Stands in for the real validation and payments services in development, end-to-end
tests and demos::

    python -m step_handlers.reference_services [--host 127.0.0.1] [--port 8088]
        [--settle-after SECONDS]

(needs uvicorn: ``pip install 'hms-bus[services]'``). Point the workflow at it with
``HMS_SVC_URL=http://127.0.0.1:8088 HMS_ACH_URL=http://127.0.0.1:8088``.

Endpoints (JSON bodies, camelCase fields):

- ``POST /svc/v1/applicants/validate`` (HMS-SVC), body ``{"applicationId", "applicant":
  {"name", "taxId", "email"}, "accountOnFile"}`` (``accountOnFile`` when the payment
  goes to one): 200 ``{"valid": bool, "reasons": [...]}``.
- ``POST /ach/v1/transfers`` (HMS-ACH), body a payment instruction plus
  ``applicationId``, header ``Idempotency-Key`` (required): 201 and the transfer
  (``paymentId``, ``status``, ``amount``, ``currency``, ``reason``, ``updatedAt``), or
  200 and the same transfer for a key already used; 422 for a key already used with
  a different request.
- ``GET /ach/v1/transfers/{paymentId}``: 200 and the transfer's status now; 404 for an
  unknown id.
- ``GET /healthz``: 200 ``{"status": "ok"}``.

Malformed JSON or a body that does not fit its model is 400 ``{"error": ...}`` (the
error names the fields, never their values), an unknown path 404, a wrong method 405.

The business rules (in :mod:`step_handlers.reference_rules`, shared with the
simulations of :mod:`step_handlers.services`):

- HMS-SVC finds an applicant invalid when the name is missing or blank, when the tax
  id is missing (unless the request names an ``accountOnFile``) or not ``NN-NNNNNNN``
  (nine digits with the dash), or when it starts with ``00-`` (the deny list).
- HMS-ACH pays a ``bankAccount`` given as routing and account number, or as an account
  on file, ``{"accountOnFile": "12345"}`` (or the string alone), which it maps to the
  account it holds under that reference (``reference_rules.ACCOUNTS_ON_FILE``). It
  rejects a transfer at once (status ``rejected``, with a reason) when the reference is
  not on file (``unknown account on file``), when the routing number fails the ABA
  checksum, when the account number is not 4 to 17 digits, or when it ends in ``0000``
  (``account closed``). Otherwise the transfer is ``pending``, and a status check
  ``settle_after`` seconds or more after initiation (0: the first check) settles it,
  except for an account number ending in ``9999``, which is ``returned`` (``R03 no
  account``).

For tests, :meth:`ReferenceServices.fail` injects faults (error statuses, slow answers)
and :attr:`ReferenceServices.calls` counts requests per path. Nothing here logs a tax
id or an account number; paths carry none, so the access log is safe.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from schemas.payment import PaymentResult

from .reference_rules import (
    HEALTH_PATH,
    TRANSFERS_PATH,
    VALIDATE_PATH,
    RequestRefused,
    Transfer,
    TransferBook,
    check_applicant,
)

__all__ = ["Fault", "ReferenceServices", "create_app", "main"]

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MAX_BODY = 64 * 1024
_P = ParamSpec("_P")
_R = TypeVar("_R")


@dataclass
class Fault:
    """An injected fault: how the next ``times`` matching requests are answered.

    Attributes:
        path_prefix: requests whose path starts with this match.
        status: the status answered (when ``delay`` is 0).
        times: how many more requests it applies to; None for every one.
        delay: when more than 0, handle the request normally but hold the answer back
            this long (the client times out; the work is done all the same).
        retry_after: the ``Retry-After`` header (seconds) of the error answer.
        method: only requests with this method match; None for any.
    """

    path_prefix: str
    status: int = 503
    times: int | None = 1
    delay: float = 0.0
    retry_after: int | None = None
    method: str | None = None


class _Answer(Exception):
    """Answer the request now with ``status`` and ``body``."""

    def __init__(self, status: int, body: Any, headers: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = headers


def _error(status: int, message: str) -> _Answer:
    return _Answer(status, {"error": message})


def _injected(fault: Fault) -> _Answer:
    headers = [] if fault.retry_after is None else [("retry-after", str(fault.retry_after))]
    return _Answer(fault.status, {"error": f"injected fault: HTTP {fault.status}"}, headers)


class ReferenceServices:
    """The reference HMS-SVC and HMS-ACH as one ASGI application (see module docs).

    Args:
        settle_after: seconds after initiation from which a status check settles a
            pending transfer (0: the first check does).
        clock: the time, in seconds since the epoch.

    Attributes:
        calls: requests received so far, by path (faulted ones included).
        book: HMS-ACH's transfers (``book.transfers``, by payment id).
        faults: the injected faults still in force, first match first.
    """

    def __init__(self, *, settle_after: float = 0.0, clock: Callable[[], float] = time.time):
        self.book = TransferBook(settle_after=settle_after, clock=clock)
        self.calls: Counter[str] = Counter()
        self.faults: list[Fault] = []

    @property
    def transfers(self) -> dict[str, Transfer]:
        """Every transfer initiated, by payment id."""
        return self.book.transfers

    def fail(
        self,
        path_prefix: str,
        status: int = 503,
        times: int | None = 1,
        delay: float = 0.0,
        retry_after: int | None = None,
        *,
        method: str | None = None,
    ) -> Fault:
        """Make the next ``times`` requests whose path starts with ``path_prefix`` answer
        ``status`` (with ``Retry-After: retry_after`` if given) or, with ``delay``, handle
        them normally but answer only that many seconds later (to make a client time out
        on a request that was carried out all the same).

        ``times=None`` keeps the fault until :meth:`clear_faults`; ``method`` restricts
        it to one method. Returns the fault, whose ``times`` counts down.
        """
        if times is not None and times < 1:
            raise ValueError("times must be at least 1 (or None: until cleared)")
        fault = Fault(path_prefix, status, times, delay, retry_after, method)
        self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        """Remove every injected fault."""
        self.faults.clear()

    def _take_fault(self, method: str, path: str) -> Fault | None:
        for fault in self.faults:
            if path.startswith(fault.path_prefix) and fault.method in (None, method):
                if fault.times is not None:
                    fault.times -= 1
                    if fault.times <= 0:
                        self.faults.remove(fault)
                return fault
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI entry point (HTTP and lifespan)."""
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        self.calls[path] += 1
        fault = self._take_fault(method, path)
        try:
            if fault is not None and fault.delay <= 0:
                raise _injected(fault)
            status, body = await self._route(method, path, scope, receive)
            headers: Sequence[tuple[str, str]] = ()
        except _Answer as answer:
            status, body, headers = answer.status, answer.body, answer.headers
        if fault is not None and fault.delay > 0:
            await asyncio.sleep(fault.delay)  # handled, but the answer comes late
        await _respond(send, status, body, headers)

    async def _route(
        self, method: str, path: str, scope: Scope, receive: Receive
    ) -> tuple[int, Any]:
        if path == HEALTH_PATH:
            _allow(method, "GET")
            return 200, {"status": "ok"}
        if path == VALIDATE_PATH:
            _allow(method, "POST")
            return 200, _refusing(check_applicant, _loads(await _read_body(receive)))
        if path == TRANSFERS_PATH:
            _allow(method, "POST")
            key = _header(scope, b"idempotency-key")
            raw = await _read_body(receive)
            body = _loads(raw) if key else None  # no key: refused first, whatever the body
            status, result = _refusing(self.book.initiate, body, key)
            logger.info(
                "HMS-ACH transfer %s %s: %s%s",
                result.payment_id,
                "initiated" if status == 201 else "repeated",
                result.status,
                f" ({result.reason})" if result.reason else "",
            )
            return status, _dump(result)
        prefix = TRANSFERS_PATH + "/"
        if path.startswith(prefix) and "/" not in path[len(prefix) :] and len(path) > len(prefix):
            _allow(method, "GET")
            return 200, _dump(_refusing(self.book.status, path[len(prefix) :]))
        raise _error(404, f"no such endpoint: {path}")


def _refusing(fn: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs) -> _R:
    try:
        return fn(*args, **kwargs)
    except RequestRefused as exc:
        raise _error(exc.status, exc.message) from None


def _dump(result: PaymentResult) -> dict[str, Any]:
    return result.model_dump(mode="json", by_alias=True)


def _allow(method: str, allowed: str) -> None:
    if method != allowed:
        raise _Answer(405, {"error": f"method {method} not allowed"}, [("allow", allowed)])


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1").strip()
    return None


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _error(400, "the client went away")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise _error(413, f"the body is larger than {MAX_BODY} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _loads(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        # Says where, never what: no value of the body is echoed.
        where = f"line {exc.lineno}, column {exc.colno}"
        raise _error(400, f"the body is not valid JSON ({where})") from None
    except ValueError:
        raise _error(400, "the body is not valid JSON (not UTF-8)") from None


async def _respond(
    send: Send, status: int, body: Any, headers: Sequence[tuple[str, str]] = ()
) -> None:
    payload = json.dumps(body).encode()
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        *((name.encode(), value.encode()) for name, value in headers),
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": payload})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def create_app(
    *, settle_after: float = 0.0, clock: Callable[[], float] = time.time
) -> ReferenceServices:
    """The reference HMS-SVC and HMS-ACH, as an ASGI application with fresh state.

    Args:
        settle_after: seconds after initiation from which a status check settles a
            pending transfer (0: the first check does).
        clock: the time, in seconds since the epoch.
    """
    return ReferenceServices(settle_after=settle_after, clock=clock)


def main(argv: Sequence[str] | None = None) -> None:
    """Serve the reference services with uvicorn: ``python -m step_handlers.reference_services``."""
    parser = argparse.ArgumentParser(
        prog="python -m step_handlers.reference_services",
        description="Serve the reference HMS-SVC and HMS-ACH (state in memory).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8088, help="port to listen on")
    parser.add_argument(
        "--settle-after",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="seconds before a status check settles a transfer (default 0: the first check)",
    )
    parser.add_argument("--log-level", default="info", help="uvicorn's log level")
    args = parser.parse_args(argv)
    try:
        import uvicorn
    except ImportError:
        raise SystemExit(
            "the reference services need uvicorn: pip install 'hms-bus[services]'"
        ) from None
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    uvicorn.run(
        create_app(settle_after=args.settle_after),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=True,
    )


if __name__ == "__main__":
    main()
