"""The business rules of the reference HMS-SVC and HMS-ACH, in one place.

Both the reference services (:mod:`step_handlers.reference_services`, over HTTP) and
the in-process simulations (``SimulatedApplicantValidator`` and
``SimulatedPaymentGateway`` in :mod:`step_handlers.services`) answer through the
functions here, from the same wire bodies, so the two cannot drift apart.

**HMS-SVC** (:func:`check_applicant`): an applicant is invalid, with one reason per
problem, when

- the name is missing or blank (``applicant name is missing``);
- the tax id is missing (``tax id is missing``), unless the payment goes to an account
  on file (the request's ``accountOnFile``): the payee's identity was verified when
  that account was put on file, and HMS-ACH pays only that account;
- the tax id is not ``NN-NNNNNNN``, nine digits with the dash after the second (``tax id
  is not in the form NN-NNNNNNN``);
- the tax id is on the deny list: it starts with one of :data:`DENIED_TAX_ID_PREFIXES`
  (``00-``, a prefix the IRS never assigns) (``tax id is on the deny list``).

**HMS-ACH** (:class:`TransferBook`) pays a bank account given as such (routing and
account number), or an *account on file*: a reference, such as ``"12345"``, to an
account it already holds for the payee, which it maps to that account's routing and
account number (:data:`ACCOUNTS_ON_FILE`, the one table the reference service and the
simulation share). An initiated transfer gets a ``PAY-`` id and is ``pending``, or
``rejected`` at once, with a reason, when

- the reference is not on file (``unknown account on file``);
- the routing number fails the ABA checksum (``routing number fails the ABA checksum``);
- the account number is not 4 to 17 digits (``account number is not 4 to 17 digits``);
- the account number ends in ``0000`` (``account closed``).

For an account on file, the last three rules, and the ``9999`` rule below, look at the
account it stands for.

A pending transfer is ``settled`` at the first status check ``settle_after`` seconds or
more after it was initiated (0: at the first check), except for an account number
ending in ``9999``, which is ``returned`` then (``R03 no account``); ``updatedAt`` is
when the status last changed (the initiation, or that check). A repeated
idempotency key answers the first transfer again (HTTP 200 instead of 201); the same
key with a different request is refused (422). An unknown payment id is 404.

Reasons and error messages never contain a tax id, an account number or a reference.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from schemas.grant import AccountOnFile, Applicant, BankAccount
from schemas.payment import PaymentInstruction, PaymentResult, PaymentStatus

__all__ = [
    "ACCOUNTS_ON_FILE",
    "DENIED_TAX_ID_PREFIXES",
    "HEALTH_PATH",
    "TRANSFERS_PATH",
    "VALIDATE_PATH",
    "routing_number_valid",
    "RequestRefused",
    "Transfer",
    "TransferBook",
    "TransferRequest",
    "ValidationRequest",
    "applicant_problems",
    "check_applicant",
    "describe_validation_error",
    "transfer_problem",
]

VALIDATE_PATH = "/svc/v1/applicants/validate"
"""HMS-SVC: ``POST`` a :class:`ValidationRequest`, answered ``{"valid", "reasons"}``."""
TRANSFERS_PATH = "/ach/v1/transfers"
"""HMS-ACH: ``POST`` a :class:`TransferRequest`; ``GET {TRANSFERS_PATH}/{paymentId}``."""
HEALTH_PATH = "/healthz"

DENIED_TAX_ID_PREFIXES = ("00-",)
"""Tax ids starting with one of these are refused by HMS-SVC."""

ACCOUNTS_ON_FILE: Mapping[str, BankAccount] = MappingProxyType(
    {
        "12345": BankAccount(routing_number="011000015", account_number="4401923377"),
        "67890": BankAccount(routing_number="021000021", account_number="000123459999"),
    }
)
"""The accounts on file of the reference HMS-ACH, by reference: what a payment to an
account on file pays. ``12345`` settles; ``67890`` ends in ``9999`` and is returned."""

_TAX_ID = re.compile(r"\d{2}-\d{7}")
_ACCOUNT = re.compile(r"\d{4,17}")
_M = TypeVar("_M", bound=BaseModel)


class RequestRefused(Exception):
    """A request the reference services refuse: bad input, an unknown id, a reused key.

    Args:
        status: the HTTP status the service answers (400, 404, 422).
        message: why; never contains a sensitive value.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.status, self.message))


