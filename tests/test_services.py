"""HMS-SVC and HMS-ACH: the HTTP clients against the reference services on loopback,
and the simulations, which must behave the same.

Tests that take ``make`` run once per implementation; the rest are about HTTP only
(retries, timeouts, headers, the raw endpoints).
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from reference_server import reference_server

from schemas.grant import Applicant, BankAccount
from schemas.payment import PaymentInstruction
from step_handlers.reference_rules import TRANSFERS_PATH, VALIDATE_PATH
from step_handlers.services import (
    TRANSIENT_STATUSES,
    ApplicantValidator,
    HttpApplicantValidator,
    HttpPaymentGateway,
    PaymentGateway,
    ServiceError,
    ServiceRejected,
    ServiceUnavailable,
    SimulatedApplicantValidator,
    SimulatedPaymentGateway,
    ValidationOutcome,
    gateway_from_env,
    validator_from_env,
)

ROUTING = "011000015"
ACCOUNT = "4401923377"
TAX_ID = "12-3456789"


def applicant(**overrides: Any) -> Applicant:
    return Applicant(**{"name": "Acme Bakery LLC", "tax_id": TAX_ID, **overrides})


def instruction(account: str = ACCOUNT, routing: str = ROUTING, **kw: Any) -> PaymentInstruction:
    return PaymentInstruction(
        amount=Decimal("25000.00"),
        bank_account=BankAccount(routing_number=routing, account_number=account),
        memo="Grant GR-2026-0001",
        **kw,
    )


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


Make = Callable[..., Awaitable[tuple[ApplicantValidator, PaymentGateway]]]


@pytest.fixture(params=["http", "simulated"])
async def make(request: pytest.FixtureRequest) -> AsyncIterator[Make]:
    """``await make(settle_after=..., clock=...)`` → (validator, gateway) of one kind."""
    async with AsyncExitStack() as stack:

        async def build(
            settle_after: float = 0.0, clock: Callable[[], float] = time.time
        ) -> tuple[ApplicantValidator, PaymentGateway]:
            if request.param == "simulated":
                return SimulatedApplicantValidator(), SimulatedPaymentGateway(
                    settle_after=settle_after, clock=clock
                )
            url, _ = await stack.enter_async_context(
                reference_server(settle_after=settle_after, clock=clock)
            )
            validator = await stack.enter_async_context(
                HttpApplicantValidator(url, timeout=2, backoff=0.01)
            )
            gateway = await stack.enter_async_context(
                HttpPaymentGateway(url, timeout=2, backoff=0.01)
            )
            return validator, gateway

        yield build


@pytest.fixture
async def served() -> AsyncIterator[tuple[str, Any]]:
    async with reference_server() as (url, services):
        yield url, services


# --- behaviour shared by both implementations ---------------------------------------


async def test_valid_applicant(make: Make) -> None:
    validator, _ = await make()
    assert await validator.validate("GR-1", applicant()) == ValidationOutcome(valid=True)


@pytest.mark.parametrize(
    ("overrides", "reasons"),
    [
        ({"name": "  "}, ("applicant name is missing",)),
        ({"name": None, "tax_id": None}, ("applicant name is missing", "tax id is missing")),
        ({"tax_id": "123456789"}, ("tax id is not in the form NN-NNNNNNN",)),
        ({"tax_id": "12-345678"}, ("tax id is not in the form NN-NNNNNNN",)),
        ({"tax_id": "00-1234567"}, ("tax id is on the deny list",)),
    ],
)
async def test_invalid_applicant(
    make: Make, overrides: dict[str, Any], reasons: tuple[str, ...]
) -> None:
    validator, _ = await make()
    outcome = await validator.validate("GR-1", applicant(**overrides))
    assert outcome == ValidationOutcome(valid=False, reasons=reasons)


async def test_transfer_pending_then_settled(make: Make) -> None:
    _, gateway = await make()
    first = await gateway.initiate_transfer("GR-1", instruction(), idempotency_key="k-1")
    assert re.fullmatch(r"PAY-[0-9A-F]{10}", first.payment_id)
    assert (first.status, first.amount, first.currency, first.reason) == (
        "pending",
        Decimal("25000.00"),
        "USD",
        None,
    )
    assert first.updated_at is not None
    later = await gateway.payment_status(first.payment_id)
    assert (later.payment_id, later.status, later.amount) == (
        first.payment_id,
        "settled",
        first.amount,
    )


async def test_settles_only_after_settle_after(make: Make) -> None:
    clock = Clock()
    _, gateway = await make(settle_after=3600, clock=clock)
    first = await gateway.initiate_transfer("GR-1", instruction(), idempotency_key="k-1")
    clock.now += 3599
    assert (await gateway.payment_status(first.payment_id)).status == "pending"
    clock.now += 1
    settled = await gateway.payment_status(first.payment_id)
    assert settled.status == "settled"
    assert settled.updated_at is not None and settled.updated_at.timestamp() == clock.now


async def test_account_9999_is_returned(make: Make) -> None:
    _, gateway = await make()
    first = await gateway.initiate_transfer("GR-1", instruction("123459999"), idempotency_key="k")
    assert first.status == "pending"
    later = await gateway.payment_status(first.payment_id)
    assert (later.status, later.reason) == ("returned", "R03 no account")


@pytest.mark.parametrize(
    ("account", "routing", "reason"),
    [
        (ACCOUNT, "123456789", "routing number fails the ABA checksum"),
        ("123450000", ROUTING, "account closed"),
        ("12-34", ROUTING, "account number is not 4 to 17 digits"),
    ],
)
async def test_rejected_transfer_is_an_answer(
    make: Make, account: str, routing: str, reason: str
) -> None:
    _, gateway = await make()
    result = await gateway.initiate_transfer(
        "GR-1", instruction(account, routing), idempotency_key="k"
    )
    assert (result.status, result.reason) == ("rejected", reason)
    assert re.fullmatch(r"PAY-[0-9A-F]{10}", result.payment_id)
    assert (await gateway.payment_status(result.payment_id)).status == "rejected"


async def test_repeated_idempotency_key_answers_the_first_transfer(make: Make) -> None:
    _, gateway = await make()
    first = await gateway.initiate_transfer("GR-1", instruction(), idempotency_key="k-1")
    again = await gateway.initiate_transfer("GR-1", instruction(), idempotency_key="k-1")
    other = await gateway.initiate_transfer("GR-1", instruction(), idempotency_key="k-2")
    assert again == first
    assert other.payment_id != first.payment_id


async def test_idempotency_key_reused_for_another_request(make: Make) -> None:
    _, gateway = await make()
    await gateway.initiate_transfer("GR-1", instruction(), idempotency_key="k-1")
    with pytest.raises(ServiceRejected) as caught:
        await gateway.initiate_transfer("GR-2", instruction(), idempotency_key="k-1")
    assert (caught.value.status, caught.value.transient) == (422, False)


async def test_idempotency_key_is_required(make: Make) -> None:
    _, gateway = await make()
    with pytest.raises(ValueError, match="idempotency key"):
        await gateway.initiate_transfer("GR-1", instruction(), idempotency_key="")


async def test_unknown_payment_id(make: Make) -> None:
    _, gateway = await make()
    with pytest.raises(ServiceRejected) as caught:
        await gateway.payment_status("PAY-0000000000")
    error = caught.value
    assert (error.service, error.status, error.transient) == ("HMS-ACH", 404, False)
    assert str(error) == (
        "HMS-ACH GET /ach/v1/transfers/PAY-0000000000: HTTP 404 Not Found: unknown payment id"
    )


async def test_bad_request_is_rejected(make: Make) -> None:
    validator, _ = await make()
    with pytest.raises(ServiceRejected) as caught:
        await validator.validate("", applicant())
    assert (caught.value.service, caught.value.status) == ("HMS-SVC", 400)
    assert "applicationId" in str(caught.value)


# --- simulations only ---------------------------------------------------------------


async def test_simulated_outages() -> None:
    validator = SimulatedApplicantValidator(outages=1)
    gateway = SimulatedPaymentGateway(outages=2)
    with pytest.raises(ServiceUnavailable) as caught:
        await validator.validate("GR-1", applicant())
    assert caught.value.transient and caught.value.service == "HMS-SVC"
    assert (await validator.validate("GR-1", applicant())).valid
    for _ in range(2):
        with pytest.raises(ServiceUnavailable):
            await gateway.initiate_transfer("GR-1", instruction(), idempotency_key="k")
    assert (await gateway.initiate_transfer("GR-1", instruction(), idempotency_key="k")).status
    assert (validator.calls, gateway.calls, len(gateway.book.transfers)) == (2, 3, 1)


# --- HTTP only: retries, timeouts, headers ------------------------------------------


async def test_503_twice_then_success(served: tuple[str, Any]) -> None:
    url, services = served
    services.fail(TRANSFERS_PATH, status=503, times=2)
    async with HttpPaymentGateway(url, timeout=2, retries=3, backoff=0.01) as gateway:
        result = await gateway.initiate_transfer("GR-1", instruction(), idempotency_key="k")
    assert result.status == "pending"
    assert services.calls[TRANSFERS_PATH] == 3
    assert list(services.transfers) == [result.payment_id]


async def test_every_transient_status_is_retried(served: tuple[str, Any]) -> None:
    url, services = served
    async with HttpApplicantValidator(url, timeout=2, retries=2, backoff=0.01) as validator:
        for status in sorted(TRANSIENT_STATUSES):
            services.fail(VALIDATE_PATH, status=status)
            assert (await validator.validate("GR-1", applicant())).valid
    assert services.calls[VALIDATE_PATH] == 2 * len(TRANSIENT_STATUSES)


async def test_503_forever_gives_up_after_the_attempts(served: tuple[str, Any]) -> None:
    url, services = served
    services.fail(TRANSFERS_PATH, status=503, times=None)
    async with HttpPaymentGateway(url, timeout=2, retries=3, backoff=0.01) as gateway:
        with pytest.raises(ServiceUnavailable) as caught:
            await gateway.initiate_transfer("GR-1", instruction(), idempotency_key="k")
    error = caught.value
    assert (error.service, error.status, error.transient) == ("HMS-ACH", 503, True)
    assert str(error).startswith("HMS-ACH POST /ach/v1/transfers: unavailable after 3 attempts;")
    assert "HTTP 503" in str(error)
    assert services.calls[TRANSFERS_PATH] == 3
    assert not services.transfers


async def test_timeout_is_transient_and_retried(served: tuple[str, Any]) -> None:
    url, services = served
    # The first attempt is carried out, but its answer comes after the client gave up.
    services.fail(TRANSFERS_PATH, delay=0.6)
    async with HttpPaymentGateway(url, timeout=0.2, retries=3, backoff=0.01) as gateway:
        result = await gateway.initiate_transfer("GR-1", instruction(), idempotency_key="k")
    assert services.calls[TRANSFERS_PATH] == 2
    assert list(services.transfers) == [result.payment_id]  # the retry paid nothing twice


async def test_timeout_on_every_attempt(served: tuple[str, Any]) -> None:
    url, services = served
    services.fail(VALIDATE_PATH, delay=0.5, times=2)
    async with HttpApplicantValidator(url, timeout=0.1, retries=2, backoff=0.01) as validator:
        with pytest.raises(ServiceUnavailable) as caught:
            await validator.validate("GR-1", applicant())
    assert caught.value.status is None
    assert "unavailable after 2 attempts; last cause: ReadTimeout" in str(caught.value)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422, 501])
async def test_other_errors_are_not_retried(served: tuple[str, Any], status: int) -> None:
    url, services = served
    services.fail(TRANSFERS_PATH, status=status)
    async with HttpPaymentGateway(url, timeout=2, retries=3, backoff=0.01) as gateway:
        with pytest.raises(ServiceRejected) as caught:
            await gateway.initiate_transfer("GR-1", instruction(), idempotency_key="k")
    assert (caught.value.status, caught.value.transient) == (status, False)
    assert services.calls[TRANSFERS_PATH] == 1


async def test_a_real_400_is_not_retried(served: tuple[str, Any]) -> None:
    url, services = served
    async with HttpPaymentGateway(url, timeout=2, retries=3, backoff=0.01) as gateway:
        with pytest.raises(ServiceRejected) as caught:
            await gateway.initiate_transfer("", instruction(), idempotency_key="k")
    assert caught.value.status == 400
    assert services.calls[TRANSFERS_PATH] == 1


async def test_retry_after_is_honoured(served: tuple[str, Any]) -> None:
    url, services = served
    services.fail(VALIDATE_PATH, status=429, retry_after=1)
    async with HttpApplicantValidator(url, timeout=2, retries=2, backoff=0.01) as validator:
        started = time.monotonic()
        assert (await validator.validate("GR-1", applicant())).valid
        assert time.monotonic() - started >= 0.95
        # ... but never for longer than max_delay.
        validator.max_delay = 0.05
        services.fail(VALIDATE_PATH, status=503, retry_after=3600)
        started = time.monotonic()
        assert (await validator.validate("GR-1", applicant())).valid
        assert time.monotonic() - started < 1


async def test_idempotency_key_is_the_same_on_every_attempt(served: tuple[str, Any]) -> None:
    url, services = served
    sent: list[str | None] = []

    async def record(request: httpx.Request) -> None:
        sent.append(request.headers.get("Idempotency-Key"))

    services.fail(TRANSFERS_PATH, status=502, times=2)
    async with httpx.AsyncClient(event_hooks={"request": [record]}) as client:
        gateway = HttpPaymentGateway(url, timeout=2, retries=3, backoff=0.01, client=client)
        result = await gateway.initiate_transfer("GR-1", instruction(), idempotency_key="wf-1:s")
        await gateway.aclose()
        assert not client.is_closed  # a client passed in is the caller's to close
    assert sent == ["wf-1:s"] * 3
    assert list(services.transfers) == [result.payment_id]


async def test_connection_refused_is_transient() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again before the client connects
    async with HttpApplicantValidator(f"http://127.0.0.1:{port}", retries=2, backoff=0.01) as v:
        with pytest.raises(ServiceUnavailable) as caught:
            await v.validate("GR-1", applicant())
    assert "unavailable after 2 attempts; last cause: ConnectError" in str(caught.value)


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(200, text="<html>not json</html>"),
        httpx.Response(200, json={"valid": "perhaps"}),
        httpx.Response(200, json=[1, 2]),
    ],
)
async def test_an_answer_that_does_not_parse_is_rejected(answer: httpx.Response) -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return answer

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        validator = HttpApplicantValidator("http://svc", client=client)
        with pytest.raises(ServiceRejected) as caught:
            await validator.validate("GR-1", applicant())
    assert (caught.value.status, calls) == (200, 1)


async def test_error_text_is_scrubbed_of_what_was_sent() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"error": f"account {ACCOUNT} is frozen"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        gateway = HttpPaymentGateway("http://ach", client=client)
        with pytest.raises(ServiceRejected) as caught:
            await gateway.initiate_transfer("GR-1", instruction(), idempotency_key="k")
    assert ACCOUNT not in str(caught.value)
    assert "account ******3377 is frozen" in str(caught.value)


async def test_errors_survive_pickling() -> None:
    error = ServiceUnavailable("HMS-ACH down", service="HMS-ACH", status=503, endpoint="GET /x")
    copy = pickle.loads(pickle.dumps(error))
    assert isinstance(copy, ServiceError) and copy.transient
    assert (str(copy), copy.service, copy.status, copy.endpoint) == (
        "HMS-ACH down",
        "HMS-ACH",
        503,
        "GET /x",
    )


# --- the raw endpoints --------------------------------------------------------------


async def test_raw_endpoints(served: tuple[str, Any]) -> None:
    url, _ = served
    good = {
        "applicationId": "GR-1",
        "amount": "10.00",
        "bankAccount": {"routingNumber": ROUTING, "accountNumber": ACCOUNT},
    }
    async with httpx.AsyncClient(base_url=url) as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        assert (await http.get("/nope")).status_code == 404
        wrong = await http.get(TRANSFERS_PATH)
        assert (wrong.status_code, wrong.headers["allow"]) == (405, "POST")
        assert (await http.post(f"{TRANSFERS_PATH}/PAY-1")).status_code == 405
        missing_key = await http.post(TRANSFERS_PATH, json=good)
        assert missing_key.status_code == 400
        assert "Idempotency-Key" in missing_key.json()["error"]
        created = await http.post(TRANSFERS_PATH, json=good, headers={"Idempotency-Key": "a"})
        repeated = await http.post(TRANSFERS_PATH, json=good, headers={"Idempotency-Key": "a"})
        assert (created.status_code, repeated.status_code) == (201, 200)
        assert created.json() == repeated.json()
        assert created.json()["paymentId"].startswith("PAY-")
        status = await http.get(f"{TRANSFERS_PATH}/{created.json()['paymentId']}")
        assert status.json()["status"] == "settled"
        malformed = await http.post(VALIDATE_PATH, content=b'{"taxId": "98-76')
        assert malformed.status_code == 400
        assert "not valid JSON" in malformed.json()["error"]
        assert "98-76" not in malformed.text
        bad = {**good, "amount": "-5", "bankAccount": {"accountNumber": ACCOUNT}}
        refused = await http.post(TRANSFERS_PATH, json=bad, headers={"Idempotency-Key": "b"})
        assert refused.status_code == 400
        assert "amount" in refused.json()["error"] and "routingNumber" in refused.json()["error"]
        assert ACCOUNT not in refused.text


async def test_no_sensitive_value_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secrets = [TAX_ID, ACCOUNT, "123450000"]
    async with reference_server(log_level="info") as (url, services):
        services.fail(VALIDATE_PATH, status=503, times=1)
        services.fail(TRANSFERS_PATH, status=500, times=1)
        services.fail(TRANSFERS_PATH, delay=0.4, times=1)
        async with (
            HttpApplicantValidator(url, timeout=0.2, retries=3, backoff=0.01) as validator,
            HttpPaymentGateway(url, timeout=0.2, retries=3, backoff=0.01) as gateway,
        ):
            assert (await validator.validate("GR-1", applicant())).valid
            paid = await gateway.initiate_transfer("GR-1", instruction(), idempotency_key="k1")
            closed = instruction("123450000")
            assert (await gateway.initiate_transfer("GR-1", closed, idempotency_key="k2")).reason
            await gateway.payment_status(paid.payment_id)
            with pytest.raises(ServiceRejected):
                await gateway.initiate_transfer("GR-1", closed, idempotency_key="k1")
        async with httpx.AsyncClient(base_url=url) as http:
            body = {"applicationId": "GR-1", "bankAccount": {"accountNumber": ACCOUNT}}
            await http.post(TRANSFERS_PATH, json=body, headers={"Idempotency-Key": "k3"})
    messages = [record.getMessage() for record in caplog.records]
    assert any("retrying" in m for m in messages)  # the clients' warnings were captured
    assert any("POST /ach/v1/transfers" in m and "201" in m for m in messages)  # access log
    for secret in secrets:
        assert secret not in caplog.text
        assert not any(secret in m for m in messages)


# --- configuration and the runner ---------------------------------------------------


async def test_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HMS_SVC_URL", "HMS_ACH_URL", "HMS_SVC_TIMEOUT", "HMS_ACH_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    assert isinstance(validator_from_env(), SimulatedApplicantValidator)
    assert isinstance(gateway_from_env(), SimulatedPaymentGateway)
    monkeypatch.setenv("HMS_SVC_URL", "http://svc:8088/")
    monkeypatch.setenv("HMS_SVC_TIMEOUT", "1.5")
    monkeypatch.setenv("HMS_ACH_URL", "")
    validator = validator_from_env()
    assert isinstance(validator, HttpApplicantValidator)
    assert (validator.base_url, validator.timeout) == ("http://svc:8088", 1.5)
    await validator.aclose()
    assert isinstance(gateway_from_env(), SimulatedPaymentGateway)
    gateway = gateway_from_env("http://ach:9000")
    assert isinstance(gateway, HttpPaymentGateway) and gateway.timeout == 5.0
    await gateway.aclose()
    monkeypatch.setenv("HMS_ACH_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="HMS_ACH_TIMEOUT"):
        gateway_from_env("http://ach:9000")


def test_runner_serves_the_reference_services() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    command = [sys.executable, "-m", "step_handlers.reference_services", "--port", str(port)]
    with subprocess.Popen(
        command, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    ) as proc:
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    answer = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                    break
                except httpx.TransportError:
                    assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
                    assert time.monotonic() < deadline, "the runner did not start"
                    time.sleep(0.1)
            assert answer.json() == {"status": "ok"}
        finally:
            proc.terminate()
            proc.wait(timeout=10)
