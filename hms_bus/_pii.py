"""Sensitive fields: sealed on the bus and in the store, masked in everything people read.

Mark a field of an ``input=`` model with :class:`Sensitive`::

    class BankAccount(BaseModel):
        routing_number: str
        account_number: Annotated[str, hms_bus.Sensitive()]

hms-bus then collects the field's names (name and alias) from every registered model,
and wherever a payload or step result holds a value under one of those names, anywhere
in its JSON:

- **sealed** before it leaves the process that has it in clear: ``start`` and the worker
  (for what a handler returns) replace it with ``{"$sealed": "<token>", "mask":
  "******3377"}``, the token being the value encrypted and authenticated with
  ``pii.keys`` (Fernet: AES-128-CBC and HMAC-SHA256). So the bus, the coordinator's
  ledger and timers, the projected history and the dead-letter topic hold tokens, never
  the value;
- **opened** by the worker just before the handler runs: handlers get the value intact;
- **masked** when read back: ``status``, ``history`` and the CLI show the mask only;
- **scrubbed** from error messages and step log lines: an error or a log line of a step
  that mentions one of its sensitive values shows the mask instead.

Every process that starts workflows or runs workers needs the same key
(``HMS_PII__KEYS``; several, comma-separated: the first seals, all open; rotate in two
rollouts, adding the new key second everywhere, then moving it first).
Without one, a process makes a random key of its own: enough for the embedded default,
where everything runs in one process; a worker that cannot open a token fails the step,
saying so.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from pydantic import BaseModel, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from ._errors import ConfigError, HmsBusError

__all__ = ["SEALED", "Sealer", "Sensitive", "mask_text", "sensitive_names"]

SEALED = "$sealed"


@dataclass(frozen=True, slots=True)
class Sensitive:
    """Marks a model field as sensitive (see module docs): ``Annotated[str, Sensitive()]``.

    The field's JSON Schema gets ``"x-sensitive": true`` and ``"writeOnly": true``.
    """

    def __get_pydantic_json_schema__(
        self, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler(core_schema)
        schema["x-sensitive"] = True
        schema["writeOnly"] = True
        return schema


def sensitive_names(models: Iterable[type[BaseModel]]) -> set[str]:
    """The names and aliases of every field marked :class:`Sensitive` in ``models``
    and the models nested in them."""
    names: set[str] = set()
    seen: set[type[BaseModel]] = set()

    def visit(model: type[BaseModel]) -> None:
        if model in seen:
            return
        seen.add(model)
        for name, field in model.model_fields.items():
            if any(isinstance(m, Sensitive) for m in field.metadata):
                names.add(name)
                for alias in (field.alias, field.validation_alias, field.serialization_alias):
                    if isinstance(alias, str):
                        names.add(alias)
                if model.model_config.get("alias_generator") is not None:
                    gen = model.model_config["alias_generator"]
                    alias = gen(name) if callable(gen) else getattr(gen, "alias", None)
                    if isinstance(alias, str):
                        names.add(alias)
            for inner in _models_in(field.annotation):
                visit(inner)

    for model in models:
        visit(model)
    return names


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    out: list[type[BaseModel]] = []
    origin = typing.get_origin(annotation)
    if origin is not None or isinstance(annotation, types.UnionType):
        for arg in typing.get_args(annotation):
            out.extend(_models_in(arg))
    return out


def mask(value: str) -> str:
    """``******3377``: the last four characters of values of 8 or more, else stars."""
    return "*" * max(len(value) - 4, 4) + value[-4:] if len(value) >= 8 else "****"


def mask_text(text: str, values: Iterable[str]) -> str:
    """``text`` with every occurrence of each of ``values`` replaced by its mask."""
    for value in sorted(values, key=len, reverse=True):
        if value and value in text:
            text = text.replace(value, mask(value))
    return text


def is_sealed(value: Any) -> bool:
    """True for a sealed token object."""
    return isinstance(value, dict) and SEALED in value and isinstance(value[SEALED], str)


class Sealer:
    """Seals, opens and masks the sensitive values of JSON-ready data (see module docs)."""

    def __init__(self, names: set[str], keys: Iterable[str] = ()) -> None:
        self.names = frozenset(names)
        given = [k.strip() for k in keys if k.strip()]
        self.generated = not given
        try:
            fernets = [Fernet(k.encode()) for k in given] or [Fernet(Fernet.generate_key())]
        except ValueError as exc:
            raise ConfigError(
                "pii.keys: each key must be 32 url-safe base64-encoded bytes "
                "(make one with: python -c 'from cryptography.fernet import Fernet; "
                "print(Fernet.generate_key().decode())')"
            ) from exc
        self._fernet = MultiFernet(fernets)

    @property
    def active(self) -> bool:
        """False when no field is sensitive (then every method returns its input)."""
        return bool(self.names)

    def seal(self, data: Any, known: Collection[str] = ()) -> Any:
        """``data`` with every clear value under a sensitive name replaced by a token.

        ``known`` are sensitive values in clear (those a step's input held): a string
        equal to one is sealed wherever it is, under any name, and one that contains one
        has it masked, so a handler that copies a value elsewhere does not leak it.
        """
        if not self.names:
            return data
        sealed = self._walk(data, self._seal_value)
        return self._seal_known(sealed, [k for k in known if k]) if known else sealed

    def _seal_known(self, data: Any, known: list[str]) -> Any:
        if isinstance(data, str):
            if data in known:
                return self._seal_value(data)
            return mask_text(data, known) if any(k in data for k in known) else data
        if isinstance(data, dict):
            if is_sealed(data):
                return data
            return {k: self._seal_known(v, known) for k, v in data.items()}
        if isinstance(data, list):
            return [self._seal_known(v, known) for v in data]
        return data

    def open(self, data: Any, opened: list[str] | None = None) -> Any:
        """``data`` with every token replaced by its value (appended to ``opened``).

        Raises:
            HmsBusError: (not retriable) a token sealed with a key this process lacks.
        """
        if not self.names and not _has_token(data):
            return data

        def open_value(value: Any) -> Any:
            if not is_sealed(value):
                return value
            try:
                clear = self._fernet.decrypt(value[SEALED].encode()).decode()
            except (InvalidToken, ValueError) as exc:
                raise HmsBusError(
                    "cannot open a sealed sensitive value: it was sealed with a key this "
                    "process does not have; give every process the same HMS_PII__KEYS",
                    retriable=False,
                ) from exc
            if opened is not None:
                opened.append(clear)
            return clear

        return _tokens(data, open_value)

    def mask(self, data: Any) -> Any:
        """``data`` as people may see it: tokens (and any clear sensitive value) masked."""
        if not self.names and not _has_token(data):
            return data
        masked = _tokens(data, lambda v: v.get("mask", "****") if is_sealed(v) else v)
        return self._walk(masked, lambda v: mask(str(v)) if isinstance(v, str | int) else v)

    def _seal_value(self, value: Any) -> Any:
        if is_sealed(value) or value is None or isinstance(value, dict | list | bool):
            return value
        text = str(value)
        return {SEALED: self._fernet.encrypt(text.encode()).decode(), "mask": mask(text)}

    def _walk(self, data: Any, at_name: Any) -> Any:
        """Apply ``at_name`` to each value found under a sensitive name."""
        if isinstance(data, dict):
            if is_sealed(data):
                return data
            return {
                k: at_name(v) if k in self.names else self._walk(v, at_name)
                for k, v in data.items()
            }
        if isinstance(data, list):
            return [self._walk(v, at_name) for v in data]
        return data


def _tokens(data: Any, fn: Any) -> Any:
    """Apply ``fn`` to every token object in ``data`` (other values unchanged)."""
    if isinstance(data, dict):
        if is_sealed(data):
            return fn(data)
        return {k: _tokens(v, fn) for k, v in data.items()}
    if isinstance(data, list):
        return [_tokens(v, fn) for v in data]
    return data


def _has_token(data: Any) -> bool:
    if isinstance(data, dict):
        return is_sealed(data) or any(_has_token(v) for v in data.values())
    if isinstance(data, list):
        return any(_has_token(v) for v in data)
    return False
