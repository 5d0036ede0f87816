"""Payloads of the grant approval workflow.

Field names follow the HMS documents (camelCase on the wire, ``applicationId``);
Python code may use either form. The models check types and shapes only: business
rules (a named applicant, a well-formed bank account) are the ``validateApp`` step's
job, so that a rule failure is a recorded workflow outcome rather than a refused start.

Fields marked :class:`hms_bus.Sensitive` (tax id, bank account number) reach handlers
intact and are sealed on the bus and masked everywhere people read them.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from hms_bus import Sensitive

__all__ = ["Applicant", "BankAccount", "GrantApplication"]


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class Applicant(_Model):
    """Who applies: a person or an organisation."""

    name: str | None = Field(None, description="Legal name; required by validateApp.")
    tax_id: Annotated[str | None, Sensitive()] = Field(
        None, description="Employer or taxpayer identification number (sensitive)."
    )
    email: str | None = None


class BankAccount(_Model):
    """Where an approved grant is paid (US ACH: ABA routing number and account number)."""

    routing_number: str = Field(description="Nine-digit ABA routing number.")
    account_number: Annotated[str, Sensitive()] = Field(description="4 to 17 digits (sensitive).")


class GrantApplication(_Model):
    """A grant application as submitted to the programme."""

    application_id: str = Field(min_length=1, max_length=64, description="e.g. GR-2023-55")
    program: str = "small-business-relief"
    amount: Decimal = Field(gt=0, max_digits=12, decimal_places=2, description="USD requested")
    region: str = "northeast"
    applicant: Applicant = Field(default_factory=Applicant)
    bank_account: BankAccount | None = None
