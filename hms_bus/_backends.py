"""Choosing a backend by URL scheme, importing its module only when it is used."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ._errors import ConfigError

__all__ = ["load_backend", "redact"]


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
