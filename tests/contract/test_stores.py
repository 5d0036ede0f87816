"""The StateStore contract on every backend: ``memory://`` (private and named) and Postgres.

Each class is one backend; the checks are :class:`contract.store.StoreContract`. A
check a backend could not pass would be overridden here, marked ``xfail(strict=True)``
with the reason, so that it fails loudly once the backend is fixed; none is.
"""

from __future__ import annotations

import uuid

import pytest

from contract.store import StoreContract


class TestMemoryStore(StoreContract):
    """``memory://``: a state private to each store."""

    SHARED = False

    @pytest.fixture
    def store_url(self) -> str:
        return "memory://"


class TestNamedMemoryStore(TestMemoryStore):
    """``memory://name``: one state per namespace, shared by the stores of the process."""

    SHARED = True

    @pytest.fixture
    def store_url(self) -> str:
        return f"memory://c{uuid.uuid4().hex[:12]}"


@pytest.mark.postgres
class TestPostgresStore(StoreContract):
    """``postgresql://`` on ``HMS_TEST_PG_URL``, in a schema of this test's own."""

    @pytest.fixture
    def store_url(self, pg_schema: str) -> str:
        return pg_schema
