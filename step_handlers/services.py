"""The services the ``grantPayment`` workflow calls: HMS-SVC and HMS-ACH.

Two small Protocols, each with an HTTP client of the real service and an in-process
simulation of it:

- :class:`ApplicantValidator` (HMS-SVC, applicant validation):
  :class:`HttpApplicantValidator` and :class:`SimulatedApplicantValidator`;
- :class:`PaymentGateway` (HMS-ACH, ACH credits): :class:`HttpPaymentGateway` and
  :class:`SimulatedPaymentGateway`.

The simulations answer exactly as the reference services of
:mod:`step_handlers.reference_services` do: both go through the rules of
:mod:`step_handlers.reference_rules`. :func:`validator_from_env` and
:func:`gateway_from_env` pick the HTTP client when a base URL is given or configured,
else the simulation (the embedded demo). They read

- ``HMS_SVC_URL`` / ``HMS_ACH_URL``: the service's base URL, e.g. ``http://svc:8088``;
  unset or empty for the simulation;
- ``HMS_SVC_TIMEOUT`` / ``HMS_ACH_TIMEOUT``: seconds each HTTP request may take
  (default 5).

Errors say whether trying again may help::

    ServiceError            .service ("HMS-SVC" | "HMS-ACH"), .transient, .status, .endpoint
    ├── ServiceUnavailable  transient: HTTP 500, 502, 503, 504, 408, 429, connection
    │                       errors, connect and read timeouts
    └── ServiceRejected     not transient: any other 4xx (or non-2xx) answer, or an
                            answer that does not parse

The HTTP clients retry a request (``retries`` attempts in all) only while it fails with a
transient error, waiting ``backoff`` seconds, doubling each time, or the ``Retry-After``
of a 429 or 503, never more than ``max_delay``; then they raise
:class:`ServiceUnavailable` naming the service, the endpoint, the attempts and the last
cause. A transfer is sent with an ``Idempotency-Key`` header, the same on every
attempt, so a retried POST never pays twice. A *rejected payment* is not an error:
HMS-ACH accepts the request and answers a :class:`~schemas.payment.PaymentResult` with
status ``rejected`` and a reason.

A payment to an *account on file* (:class:`~schemas.grant.AccountOnFile`, a reference
such as ``"12345"`` to an account HMS-ACH holds for the payee) carries the reference
only: HMS-ACH resolves it, and rejects a reference it does not hold (``unknown account
on file``). HMS-SVC is told of it, and then needs no tax id (see
:mod:`step_handlers.reference_rules`).

Tax ids and account numbers travel in request bodies only: nothing here logs them,
and an error text a service sends back is scrubbed of the values the request carried.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from types import TracebackType
from typing import Any, ClassVar, Protocol, Self, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

import hms_bus
from schemas.grant import Applicant, BankAccount
from schemas.payment import PaymentInstruction, PaymentResult

from .reference_rules import (
    TRANSFERS_PATH,
    VALIDATE_PATH,
    RequestRefused,
    TransferBook,
    check_applicant,
    describe_validation_error,
)

__all__ = [
    "TRANSIENT_STATUSES",
    "ApplicantValidator",
    "HttpApplicantValidator",
    "HttpPaymentGateway",
    "PaymentGateway",
    "ServiceError",
    "ServiceRejected",
    "ServiceUnavailable",
    "SimulatedApplicantValidator",
    "SimulatedPaymentGateway",
    "ValidationOutcome",
    "gateway_from_env",
    "validator_from_env",
]

logger = logging.getLogger(__name__)

SVC = "HMS-SVC"
ACH = "HMS-ACH"
TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
"""HTTP statuses worth trying again: the service is briefly down, busy or slow."""
DEFAULT_TIMEOUT = 5.0
_M = TypeVar("_M", bound=BaseModel)


# --- errors -------------------------------------------------------------------------


class ServiceError(Exception):
    """A call to HMS-SVC or HMS-ACH failed.

    Attributes:
        service: ``"HMS-SVC"`` or ``"HMS-ACH"``.
        transient: True when trying again later may succeed.
        status: the HTTP status of the (last) answer; None when there was none.
        endpoint: ``"METHOD /path"`` of the call.
    """

    transient: ClassVar[bool] = False

    def __init__(
        self, message: str, *, service: str, status: int | None = None, endpoint: str = ""
    ) -> None:
        super().__init__(message)
        self.message = message
        self.service = service
        self.status = status
        self.endpoint = endpoint

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_error,
            (type(self), self.message, self.service, self.status, self.endpoint),
        )


class ServiceUnavailable(ServiceError):
    """The service did not answer usefully (5xx, 408, 429, no connection, a timeout).

    Worth retrying later: the workflow's step retry policy should.
    """

    transient = True


class ServiceRejected(ServiceError):
    """The service refused the request (a 4xx) or answered something unreadable.

    Repeating the same request would fail the same way.
    """

    transient = False


def _rebuild_error(
    cls: type[ServiceError], message: str, service: str, status: int | None, endpoint: str
) -> ServiceError:
    return cls(message, service=service, status=status, endpoint=endpoint)


def _refused(service: str, endpoint: str, status: int, detail: str) -> ServiceRejected:
    """The error for a 4xx answer, worded the same by the clients and the simulations."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown Status"
    return ServiceRejected(
        f"{service} {endpoint}: HTTP {status} {phrase}: {detail}",
        service=service,
        status=status,
        endpoint=endpoint,
    )


