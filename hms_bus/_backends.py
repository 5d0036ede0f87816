"""Choosing a backend by URL scheme, importing its module only when it is used.

:func:`open_bus` and :func:`open_store` build the backends a :class:`~hms_bus.Settings`
names, with every option of its sections; :func:`scheme_of`, :func:`in_process` and
:func:`private` answer the questions callers ask of a URL, so that no caller parses one.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from ._errors import ConfigError

if TYPE_CHECKING:
    from ._settings import Settings
    from .store import StateStore
    from .transport import Transport

__all__ = ["in_process", "load_backend", "open_bus", "open_store", "private", "redact", "scheme_of"]


def scheme_of(url: str) -> str:
    """The URL's scheme, lower-case (``postgres`` is spelled ``postgresql``)."""
    scheme = urlsplit(url).scheme.lower() if isinstance(url, str) and "://" in url else ""
    return "postgresql" if scheme == "postgres" else scheme


def in_process(url: str) -> bool:
    """True for the embedded backends (``memory://``, ``memory://name``): their state
    lives in this process only."""
    return scheme_of(url) == "memory"


def private(url: str) -> bool:
    """True for ``memory://`` without a name: private to one Management."""
    return in_process(url) and urlsplit(url).netloc == ""


def open_bus(settings: Settings) -> Transport:
    """The (unentered) bus of ``settings``: ``bus_url`` with the ``transport`` section.

    Raises:
        ConfigError: an unknown scheme or a bad option.
    """
    from .transport import create_transport

    return create_transport(settings.bus_url, **settings.transport.options())


def open_store(settings: Settings, *, namespace: str | None = None) -> StateStore:
    """The (unentered) store of ``settings``: ``store_url`` with the ``postgres`` section,
    scoped to the settings' namespace (or ``namespace``).

    Raises:
        ConfigError: an unknown scheme or a bad option.
    """
    from .store import create_store

    ns = settings.namespace if namespace is None else namespace
    return create_store(settings.store_url, namespace=ns, **settings.postgres.model_dump())


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***``, for messages and logs."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return "<unparseable URL>"


def load_backend(kind: str, url: str, schemes: Mapping[str, str], **options: Any) -> Any:
    """Build the backend that ``schemes`` maps ``url``'s scheme to.

    Args:
        kind: "bus" or "store", for messages.
        url: the backend URL.
        schemes: scheme → ``"module:attribute"`` of the factory.
        **options: passed to the factory after the URL.

    Raises:
        ConfigError: an unknown scheme (naming the known ones), a backend this version
            does not ship, or a missing optional package (naming what to install).
    """
    scheme = urlsplit(url).scheme if isinstance(url, str) and "://" in url else ""
    target = schemes.get(scheme)
    if target is None:
        shown = redact(url) if isinstance(url, str) else url
        raise ConfigError(
            f"unknown {kind} URL {shown!r}: the scheme must be one of "
            f"{', '.join(s + '://' for s in schemes)}"
        )
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise ConfigError(
                f"the {scheme}:// {kind} is not available in this version of hms-bus"
            ) from exc
        raise ConfigError(
            f"the {scheme}:// {kind} needs the package {exc.name!r}: pip install hms-bus"
        ) from exc
    return getattr(module, attr)(url, **options)
