"""Payloads of the grant payment workflow (``grantPayment``).

A :class:`PaymentRequest` is what ``ManagementLayer.process_workflow`` takes: who is
paid (validated by HMS-SVC), how much and where (sent to HMS-ACH as an ACH credit).
:class:`PaymentResult` is what HMS-ACH answers, when a transfer is initiated and when
its status is checked later.

A request comes in two forms, one model: the Management Layer chapter's flat form, the
amount at the top and the bank account on the applicant::

    {"application_id": "GR-2023-55", "amount": 2500,
     "applicant": {"name": "Jane Doe", "bank_account": "12345"}}

and the form it is turned into on validation, the only one on the bus::

    {"applicationId": "GR-2023-55", "applicant": {"name": "Jane Doe"},
     "payment": {"amount": "2500", "bankAccount": {"accountOnFile": "12345"}}}

(see :meth:`PaymentRequest.from_the_chapters_form`). The chapter's plain-string
``bank_account`` is an account on file (:class:`~schemas.grant.AccountOnFile`), which
HMS-ACH resolves; ``payment.bankAccount`` may be one too, or the account itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import Field, model_validator

from .grant import Applicant, PayeeAccount, _Model

__all__ = ["PaymentInstruction", "PaymentRequest", "PaymentResult", "PaymentStatus"]

PaymentStatus = Literal["pending", "settled", "returned", "rejected"]
"""An ACH credit's life: accepted and ``pending``, then ``settled`` (paid) or
``returned`` (the receiving bank sent it back); ``rejected`` when HMS-ACH refused it."""


class PaymentInstruction(_Model):
    """How much to pay, and where."""

    amount: Decimal = Field(gt=0, max_digits=12, decimal_places=2, description="USD")
    currency: Literal["USD"] = "USD"
    bank_account: PayeeAccount = Field(
        description="Where to pay: the account, or an account on file with HMS-ACH."
    )
    memo: str | None = Field(None, max_length=80, description="Shown on the recipient's statement.")


_FLAT_PAYMENT_FIELDS = ("amount", "currency", "memo")
_APPLICANT_ACCOUNT_KEYS = ("bank_account", "bankAccount")


class PaymentRequest(_Model):
    """A grant payment to make: the input of ``grantPayment``.

    Also accepted in the Management Layer chapter's flat form: ``amount`` at the top and
    the account to pay as the applicant's ``bank_account`` (a plain string is an account
    on file), which validation turns into this form (:meth:`from_the_chapters_form`).
    """

    application_id: str = Field(min_length=1, max_length=64, description="e.g. GR-2023-55")
    applicant: Applicant
    payment: PaymentInstruction

    @model_validator(mode="before")
    @classmethod
    def from_the_chapters_form(cls, data: Any) -> Any:
        """Turn the chapter's flat form into this model's form; leave any other input be.

        A mapping with a top-level ``amount`` is the flat form. Its ``amount`` (and
        ``currency``, ``memo`` if given) become ``payment``'s, and the applicant's
        ``bank_account`` moves to ``payment.bankAccount``, where a plain string is an
        account on file. Everything else stays where it is.

        Raises:
            ValueError: ``amount`` both at the top and in ``payment``, or a flat form
                whose applicant names no bank account.
        """
        if not isinstance(data, Mapping) or "amount" not in data:
            return data
        if "payment" in data:
            raise ValueError(
                "the amount is given twice: at the top (the chapter's form) and in "
                "payment; give one of them"
            )
        body = {k: v for k, v in data.items() if k not in _FLAT_PAYMENT_FIELDS}
        payment = {k: data[k] for k in _FLAT_PAYMENT_FIELDS if k in data}
        applicant = data.get("applicant")
        if isinstance(applicant, Mapping):
            account = next(
                (applicant[k] for k in _APPLICANT_ACCOUNT_KEYS if applicant.get(k) is not None),
                None,
            )
            if account is not None:
                payment["bankAccount"] = account
            body["applicant"] = {
                k: v for k, v in applicant.items() if k not in _APPLICANT_ACCOUNT_KEYS
            }
        if "bankAccount" not in payment:
            raise ValueError(
                "applicant.bank_account is required with a top-level amount: the account "
                'on file to pay (e.g. "12345"), or {routingNumber, accountNumber}'
            )
        body["payment"] = payment
        return body


class PaymentResult(_Model):
    """HMS-ACH's answer about one transfer."""

    payment_id: str = Field(description="PAY-… assigned by HMS-ACH")
    status: PaymentStatus
    amount: Decimal
    currency: Literal["USD"] = "USD"
    reason: str | None = Field(None, description="Why it was rejected or returned.")
    updated_at: datetime | None = None
