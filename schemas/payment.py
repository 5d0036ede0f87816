"""Payloads of the grant payment workflow (``grantPayment``).

A :class:`PaymentRequest` is what ``ManagementLayer.process_workflow`` takes: who is
paid (validated by HMS-SVC), how much and where (sent to HMS-ACH as an ACH credit).
:class:`PaymentResult` is what HMS-ACH answers, when a transfer is initiated and when
its status is checked later.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Literal

from pydantic import Field

from .grant import Applicant, BankAccount, _Model

__all__ = ["PaymentInstruction", "PaymentRequest", "PaymentResult", "PaymentStatus"]

PaymentStatus = Literal["pending", "settled", "returned", "rejected"]
"""An ACH credit's life: accepted and ``pending``, then ``settled`` (paid) or
``returned`` (the receiving bank sent it back); ``rejected`` when HMS-ACH refused it."""


class PaymentInstruction(_Model):
    """How much to pay, and where."""

    amount: Decimal = Field(gt=0, max_digits=12, decimal_places=2, description="USD")
    currency: Literal["USD"] = "USD"
    bank_account: BankAccount
    memo: str | None = Field(None, max_length=80, description="Shown on the recipient's statement.")


class PaymentRequest(_Model):
    """A grant payment to make: the input of ``grantPayment``."""

    application_id: str = Field(min_length=1, max_length=64, description="e.g. GR-2023-55")
    applicant: Applicant
    payment: PaymentInstruction


class PaymentResult(_Model):
    """HMS-ACH's answer about one transfer."""

    payment_id: str = Field(description="PAY-… assigned by HMS-ACH")
    status: PaymentStatus
    amount: Decimal
    currency: Literal["USD"] = "USD"
    reason: str | None = Field(None, description="Why it was rejected or returned.")
    updated_at: datetime | None = None