# --- the Protocols ------------------------------------------------------------------


@dataclass(frozen=True)
class ValidationOutcome:
    """HMS-SVC's verdict on an applicant.

    Attributes:
        valid: True when the applicant may be paid.
        reasons: why not, one entry per problem (empty when valid).
    """

    valid: bool
    reasons: tuple[str, ...] = ()


class ApplicantValidator(Protocol):
    """HMS-SVC: checks who is to be paid."""

    async def validate(
        self, application_id: str, applicant: Applicant, *, account_on_file: str | None = None
    ) -> ValidationOutcome:
        """The verdict on ``applicant`` of application ``application_id``.

        ``account_on_file`` is the reference of the account on file the payment goes to,
        if it goes to one: that payee was identified when the account was put on file.

        Raises:
            ServiceUnavailable: the service could not be reached (transient).
            ServiceRejected: the service refused the request.
        """
        ...


class PaymentGateway(Protocol):
    """HMS-ACH: initiates ACH credits and tells how they went."""

    async def initiate_transfer(
        self, application_id: str, instruction: PaymentInstruction, *, idempotency_key: str
    ) -> PaymentResult:
        """Initiate the transfer, once per ``idempotency_key`` (a repeat answers the first).

        Returns:
            The transfer, ``pending``, or ``rejected`` with a reason (not an error).

        Raises:
            ServiceUnavailable: the service could not be reached (transient).
            ServiceRejected: the service refused the request (422: the key was used
                for a different request).
            ValueError: ``idempotency_key`` is empty.
        """
        ...

    async def payment_status(self, payment_id: str) -> PaymentResult:
        """The transfer's status now.

        Raises:
            ServiceUnavailable: the service could not be reached (transient).
            ServiceRejected: the service refused the request (404: an unknown id).
        """
        ...


# --- wire bodies, shared by the clients and the simulations --------------------------


def _validation_body(
    application_id: str, applicant: Applicant, account_on_file: str | None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "applicationId": application_id,
        "applicant": applicant.model_dump(mode="json", by_alias=True),
    }
    if account_on_file is not None:
        body["accountOnFile"] = account_on_file
    return body


def _transfer_body(application_id: str, instruction: PaymentInstruction) -> dict[str, Any]:
    return {**instruction.model_dump(mode="json", by_alias=True), "applicationId": application_id}


def _account_numbers(instruction: PaymentInstruction) -> tuple[str, ...]:
    """The account number ``instruction`` carries in clear (none for an account on file)."""
    account = instruction.bank_account
    return (account.account_number,) if isinstance(account, BankAccount) else ()


def _require_key(idempotency_key: str) -> None:
    if not idempotency_key:
        raise ValueError("initiate_transfer needs an idempotency key")


def _status_path(payment_id: str) -> str:
    return f"{TRANSFERS_PATH}/{quote(payment_id, safe='')}"


