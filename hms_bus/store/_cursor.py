"""The keyset cursor of ``list_workflows``, the same for every store.

A cursor is the (created_at, workflow_id) of the last row of a page, as URL-safe base64
of a JSON pair, so a page made by one store can be continued by another over the same
data (e.g. a CLI reading what a role wrote).
"""

from __future__ import annotations

import base64
from datetime import datetime

import orjson

from .._errors import ConfigError
from .._projection import WorkflowRow

__all__ = ["encode_cursor", "parse_cursor"]


def encode_cursor(row: WorkflowRow) -> str:
    """The cursor that continues a listing after ``row``."""
    raw = orjson.dumps([row.created_at.isoformat(), row.workflow_id])
    return base64.urlsafe_b64encode(raw).decode()


def parse_cursor(cursor: str) -> tuple[datetime, str]:
    """(created_at, workflow_id) of a cursor; ConfigError if it is not one."""
    try:
        created, wid = orjson.loads(base64.urlsafe_b64decode(cursor.encode()))
        return datetime.fromisoformat(created), str(wid)
    except (ValueError, TypeError, orjson.JSONDecodeError) as exc:
        raise ConfigError(f"invalid list cursor {cursor!r}") from exc
