"""Connections to Postgres for :class:`~hms_bus.store.postgres.PostgresStore`: the URL's
schema, the pools, and which asyncpg errors are an outage.

Connection failures (the database restarting, a connection refused or terminated) raise
:class:`~hms_bus.StoreError` with ``retriable=True``, so the roles back off and retry
without committing what they could not store; other database errors are not retriable.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from .._backends import redact
from .._errors import ConfigError, StoreError

__all__ = [
    "TRANSIENT",
    "Connection",
    "close_pool",
    "connection",
    "create_pool",
    "errors",
    "split_schema",
]

_IDENT_OK = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")


def split_schema(url: str) -> tuple[str, str]:
    """Split ``?schema=`` off ``url``: (url for asyncpg, schema)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = next((v for k, v in query if k == "schema"), "public")
    rest = [(k, v) for k, v in query if k != "schema"]
    if not schema or not set(schema) <= _IDENT_OK or schema[0].isdigit():
        raise ConfigError(
            f"invalid schema {schema!r} in store URL {redact(url)!r}: use lower-case letters, "
            "digits and '_', not starting with a digit"
        )
    scheme = "postgresql" if parts.scheme in ("postgres", "postgresql") else parts.scheme
    return urlunsplit(parts._replace(scheme=scheme, query=urlencode(rest))), schema


def unavailable(exc: BaseException, what: str) -> StoreError:
    return StoreError(f"{what}: {type(exc).__name__}: {exc}", retriable=True)


TRANSIENT: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    # The client library's own state gone wrong on a connection (seen when the server
    # restarts under load: "cannot switch to state 12; another operation is in
    # progress"): the connection is unusable, the operation may be repeated on another.
    asyncpg.InternalClientError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.TooManyConnectionsError,
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
)


@contextlib.asynccontextmanager
async def errors(what: str) -> AsyncIterator[None]:
    """Turn the asyncpg errors raised inside into :class:`StoreError` (see module docs)."""
    try:
        yield
    except StoreError:
        raise
    except TRANSIENT as exc:
        raise unavailable(exc, what) from exc
    except asyncpg.PostgresError as exc:
        raise StoreError(f"{what}: {type(exc).__name__}: {exc}", retriable=False) from exc


@contextlib.asynccontextmanager
async def connection(pool: asyncpg.Pool, what: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection of ``pool`` for one operation, with :func:`errors`' translation.

    A connection that was in use when anything but an error answered by the server
    happened (the connection broke, the client library lost track of its state, the
    operation was cancelled or timed out) is terminated instead of going back to the
    pool: what state it is in is unknown, and the next user must not find out. An error
    the server answered (a constraint, bad SQL, a deadlock) leaves the connection as good
    as new, and it is reused; one that closed it (a shutdown) has closed it already.
    """
    async with errors(what):
        conn = await pool.acquire()
        try:
            yield conn
        except BaseException as exc:
            if not isinstance(exc, asyncpg.PostgresError):
                # A connection the server closed has gone back to the pool by itself.
                with contextlib.suppress(asyncpg.InterfaceError):
                    conn.terminate()
            raise
        finally:
            await pool.release(conn)


class Connection(asyncpg.Connection):  # type: ignore[misc]
    """A pooled connection that goes back to its pool without a reset query.

    asyncpg resets a connection on release (advisory locks, cursors, LISTEN, settings):
    one more round trip per use, on every statement the roles send. The store keeps no
    session state on pooled connections: its advisory locks are transaction-scoped,
    it opens no cursors outside transactions, sets nothing after connecting, and listens
    on a connection of its own. An open transaction is still rolled back on release.
    """

    def get_reset_query(self) -> str:
        return ""


async def create_pool(
    dsn: str, schema: str, url: str, least: int, most: int, name: str, command_timeout: float
) -> asyncpg.Pool:
    """A pool of ``least``..``most`` connections named ``name`` (``application_name``),
    on ``schema``; ``url`` (redacted) names the store in errors."""
    try:
        return await asyncpg.create_pool(
            dsn,
            min_size=least,
            max_size=most,
            command_timeout=command_timeout,
            server_settings={"search_path": schema, "application_name": name},
            connection_class=Connection,
        )
    except TRANSIENT as exc:
        raise unavailable(exc, f"cannot connect to the store at {url}") from exc
    except asyncpg.PostgresError as exc:
        raise StoreError(f"the store at {url}: {exc}", retriable=False) from exc


async def close_pool(pool: asyncpg.Pool, within: float) -> None:
    """Close ``pool`` within ``within`` seconds, else terminate its connections."""
    try:
        await asyncio.wait_for(pool.close(), within)
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        pool.terminate()