class _ValidationAnswer(BaseModel):
    valid: bool
    reasons: list[str] = []


# --- HTTP clients -------------------------------------------------------------------


def _scrub(text: str, secrets: Iterable[str | None]) -> str:
    for value in secrets:
        if value and len(value) >= 4 and value in text:
            text = text.replace(value, "*" * (len(value) - 4) + value[-4:])
    return text


def _retry_after(response: httpx.Response) -> float | None:
    """The seconds of a ``Retry-After`` header (delay-seconds or an HTTP date), if any."""
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _detail(response: httpx.Response) -> str:
    """What an error answer says: its JSON ``error``, else the start of its text."""
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    text = error if isinstance(error, str) else response.text.strip() or "(no body)"
    return text[:300]


class _HttpService:
    """The HTTP plumbing both clients share: timeouts, retries, error mapping."""

    service: ClassVar[str]

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = 3,
        backoff: float = 0.2,
        max_delay: float = 5.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        if retries < 1:
            raise ValueError("retries counts attempts in all and must be at least 1")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_delay = max_delay
        # The same backoff as a step's retries, without jitter: a client's few attempts
        # within one step attempt need no spreading.
        self._policy = hms_bus.RetryPolicy(
            max_attempts=retries, initial_delay=backoff, max_delay=max_delay, jitter=0.0
        )
        self._owns_client = client is None
        self._client = client if client is not None else httpx.AsyncClient()

    async def aclose(self) -> None:
        """Close the HTTP client, if this object created it."""
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r})"

    async def _call(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        secrets: Iterable[str | None] = (),
    ) -> tuple[int, Any]:
        """Send the request until it is answered with something other than a transient
        failure; return the 2xx status and its JSON body.

        Raises:
            ServiceUnavailable: every attempt failed transiently.
            ServiceRejected: a non-2xx, non-transient answer, or a body that is not JSON.
        """
        endpoint = f"{method} {path}"
        secrets = tuple(secrets)
        cause = ""
        status: int | None = None
        last_exc: Exception | None = None
        for attempt in range(1, self.retries + 1):
            wait: float | None = None
            try:
                response = await self._client.request(
                    method, self.base_url + path, json=body, headers=headers, timeout=self.timeout
                )
            except httpx.TimeoutException as exc:
                status, last_exc = None, exc
                cause = f"{type(exc).__name__}: no answer within {self.timeout:g}s"
            except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                status, last_exc = None, exc
                cause = _scrub(f"{type(exc).__name__}: {exc}", secrets)
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                raise ServiceRejected(
                    _scrub(f"{self.service} {endpoint}: {type(exc).__name__}: {exc}", secrets),
                    service=self.service,
                    endpoint=endpoint,
                ) from exc
            else:
                status = response.status_code
                if 200 <= status < 300:
                    try:
                        return status, response.json()
                    except ValueError as exc:
                        raise ServiceRejected(
                            f"{self.service} {endpoint}: HTTP {status} with a non-JSON body",
                            service=self.service,
                            status=status,
                            endpoint=endpoint,
                        ) from exc
                detail = _scrub(_detail(response), secrets)
                if status not in TRANSIENT_STATUSES:
                    raise _refused(self.service, endpoint, status, detail)
                last_exc = None
                cause = f"HTTP {status} {response.reason_phrase}: {detail}"
                if status in (429, 503):
                    wait = _retry_after(response)
            if self._policy.allows_another(attempt):
                wait = self._policy.delay(attempt) if wait is None else min(wait, self.max_delay)
                logger.warning(
                    "%s %s: attempt %d of %d failed (%s); retrying in %.2fs",
                    self.service,
                    endpoint,
                    attempt,
                    self.retries,
                    cause,
                    wait,
                )
                await asyncio.sleep(wait)
        plural = "s" if self.retries != 1 else ""
        raise ServiceUnavailable(
            f"{self.service} {endpoint}: unavailable after {self.retries} attempt{plural}; "
            f"last cause: {cause}",
            service=self.service,
            status=status,
            endpoint=endpoint,
        ) from last_exc

    def _parse(self, model: type[_M], data: Any, status: int, endpoint: str) -> _M:
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise ServiceRejected(
                f"{self.service} {endpoint}: HTTP {status} with an answer that does not parse: "
                f"{describe_validation_error(exc)}",
                service=self.service,
                status=status,
                endpoint=endpoint,
            ) from None


