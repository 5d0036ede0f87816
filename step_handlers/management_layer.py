"""The HMS Management Layer's grant payment: ``ManagementLayer.process_workflow``.

``process_workflow(request)`` pays a grant through the ``grantPayment`` workflow. The
request is a :class:`~schemas.payment.PaymentRequest`, in the chapter's flat form::

    {"application_id": "GR-2023-55", "amount": 2500,
     "applicant": {"name": "Jane Doe", "bank_account": "12345"}}

(``bank_account`` a plain string: an account on file, which HMS-ACH resolves) or the
richer form with ``payment: {amount, bankAccount: {routingNumber, accountNumber}}``;
the model turns the first into the second. The workflow::

    validateApplicant → initiateTransfer → (one hour later) checkPaymentStatus

- **validateApplicant** asks HMS-SVC whether the applicant may be paid (telling it of
  an account on file, whose holder needs no tax id: they were identified when it was
  put on file). An invalid applicant (or a request HMS-SVC refuses) fails the workflow
  without retry: the answer is ``{"status": "error", "message": "validation_failed"}``.
- **initiateTransfer** sends the ACH credit to HMS-ACH, with the step's idempotency key
  so a retried or redelivered attempt never pays twice. A transfer HMS-ACH rejects (an
  unknown account on file among the reasons) fails the workflow:
  ``{"status": "error", "message": "payment_failed"}``. Otherwise the answer
  is ``{"status": "completed", "payment_id": "PAY-…", "details": {…}}`` at once, while
  the workflow goes on:
- **checkPaymentStatus** runs ``status_check_delay`` seconds later (one hour by default)
  as its own step, on a durable timer that survives restarts. It asks HMS-ACH how the
  transfer ended; a transfer still pending is checked again, up to ``max_status_checks``
  times. The workflow then completes with ``paymentStatus`` ``settled``, ``returned`` or
  ``pending`` in its result (``hms-bus status <workflow id>``).

HMS-SVC and HMS-ACH are reached over HTTP when ``HMS_SVC_URL`` / ``HMS_ACH_URL`` are set
(see :mod:`step_handlers.services`); otherwise in-process simulations with the same
behaviour serve, so the embedded demo needs nothing running. Outages (HTTP 5xx,
timeouts) are retried by the clients and then by the step's retry policy; anything else
HMS-SVC or HMS-ACH refuses is final.

The applicant's tax id and the bank account number are :class:`hms_bus.Sensitive`: the
handlers get them intact, every other place (status, history, logs, spans, dead letters,
the CLI) sees a mask. An account on file's reference is not (it is of no use outside
HMS-ACH), and shows as it is: never put an account number there.

Run the workers of this app with ``hms-bus worker step_handlers.management_layer:mgmt``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Mapping
from datetime import timedelta
from types import TracebackType
from typing import Any, Self, TypeVar

from pydantic import BaseModel

import hms_bus
from schemas.grant import AccountOnFile
from schemas.payment import PaymentRequest, PaymentResult

from .services import (
    ApplicantValidator,
    PaymentGateway,
    ServiceRejected,
    gateway_from_env,
    validator_from_env,
)

__all__ = ["STATUS_CHECK_DELAY", "WORKFLOW", "ManagementLayer", "create_payment_app", "mgmt"]

WORKFLOW = "grantPayment"
STEPS = ["validateApplicant", "initiateTransfer", "checkPaymentStatus"]
STATUS_CHECK_DELAY = 3600.0
"""Seconds between initiating a transfer and checking its status (one hour)."""

_T = TypeVar("_T")


def _transfer(result: PaymentResult) -> dict[str, Any]:
    return result.model_dump(mode="json", by_alias=True, exclude_none=True)


def create_payment_app(
    mgmt: hms_bus.Management | None = None,
    *,
    validator: ApplicantValidator | None = None,
    gateway: PaymentGateway | None = None,
    status_check_delay: float = STATUS_CHECK_DELAY,
    max_status_checks: int = 3,
    retry: hms_bus.RetryPolicy | None = None,
) -> hms_bus.Management:
    """Define ``grantPayment`` and its handlers on ``mgmt`` (see module docs).

    Args:
        mgmt: the Management to register on; a new one (settings from the environment)
            when None.
        validator: HMS-SVC; from ``HMS_SVC_URL`` or the simulation when None.
        gateway: HMS-ACH; from ``HMS_ACH_URL`` or the simulation when None.
        status_check_delay: seconds from the transfer to its status check.
        max_status_checks: status checks of a transfer that stays pending.
        retry: retry policy of the steps (for outages that outlast the clients' own
            retries).
    """
    mgmt = mgmt or hms_bus.init(service_name="ManagementLayer")
    validator = validator or validator_from_env()
    gateway = gateway or gateway_from_env()
    retry = retry or hms_bus.RetryPolicy(max_attempts=4, initial_delay=1.0, max_delay=30.0)
    mgmt.define_workflow(WORKFLOW, STEPS, input=PaymentRequest, sla=timedelta(hours=2))

    @mgmt.on_step(f"{WORKFLOW}.validateApplicant", input=PaymentRequest, retry=retry, timeout=60)
    async def validate_applicant(ctx: hms_bus.StepContext) -> PaymentRequest:
        request: PaymentRequest = ctx.payload
        account = request.payment.bank_account
        on_file = account.account_on_file if isinstance(account, AccountOnFile) else None
        try:
            outcome = await validator.validate(
                request.application_id, request.applicant, account_on_file=on_file
            )
        except ServiceRejected as exc:
            raise hms_bus.Fail(f"validation_failed: {exc}") from exc
        if not outcome.valid:
            raise hms_bus.Fail(f"validation_failed: {'; '.join(outcome.reasons) or 'invalid'}")
        ctx.log.info("applicant of %s is valid", request.application_id)
        return request

    @mgmt.on_step(f"{WORKFLOW}.initiateTransfer", input=PaymentRequest, retry=retry, timeout=60)
    async def initiate_transfer(ctx: hms_bus.StepContext) -> hms_bus.Next:
        request: PaymentRequest = ctx.payload
        try:
            result = await gateway.initiate_transfer(
                request.application_id, request.payment, idempotency_key=ctx.idempotency_key
            )
        except ServiceRejected as exc:
            raise hms_bus.Fail(f"payment_failed: {exc}") from exc
        if result.status == "rejected":
            raise hms_bus.Fail(f"payment_failed: {result.reason or 'rejected by HMS-ACH'}")
        ctx.log.info("transfer %s initiated for %s", result.payment_id, request.application_id)
        # From here on only the payment's id travels: no bank account, no tax id.
        follow_up = {
            "applicationId": request.application_id,
            "paymentId": result.payment_id,
            "amount": str(result.amount),
            "transfer": _transfer(result),
            "checks": 0,
        }
        return ctx.schedule("checkPaymentStatus", follow_up, delay=status_check_delay)

    @mgmt.on_step(f"{WORKFLOW}.checkPaymentStatus", retry=retry, timeout=60)
    async def check_payment_status(ctx: hms_bus.StepContext) -> Any:
        state = dict(ctx.payload)
        try:
            result = await gateway.payment_status(state["paymentId"])
        except ServiceRejected as exc:
            raise hms_bus.Fail(f"status check failed: {exc}") from exc
        state.update(transfer=_transfer(result), checks=int(state.get("checks", 0)) + 1)
        if result.status == "pending" and state["checks"] < max_status_checks:
            return ctx.schedule("checkPaymentStatus", state, delay=status_check_delay)
        ctx.log.info("transfer %s is %s", state["paymentId"], result.status)
        return hms_bus.Complete({**state, "paymentStatus": result.status})

    return mgmt


class ManagementLayer:
    """The HMS Management Layer's entry point for grant payments (see module docs).

    ``process_workflow(request)`` is the synchronous call for scripts: it runs hms-bus on
    a background thread that stays up between calls (so the follow-up checks it
    schedules fire while the object lives) until :meth:`close`. In async code use
    ``await aprocess_workflow(request)`` inside ``async with ManagementLayer() as ml``.

    Args:
        mgmt: a Management to run on (its bus and store decide where the workflow runs);
            by default the embedded one, or ``HMS_BUS_URL`` / ``HMS_STORE_URL``.
        validator, gateway: HMS-SVC and HMS-ACH (default: HTTP from ``HMS_SVC_URL`` /
            ``HMS_ACH_URL``, else simulated).
        status_check_delay: seconds until the payment status check (default one hour).
        max_status_checks: checks of a transfer that stays pending.
        timeout: seconds ``process_workflow`` waits for the transfer to be initiated.
    """

    def __init__(
        self,
        mgmt: hms_bus.Management | None = None,
        *,
        validator: ApplicantValidator | None = None,
        gateway: PaymentGateway | None = None,
        status_check_delay: float = STATUS_CHECK_DELAY,
        max_status_checks: int = 3,
        retry: hms_bus.RetryPolicy | None = None,
        timeout: float = 120.0,
    ) -> None:
        # Clients made here (HTTP when HMS_SVC_URL / HMS_ACH_URL are set) are closed here.
        self._owned: list[Any] = []
        if validator is None:
            validator = validator_from_env()
            self._owned.append(validator)
        if gateway is None:
            gateway = gateway_from_env()
            self._owned.append(gateway)
        self.mgmt = create_payment_app(
            mgmt,
            validator=validator,
            gateway=gateway,
            status_check_delay=status_check_delay,
            max_status_checks=max_status_checks,
            retry=retry,
        )
        self.timeout = timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- async -----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.mgmt.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._shutdown()

    async def _shutdown(self) -> None:
        try:
            await self.mgmt.close()
        finally:
            for client in self._owned:
                await client.aclose()

    async def aprocess_workflow(
        self, request: Mapping[str, Any] | PaymentRequest
    ) -> dict[str, Any]:
        """Pay one grant; see :meth:`process_workflow` for the answer."""
        if not self.mgmt.connected:
            raise hms_bus.HmsBusError(
                "ManagementLayer is not running: use 'async with ManagementLayer() as ml'"
            )
        body: Mapping[str, Any] = (
            request.model_dump(mode="json", by_alias=True)
            if isinstance(request, BaseModel)
            else request
        )
        try:
            started = await self._start(body)
        except (hms_bus.PayloadValidationError, hms_bus.ConfigError) as exc:
            return {"status": "error", "message": "validation_failed", "reason": str(exc)}
        status = await self.mgmt.wait(
            started.workflow_id, self.timeout, until_step="initiateTransfer"
        )
        if status.status in (hms_bus.WorkflowState.FAILED, hms_bus.WorkflowState.CANCELLED):
            failed = [s.step for s in status.steps if s.status == "failed"]
            step = failed[-1] if failed else None
            message = "validation_failed" if step == "validateApplicant" else "payment_failed"
            return {
                "status": "error",
                "message": message,
                "reason": status.error,
                "workflow_id": status.workflow_id,
            }
        transfer = await self._transfer_of(status.workflow_id)
        check = next((s for s in status.steps if s.step == "checkPaymentStatus"), None)
        return {
            "status": "completed",
            "payment_id": transfer["paymentId"],
            "details": {
                "workflow_id": status.workflow_id,
                "application_id": transfer["applicationId"],
                "amount": transfer["amount"],
                "payment_status": transfer["transfer"]["status"],
                "status_check_due": check.due_at.isoformat() if check and check.due_at else None,
                "payee": status.payload.get("payment", {}).get("bankAccount"),
            },
        }

    async def _start(self, body: Mapping[str, Any]) -> hms_bus.Started:
        """Start the application's payment workflow, once per application.

        The workflow id is ``payment-<applicationId>``: paying an application again
        answers with the first payment instead of sending a second transfer. Only when
        the earlier attempt ended before any money moved (refused by HMS-SVC, or rejected
        by HMS-ACH) does a new attempt start, as ``payment-<applicationId>-2``, ``-3``…
        An attempt that failed on an HMS-ACH outage is not repeated: the transfer may
        have been received, and only that workflow's idempotency key is safe to reuse.
        """
        application_id = body.get("applicationId") or body.get("application_id")
        if not application_id:
            return await self.mgmt.start(WORKFLOW, body)  # the model says what is missing
        attempt = 1
        while True:
            suffix = f"-{attempt}" if attempt > 1 else ""
            started = await self.mgmt.start(
                WORKFLOW, body, workflow_id=f"payment-{application_id}{suffix}"
            )
            if started.created:
                return started
            earlier = await self.mgmt.status(started.workflow_id)
            if earlier is None or earlier.status != hms_bus.WorkflowState.FAILED:
                return started
            if not _ended_before_payment(earlier):
                return started  # money may have moved: answer with that workflow
            attempt += 1

    async def _transfer_of(self, workflow_id: str) -> dict[str, Any]:
        """What initiateTransfer handed on (its result, from the workflow's history)."""
        for event in reversed(await self.mgmt.history(workflow_id)):
            if (
                event.type == "completeStep"
                and event.step == "initiateTransfer"
                and event.outcome == "succeeded"
                and event.directive is not None
            ):
                data: dict[str, Any] = event.directive.data
                return data
        raise hms_bus.HmsBusError(f"{workflow_id}: initiateTransfer has no recorded result")

    # -- sync ------------------------------------------------------------------------------

    def process_workflow(self, request: Mapping[str, Any] | PaymentRequest) -> dict[str, Any]:
        """Pay one grant and answer as the Management Layer does.

        Returns:
            ``{"status": "completed", "payment_id": "PAY-…", "details": {…}}`` once the
            transfer is initiated (its status check runs later, as its own step), or
            ``{"status": "error", "message": "validation_failed" | "payment_failed",
            "reason": …}``. Sensitive values in ``details`` are masked.

        Raises:
            RuntimeError: called from inside a running event loop (use
                :meth:`aprocess_workflow` there).
            hms_bus.WaitTimeoutError: the transfer was not initiated within ``timeout``.
        """
        return self._run(self.aprocess_workflow(request))

    def wait(self, workflow_id: str, timeout: float | None = None) -> hms_bus.WorkflowStatus:
        """Block until the payment workflow ends (after its status check); its status."""
        return self._run(self.mgmt.wait(workflow_id, timeout))

    def __enter__(self) -> Self:
        self._ensure_running()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the background thread (its workers drain) if the sync API started it."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()

    def _ensure_running(self) -> asyncio.AbstractEventLoop:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError(
                "process_workflow() blocks; inside async code use "
                "'await ManagementLayer.aprocess_workflow(request)'"
            )
        with self._lock:
            if self._loop is not None:
                return self._loop
            loop = asyncio.new_event_loop()
            thread = threading.Thread(
                target=loop.run_forever, name="hms-management-layer", daemon=True
            )
            thread.start()
            try:
                asyncio.run_coroutine_threadsafe(self.mgmt.connect(), loop).result()
            except BaseException:
                loop.call_soon_threadsafe(loop.stop)
                thread.join()
                loop.close()
                raise
            self._loop, self._thread = loop, thread
            return loop

    def _run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        try:
            loop = self._ensure_running()
        except BaseException:
            coro.close()
            raise
        return asyncio.run_coroutine_threadsafe(coro, loop).result()


def _ended_before_payment(status: hms_bus.WorkflowStatus) -> bool:
    """True when a failed payment workflow certainly moved no money."""
    failed = [s for s in status.steps if s.status == "failed"]
    if not failed:
        return False
    last = failed[-1]
    if last.step == "validateApplicant":
        return True
    return last.step == "initiateTransfer" and (last.error or "").startswith("payment_failed:")


mgmt = create_payment_app()
"""The app for the CLI: ``hms-bus run step_handlers.management_layer:mgmt``."""
