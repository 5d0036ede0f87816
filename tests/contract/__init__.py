"""Contract suites of the backend seams, written once and subclassed per backend.

``transport.TransportContract`` checks the ``Transport``/``Consumer`` Protocols and
``store.StoreContract`` the ``StateStore`` Protocol, as FastStream's
``tests/brokers/base/`` checks its brokers. Neither is collected itself (no ``Test``
prefix); ``test_transports.py`` and ``test_stores.py`` here subclass them once per
backend, and a new backend inherits every check by adding one subclass there.
Backend-specific tests (URL forms, key placement, races on Postgres) stay in
``tests/test_memory_transport.py``, ``tests/test_kafka_transport.py`` and
``tests/test_postgres_store.py``.

The modules are imported as ``contract.transport`` and ``contract.store``: ``tests/`` is
on the import path (as for ``from conftest import ...``), and this package asks pytest
to rewrite their asserts, which it does by itself only for test modules.
"""

import pytest

pytest.register_assert_rewrite("contract.transport", "contract.store")