class HttpApplicantValidator(_HttpService):
    """HMS-SVC over HTTP: ``POST /svc/v1/applicants/validate``.

    Args:
        base_url: the service's root, e.g. ``http://hms-svc:8088``.
        timeout: seconds each request may take (connect, send, wait for the answer).
        retries: attempts in all, the first included (1: no retry).
        backoff: seconds before the second attempt, doubled for each one after.
        max_delay: the longest wait between attempts, ``Retry-After`` included.
        client: an httpx client to send with (then left open by :meth:`aclose`);
            a new one when None.
    """

    service = SVC

    async def validate(
        self, application_id: str, applicant: Applicant, *, account_on_file: str | None = None
    ) -> ValidationOutcome:
        """The verdict on ``applicant`` (see :meth:`ApplicantValidator.validate`)."""
        status, data = await self._call(
            "POST",
            VALIDATE_PATH,
            body=_validation_body(application_id, applicant, account_on_file),
            secrets=(applicant.tax_id,),
        )
        answer = self._parse(_ValidationAnswer, data, status, f"POST {VALIDATE_PATH}")
        return ValidationOutcome(valid=answer.valid, reasons=tuple(answer.reasons))


class HttpPaymentGateway(_HttpService):
    """HMS-ACH over HTTP: ``POST /ach/v1/transfers``, ``GET /ach/v1/transfers/{id}``.

    Args:
        base_url: the service's root, e.g. ``http://hms-ach:8088``.
        timeout: seconds each request may take (connect, send, wait for the answer).
        retries: attempts in all, the first included (1: no retry).
        backoff: seconds before the second attempt, doubled for each one after.
        max_delay: the longest wait between attempts, ``Retry-After`` included.
        client: an httpx client to send with (then left open by :meth:`aclose`);
            a new one when None.
    """

    service = ACH

    async def initiate_transfer(
        self, application_id: str, instruction: PaymentInstruction, *, idempotency_key: str
    ) -> PaymentResult:
        """Initiate the transfer (see :meth:`PaymentGateway.initiate_transfer`); every
        attempt carries ``idempotency_key`` in the ``Idempotency-Key`` header."""
        _require_key(idempotency_key)
        status, data = await self._call(
            "POST",
            TRANSFERS_PATH,
            body=_transfer_body(application_id, instruction),
            headers={"Idempotency-Key": idempotency_key},
            secrets=_account_numbers(instruction),
        )
        return self._parse(PaymentResult, data, status, f"POST {TRANSFERS_PATH}")

    async def payment_status(self, payment_id: str) -> PaymentResult:
        """The transfer's status now (see :meth:`PaymentGateway.payment_status`)."""
        path = _status_path(payment_id)
        status, data = await self._call("GET", path)
        return self._parse(PaymentResult, data, status, f"GET {path}")


# --- simulations --------------------------------------------------------------------


