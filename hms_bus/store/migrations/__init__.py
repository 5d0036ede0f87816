"""The store's SQL migrations, applied in order of their number (``NNNN_name.sql``).

:func:`migrate` applies those a schema lacks; ``PostgresStore`` calls it on connect
(unless ``postgres.migrate`` is off) and ``hms-bus migrate`` calls it on its own.
"""

from __future__ import annotations

from importlib import resources

import asyncpg

__all__ = ["MIGRATIONS", "migrate"]


def _migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every shipped migration, in order."""
    out = []
    for entry in resources.files(__name__).iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:4].isdigit():
            out.append((int(name[:4]), name, entry.read_text(encoding="utf-8")))
    return sorted(out)


MIGRATIONS = _migrations()
"""The shipped migrations: (version, file name, SQL)."""


async def migrate(conn: asyncpg.Connection, schema: str) -> list[str]:
    """Apply the migrations ``schema`` lacks; return the names applied.

    Safe when several processes start at once: the work runs in one transaction under
    an advisory lock per schema, so one applies them and the others find them done.
    """
    applied: list[str] = []
    async with conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"hms-bus:migrate:{schema}"
        )
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        await conn.execute(
            f'CREATE TABLE IF NOT EXISTS "{schema}".hms_schema_migrations ('
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {
            r["version"]
            for r in await conn.fetch(f'SELECT version FROM "{schema}".hms_schema_migrations')
        }
        await conn.execute(f'SET LOCAL search_path TO "{schema}"')
        for version, name, sql in MIGRATIONS:
            if version in done:
                continue
            await conn.execute(sql)
            await conn.execute(
                "INSERT INTO hms_schema_migrations (version, name) VALUES ($1, $2)", version, name
            )
            applied.append(name)
    return applied
