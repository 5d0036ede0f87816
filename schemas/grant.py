"""Payloads of the grant approval workflow.

Field names follow the HMS documents (camelCase on the wire, ``applicationId``);
Python code may use either form. The models check types and shapes only: business
rules (a named applicant, a well-formed bank account) are the ``validateApp`` step's
job, so that a rule failure is a recorded workflow outcome rather than a refused start.

A payee's bank account comes in one of two forms (:data:`PayeeAccount`): the account
itself (:class:`BankAccount`, routing and account number), or an *account on file*
(:class:`AccountOnFile`): the reference of an account HMS-ACH already holds for the
payee, such as ``"12345"``, which HMS-ACH resolves to a routing and account number when
it pays. A plain string where a bank account is expected is an account on file.

The hms-mgmt chapter's start payload, ``{"applicationId": …, "applicantData": {…}}``, is
a :class:`GrantApplication` as it stands: ``applicantData`` is accepted for
``applicant``, and ``amount`` is optional (payment is a workflow of its own).

Fields marked :class:`hms_bus.Sensitive` (tax id, bank account number) reach handlers
intact and are sealed on the bus and masked everywhere people read them. An account on
file's reference is not sensitive: it names a record inside HMS-ACH, is of no use
outside it, and only ever pays that record's holder, so status and history show it.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Annotated, Any

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    model_validator,
)
from pydantic.alias_generators import to_camel

from hms_bus import Sensitive

__all__ = ["AccountOnFile", "Applicant", "BankAccount", "GrantApplication", "PayeeAccount"]


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


class AccountOnFile(_Model):
    """A bank account HMS-ACH already holds for the payee, named by its reference.

    HMS-ACH maps the reference to the account's routing and account number when it
    pays; an unknown reference is a rejected transfer, so no money moves. The
    reference alone may be given as a plain string: ``"12345"`` is
    ``{"accountOnFile": "12345"}``. It is not sensitive and shows as it is in status
    and history: an account number goes in a :class:`BankAccount`, never here.
    """

    account_on_file: str = Field(
        min_length=1,
        max_length=64,
        description="The reference of an account on file with HMS-ACH, e.g. 12345 "
        "(not sensitive: it is of no use outside HMS-ACH).",
    )

    @model_validator(mode="before")
    @classmethod
    def _from_reference(cls, data: Any) -> Any:
        """A plain string is the reference itself."""
        return {"accountOnFile": data} if isinstance(data, str) else data


def _payee_account_form(value: Any) -> str:
    """Which form of :data:`PayeeAccount` ``value`` is: an account on file when it is a
    string or names ``accountOnFile``, else the account itself."""
    if isinstance(value, str | AccountOnFile):
        return "AccountOnFile"
    if isinstance(value, Mapping) and ("accountOnFile" in value or "account_on_file" in value):
        return "AccountOnFile"
    return "BankAccount"


PayeeAccount = Annotated[
    Annotated[BankAccount, Tag("BankAccount")] | Annotated[AccountOnFile, Tag("AccountOnFile")],
    Discriminator(_payee_account_form),
]
"""Where a payee is paid: the account itself, or an account on file (see module docs)."""


class GrantApplication(_Model):
    """A grant application as submitted to the programme.

    The smallest one is an id and an applicant's name, the hms-mgmt chapter's
    ``{"applicationId": …, "applicantData": {"name": …}}``: it is decided on without an
    amount, which the payment (``grantPayment``) carries.
    """

    application_id: str = Field(min_length=1, max_length=64, description="e.g. GR-2023-55")
    program: str = "small-business-relief"
    amount: Decimal | None = Field(
        None,
        gt=0,
        max_digits=12,
        decimal_places=2,
        description="USD requested; optional, since payment is a workflow of its own.",
    )
    region: str = "northeast"
    applicant: Applicant = Field(
        default_factory=Applicant,
        validation_alias=AliasChoices("applicant", "applicantData"),
        description="Who applies; also accepted as applicantData (the hms-mgmt chapter's "
        "name), applicant first when both are given.",
    )
    bank_account: PayeeAccount | None = Field(
        None, description="Where a grant is paid: the account, or an account on file."
    )
