"""A site inspection booked by the grant approval workflow (``scheduleInspection``)."""

from __future__ import annotations

from datetime import date

from pydantic import Field

from .grant import _Model

__all__ = ["Inspection"]


class Inspection(_Model):
    """When and where a funded site is inspected."""

    application_id: str
    date: date
    office: str = Field(description="The regional inspection office.")
    region: str
