"""The operations behind the ``hms-bus`` commands, as plain functions returning data.

:func:`load_app` finds the :class:`~hms_bus.Management` an ``APP`` argument names;
:func:`check_health`, :func:`topic_report`, :func:`migrate`, :func:`configuration` and
:func:`export_schemas` do what ``health``, ``topics``, ``migrate``, ``--dry-run`` and
``schemas export`` report, and return it as data (printed as JSON or through
``_render``). None of them prints anything.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from ._backends import open_bus, open_store, redact
from ._envelope import utcnow
from ._errors import ConfigError, HmsBusError
from ._management import Management

__all__ = [
    "SchemaExport",
    "check_health",
    "configuration",
    "export_schemas",
    "load_app",
    "migrate",
    "schema_files",
    "schema_models",
    "topic_report",
]


def load_app(spec: str) -> Management:
    """Import ``module:attribute`` (``module`` alone: ``module:mgmt``) and return the
    Management it names, calling it first if it is a function without arguments.

    Raises:
        ConfigError: the module does not import, lacks the attribute, or it is no
            Management; the message names ``spec``.
    """
    module_name, _, attr = spec.partition(":")
    attr = attr or "mgmt"
    if not module_name:
        raise ConfigError(f"app {spec!r} must look like 'module:attribute'")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except HmsBusError:
        raise
    except ModuleNotFoundError as exc:
        raise ConfigError(f"cannot import app {spec!r}: {exc}") from exc
    except Exception as exc:
        raise ConfigError(f"importing app {spec!r} failed: {type(exc).__name__}: {exc}") from exc
    try:
        obj: Any = getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"module {module_name!r} has no attribute {attr!r}") from None
    if callable(obj) and not isinstance(obj, Management):
        try:
            inspect.signature(obj).bind()
        except (TypeError, ValueError):
            raise ConfigError(
                f"{spec!r} is a callable that needs arguments, not an hms_bus.Management"
            ) from None
        try:
            obj = obj()
        except HmsBusError:
            raise
        except Exception as exc:
            raise ConfigError(f"calling {spec!r} failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(obj, Management):
        raise ConfigError(f"{spec!r} is a {type(obj).__name__}, not an hms_bus.Management")
    return obj


async def check_health(mgmt: Management) -> dict[str, Any]:
    """The health of ``mgmt``'s namespace, from the report its monitor keeps in the store.

    Returns:
        ``{"healthy": bool, "problems": [str], "report": HealthReport as JSON or None}``;
        with no report (no monitor has run) it is unhealthy.
    """
    from ._health import HealthReport

    mgmt.configure(postgres={"migrate": False})  # a probe never changes the schema
    async with open_store(mgmt.settings) as store:
        raw = await store.load_health()
    report = HealthReport.model_validate(raw) if raw is not None else None
    problems = (
        report.problems()
        if report is not None
        else ["no health report: no monitor has run in this namespace (hms-bus monitor APP)"]
    )
    return {
        "healthy": not problems,
        "problems": problems,
        "report": report.model_dump(mode="json") if report is not None else None,
    }


async def topic_report(mgmt: Management, *, create: bool = False) -> list[dict[str, Any]]:
    """The topics ``mgmt`` needs, then the others of its namespace (``hms.*`` without one).

    Args:
        mgmt: the app (or a bare client: then only the ``hms.*`` topics are needed).
        create: create the missing ones, with ``transport.partitions`` partitions.

    Returns:
        ``{"topic", "partitions" (None if missing), "status"}`` per topic; status is
        ``ok``, ``missing``, ``created`` or ``not used by this app``.
    """
    s, wanted = mgmt.settings, mgmt.required_topics()
    created: list[str] = []
    async with open_bus(s) as bus:
        existing = await bus.list_topics()
        missing = [t for t in wanted if t not in existing]
        if create and missing:
            await bus.ensure_topics(missing)
            created = missing
            existing = await bus.list_topics()
    prefix = f"{s.namespace}." if s.namespace else "hms."
    others = sorted(t for t in existing if t.startswith(prefix) and t not in wanted)
    rows = [
        {
            "topic": t,
            "partitions": existing.get(t),
            "status": "created" if t in created else "ok" if t in existing else "missing",
        }
        for t in wanted
    ]
    return rows + [
        {"topic": t, "partitions": existing[t], "status": "not used by this app"} for t in others
    ]


async def schedule_report(mgmt: Management) -> list[dict[str, Any]]:
    """The schedules ``mgmt`` registers (entered, for its store): name, workflow, rule,
    catch-up, the last tick started (None on a store of this process only, or before
    any scheduler ran it) and the next tick after it (or after now)."""
    stored = await mgmt._st.schedule_ticks() if mgmt.schedules else {}
    now = utcnow()
    rows: list[dict[str, Any]] = []
    for name, schedule in sorted(mgmt.schedules.items()):
        last = stored.get(name)
        nxt = schedule.next_after(max(last, now) if last is not None else now)
        rows.append(
            {
                "name": name,
                "workflow": schedule.workflow,
                "rule": schedule.spec
                + (
                    f" ({schedule.timezone})"
                    if schedule.cron and schedule.timezone != "UTC"
                    else ""
                ),
                "catchup": schedule.catchup,
                "last_tick": last.isoformat() if last is not None else None,
                "next_tick": nxt.isoformat(),
            }
        )
    return rows


async def migrate(url: str) -> tuple[list[str], str]:
    """Apply the schema migrations the Postgres store at ``url`` lacks.

    Returns:
        The names of the migrations applied, and where (the URL without its password,
        and the schema).
    """
    from .store.postgres import PostgresStore

    store = PostgresStore(url, migrate=False)
    applied = await store.migrate()
    return applied, f"{redact(url)} (schema {store.schema})"


def configuration(mgmt: Management, command: str) -> dict[str, str]:
    """What ``command`` would run with ``mgmt``'s settings, every one resolved and
    passwords hidden, by name (``--dry-run``).

    Raises:
        ConfigError: the settings name steps the app has no handler for.
    """
    s = mgmt.settings
    port = s.telemetry.http_port
    found = {
        "command": command,
        "service": s.service_name,
        "bus": redact(s.bus_url),
        "store": redact(s.store_url),
        "namespace": s.namespace or "(none)",
        "roles": ",".join(s.roles),
    }
    if "worker" in s.roles:
        found["steps"] = ",".join(d.qualname for d in mgmt._served_steps()) or "(none)"
        found["concurrency"] = str(s.worker.concurrency)
        found["shutdown grace"] = f"{s.worker.shutdown_grace:g}s"
    found["http"] = f"{s.telemetry.http_host}:{port}" if port is not None else "off"
    found["topics"] = ",".join(mgmt.required_topics())
    return found


# -- JSON Schema of payload models -------------------------------------------------


def schema_models(source: str) -> list[type[BaseModel]]:
    """The models ``source`` names: ``module`` (the models in its ``__all__``),
    ``module:Model``, or ``module:app`` (every ``input=`` model of a Management).

    Raises:
        ConfigError: ``source`` does not import or names no pydantic model.
    """
    module_name, _, attr = source.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import {module_name!r}: {exc}") from exc
    if not attr:
        names = getattr(module, "__all__", None)
        if names is None:
            raise ConfigError(f"module {module_name!r} has no __all__ listing its models")
        found = [getattr(module, n) for n in names]
        models = [m for m in found if isinstance(m, type) and issubclass(m, BaseModel)]
    else:
        obj = getattr(module, attr, None)
        if isinstance(obj, Management):
            models = obj._registry.models()
        elif isinstance(obj, type) and issubclass(obj, BaseModel):
            models = [obj]
        else:
            raise ConfigError(f"{source!r} is neither a pydantic model nor an hms_bus.Management")
    if not models:
        raise ConfigError(f"{source!r} names no pydantic models")
    return models


def schema_files(models: list[type[BaseModel]]) -> dict[str, str]:
    """File name -> JSON text of each model's JSON Schema (as validated, wire aliases)."""
    out: dict[str, str] = {}
    for model in models:
        schema = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            **model.model_json_schema(by_alias=True, mode="validation"),
        }
        out[f"{model.__name__}.json"] = json.dumps(schema, indent=2, ensure_ascii=False) + "\n"
    return out


@dataclass(frozen=True)
class SchemaExport:
    """How a folder compares with the models' schemas.

    Attributes:
        files: every schema file the models produce.
        stale: those missing from the folder or different there (written, unless checking).
        extra: ``*.json`` files in the folder that no model produces (never touched).
    """

    files: list[str]
    stale: list[str]
    extra: list[str]


def export_schemas(source: str, folder: Path, *, check: bool = False) -> SchemaExport:
    """Write the schemas of ``source``'s models that ``folder`` lacks or has out of date;
    with ``check``, write nothing and only compare.

    Raises:
        ConfigError: as :func:`schema_models`.
    """
    files = schema_files(schema_models(source))
    stale = [
        name
        for name, text in files.items()
        if not (folder / name).is_file() or (folder / name).read_text(encoding="utf-8") != text
    ]
    extra = (
        sorted(p.name for p in folder.glob("*.json") if p.is_file() and p.name not in files)
        if folder.is_dir()
        else []
    )
    if not check:
        folder.mkdir(parents=True, exist_ok=True)
        for name in stale:
            (folder / name).write_text(files[name], encoding="utf-8")
    return SchemaExport(list(files), stale, extra)