class ValidationRequest(BaseModel):
    """The body of ``POST /svc/v1/applicants/validate``."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    application_id: str = Field(min_length=1, max_length=64)
    applicant: Applicant
    account_on_file: str | None = Field(
        None, description="The account on file the payment goes to, if it goes to one."
    )


class TransferRequest(PaymentInstruction):
    """The body of ``POST /ach/v1/transfers``: a payment instruction and whose it is."""

    application_id: str = Field(min_length=1, max_length=64)


def routing_number_valid(routing: str) -> bool:
    """True for nine digits whose ABA checksum holds (3-7-1 weights, sum ≡ 0 mod 10)."""
    if not re.fullmatch(r"\d{9}", routing):
        return False
    d = [int(c) for c in routing]
    return (3 * (d[0] + d[3] + d[6]) + 7 * (d[1] + d[4] + d[7]) + (d[2] + d[5] + d[8])) % 10 == 0


def describe_validation_error(exc: ValidationError) -> str:
    """Where and why a body failed its model, without the offending values."""
    problems = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        where = ".".join(str(part) for part in error["loc"]) or "body"
        problems.append(f"{where}: {error['msg']}")
    return "; ".join(problems)


def _parse(model: type[_M], body: Any) -> _M:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise RequestRefused(400, f"invalid request: {describe_validation_error(exc)}") from None


def applicant_problems(applicant: Applicant, *, account_on_file: bool = False) -> tuple[str, ...]:
    """Why HMS-SVC finds ``applicant`` invalid; empty when it is valid.

    ``account_on_file``: the payment goes to an account on file, whose holder was
    identified when it was put on file, so a missing tax id is no problem (a tax id
    that is given is checked all the same).
    """
    reasons: list[str] = []
    if not (applicant.name or "").strip():
        reasons.append("applicant name is missing")
    tax_id = applicant.tax_id
    if not tax_id:
        if not account_on_file:
            reasons.append("tax id is missing")
    elif not _TAX_ID.fullmatch(tax_id):
        reasons.append("tax id is not in the form NN-NNNNNNN")
    elif tax_id.startswith(DENIED_TAX_ID_PREFIXES):
        reasons.append("tax id is on the deny list")
    return tuple(reasons)


def check_applicant(body: Any) -> dict[str, Any]:
    """HMS-SVC's answer to a validation request body: ``{"valid": bool, "reasons": [...]}``.

    Raises:
        RequestRefused: (400) the body is not a :class:`ValidationRequest`.
    """
    request = _parse(ValidationRequest, body)
    reasons = applicant_problems(
        request.applicant, account_on_file=request.account_on_file is not None
    )
    return {"valid": not reasons, "reasons": list(reasons)}


def transfer_problem(account: BankAccount) -> str | None:
    """Why HMS-ACH rejects a transfer to ``account`` at once; None when it accepts it."""
    if not routing_number_valid(account.routing_number):
        return "routing number fails the ABA checksum"
    if not _ACCOUNT.fullmatch(account.account_number):
        return "account number is not 4 to 17 digits"
    if account.account_number.endswith("0000"):
        return "account closed"
    return None


def _timestamp(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


@dataclass
class Transfer:
    """One transfer HMS-ACH knows (held in memory, with the account number)."""

    payment_id: str
    idempotency_key: str
    request: TransferRequest = field(repr=False)  # holds the account number
    account: BankAccount | None = field(repr=False)
    """The account paid (an account on file resolved); None for an unknown reference."""
    initiated_at: float
    status: PaymentStatus
    reason: str | None
    updated_at: float

    def result(self) -> PaymentResult:
        """The transfer as HMS-ACH answers it."""
        return PaymentResult(
            payment_id=self.payment_id,
            status=self.status,
            amount=self.request.amount,
            currency=self.request.currency,
            reason=self.reason,
            updated_at=_timestamp(self.updated_at),
        )


class TransferBook:
    """HMS-ACH's transfers, by payment id and by idempotency key.

    Args:
        settle_after: seconds after initiation from which a status check settles (or
            returns) a pending transfer; 0 settles it at the first check.
        clock: the time, in seconds since the epoch.
        accounts_on_file: the accounts on file, by reference (default
            :data:`ACCOUNTS_ON_FILE`).
    """

    def __init__(
        self,
        *,
        settle_after: float = 0.0,
        clock: Callable[[], float] = time.time,
        accounts_on_file: Mapping[str, BankAccount] = ACCOUNTS_ON_FILE,
    ):
        self.settle_after = settle_after
        self.clock = clock
        self.accounts_on_file = accounts_on_file
        self.transfers: dict[str, Transfer] = {}
        """Every transfer initiated, by payment id."""
        self._by_key: dict[str, Transfer] = {}

    def resolve(self, account: BankAccount | AccountOnFile) -> BankAccount | None:
        """The account a transfer to ``account`` pays: itself, or the account on file it
        names (None when no account is on file under that reference)."""
        if isinstance(account, AccountOnFile):
            return self.accounts_on_file.get(account.account_on_file)
        return account

    def _new_id(self) -> str:
        while True:
            payment_id = f"PAY-{secrets.token_hex(5).upper()}"
            if payment_id not in self.transfers:
                return payment_id

    def initiate(self, body: Any, idempotency_key: str | None) -> tuple[int, PaymentResult]:
        """Initiate the transfer of a request body, once per idempotency key.

        Returns:
            201 and the new transfer, or 200 and the transfer first initiated with
            ``idempotency_key``.

        Raises:
            RequestRefused: (400) no idempotency key or a body that is not a
                :class:`TransferRequest`; (422) the key was used for a different request.
        """
        if not idempotency_key or len(idempotency_key) > 255:
            raise RequestRefused(400, "the Idempotency-Key header is required (1 to 255 chars)")
        request = _parse(TransferRequest, body)
        known = self._by_key.get(idempotency_key)
        if known is not None:
            if known.request != request:
                raise RequestRefused(
                    422, "this Idempotency-Key was used for a different transfer request"
                )
            return 200, known.result()
        now = self.clock()
        account = self.resolve(request.bank_account)
        reason = "unknown account on file" if account is None else transfer_problem(account)
        transfer = Transfer(
            payment_id=self._new_id(),
            idempotency_key=idempotency_key,
            request=request,
            account=account,
            initiated_at=now,
            status="rejected" if reason else "pending",
            reason=reason,
            updated_at=now,
        )
        self.transfers[transfer.payment_id] = transfer
        self._by_key[idempotency_key] = transfer
        return 201, transfer.result()

    def status(self, payment_id: str) -> PaymentResult:
        """The transfer's status now, settling or returning it when its time has come.

        Raises:
            RequestRefused: (404) no transfer has this id.
        """
        transfer = self.transfers.get(payment_id)
        if transfer is None:
            raise RequestRefused(404, "unknown payment id")
        now = self.clock()
        if transfer.status == "pending" and now >= transfer.initiated_at + self.settle_after:
            if transfer.account is not None and transfer.account.account_number.endswith("9999"):
                transfer.status, transfer.reason = "returned", "R03 no account"
            else:
                transfer.status = "settled"
            transfer.updated_at = now
        return transfer.result()