class _Simulated:
    """Fault injection and lifecycle shared by the simulations."""

    service: ClassVar[str]
    outages: int
    latency: float
    calls: int

    async def _enter(self, endpoint: str) -> None:
        self.calls += 1
        if self.latency:
            await asyncio.sleep(self.latency)
        if self.outages > 0:
            self.outages -= 1
            raise ServiceUnavailable(
                f"{self.service} {endpoint}: unavailable after 1 attempt; "
                "last cause: simulated outage",
                service=self.service,
                status=503,
                endpoint=endpoint,
            )

    def _rejected(self, endpoint: str, exc: RequestRefused) -> ServiceRejected:
        return _refused(self.service, endpoint, exc.status, exc.message)

    async def aclose(self) -> None:
        """Nothing to close; here so that either implementation can be closed alike."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


@dataclass
class SimulatedApplicantValidator(_Simulated):
    """An in-process HMS-SVC with the reference service's rules, for the demo and tests.

    Args:
        outages: how many calls fail with :class:`ServiceUnavailable` (as a client
            whose retries ran out would) before the service answers.
        latency: seconds each call takes.
    """

    service: ClassVar[str] = SVC
    outages: int = 0
    latency: float = 0.0
    calls: int = 0
    """Calls made so far, failed ones included."""

    async def validate(
        self, application_id: str, applicant: Applicant, *, account_on_file: str | None = None
    ) -> ValidationOutcome:
        """The verdict on ``applicant`` (see :meth:`ApplicantValidator.validate`)."""
        endpoint = f"POST {VALIDATE_PATH}"
        await self._enter(endpoint)
        try:
            answer = check_applicant(_validation_body(application_id, applicant, account_on_file))
        except RequestRefused as exc:
            raise self._rejected(endpoint, exc) from None
        return ValidationOutcome(valid=answer["valid"], reasons=tuple(answer["reasons"]))


@dataclass
class SimulatedPaymentGateway(_Simulated):
    """An in-process HMS-ACH with the reference service's rules, for the demo and tests.

    Args:
        settle_after: seconds after initiation from which a status check settles a
            pending transfer (0: the first check does).
        clock: the time, in seconds since the epoch.
        outages: how many calls fail with :class:`ServiceUnavailable` (as a client
            whose retries ran out would) before the service answers.
        latency: seconds each call takes.
    """

    service: ClassVar[str] = ACH
    settle_after: float = 0.0
    clock: Callable[[], float] = time.time
    outages: int = 0
    latency: float = 0.0
    calls: int = 0
    """Calls made so far, failed ones included."""
    book: TransferBook = field(init=False, repr=False)
    """The transfers, as the reference service keeps them (``book.transfers``)."""

    def __post_init__(self) -> None:
        self.book = TransferBook(settle_after=self.settle_after, clock=self.clock)

    async def initiate_transfer(
        self, application_id: str, instruction: PaymentInstruction, *, idempotency_key: str
    ) -> PaymentResult:
        """Initiate the transfer (see :meth:`PaymentGateway.initiate_transfer`)."""
        _require_key(idempotency_key)
        endpoint = f"POST {TRANSFERS_PATH}"
        await self._enter(endpoint)
        try:
            _, result = self.book.initiate(
                _transfer_body(application_id, instruction), idempotency_key
            )
        except RequestRefused as exc:
            raise self._rejected(endpoint, exc) from None
        return result

    async def payment_status(self, payment_id: str) -> PaymentResult:
        """The transfer's status now (see :meth:`PaymentGateway.payment_status`)."""
        endpoint = f"GET {_status_path(payment_id)}"
        await self._enter(endpoint)
        try:
            return self.book.status(payment_id)
        except RequestRefused as exc:
            raise self._rejected(endpoint, exc) from None


# --- choosing from the environment --------------------------------------------------


def _env_timeout(name: str) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number of seconds") from None
    if value <= 0:
        raise ValueError(f"{name}={raw!r} must be more than 0 seconds")
    return value


def validator_from_env(base_url: str | None = None) -> ApplicantValidator:
    """HMS-SVC: an :class:`HttpApplicantValidator` for ``base_url`` or ``HMS_SVC_URL``
    (timeout ``HMS_SVC_TIMEOUT``), else a :class:`SimulatedApplicantValidator`."""
    url = base_url or os.environ.get("HMS_SVC_URL", "").strip()
    if not url:
        return SimulatedApplicantValidator()
    return HttpApplicantValidator(url, timeout=_env_timeout("HMS_SVC_TIMEOUT"))


def gateway_from_env(base_url: str | None = None) -> PaymentGateway:
    """HMS-ACH: an :class:`HttpPaymentGateway` for ``base_url`` or ``HMS_ACH_URL``
    (timeout ``HMS_ACH_TIMEOUT``), else a :class:`SimulatedPaymentGateway`."""
    url = base_url or os.environ.get("HMS_ACH_URL", "").strip()
    if not url:
        return SimulatedPaymentGateway()
    return HttpPaymentGateway(url, timeout=_env_timeout("HMS_ACH_TIMEOUT"))
