"""The ``hms-bus`` command line.

::

    hms-bus demo                                   grant approvals on the embedded default
    hms-bus start APP WORKFLOW [PAYLOAD] [--id ID] [--wait]
    hms-bus status [--app APP] WORKFLOW_ID
    hms-bus list [--app APP] [--workflow W] [--status S] [--limit N] [--cursor C]
    hms-bus history [--app APP] WORKFLOW_ID
    hms-bus cancel [--app APP] WORKFLOW_ID
    hms-bus worker APP [--steps wf.a,wf.b] [--concurrency N]
    hms-bus coordinator|projector|scheduler|monitor APP
    hms-bus run APP [--roles coordinator,projector]   every role (or those) in one process
    hms-bus topics [--app APP] [--create] [--partitions N] [--json]
    hms-bus migrate [--store URL]                  apply the store's schema migrations
    hms-bus schemas export MODULE[:APP] [--out DIR] [--check]   JSON Schema of payload models
    hms-bus health [--app APP] [--json]            live processes and open breaches; exit 1
                                                   when unhealthy (a probe)

Role commands (``worker``, ``coordinator``…, ``run``) also take ``--http-port N`` (serve
``/healthz`` and ``/metrics``) and ``--dry-run`` (resolve the configuration, print it,
start nothing).

``APP`` is ``module:attribute`` naming a :class:`~hms_bus.Management` (or a function
returning one); ``module`` alone means ``module:mgmt``. Bad input (an unknown workflow,
JSON that does not parse, an app that does not import) prints one line and exits 2.
Exit codes: 0 success, 1 a workflow ended failed or cancelled (or, for ``health``, the
installation is unhealthy), 2 bad input or configuration, 3 the bus or store failed,
130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import inspect
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import orjson
from pydantic import BaseModel

from ._backends import redact
from ._errors import ConfigError, HmsBusError, NotFoundError, WaitTimeoutError
from ._management import Management, init
from ._settings import ALL_ROLES
from ._status import WorkflowStatus
from .transport import create_transport

__all__ = ["main"]

EXIT_OK, EXIT_WORKFLOW_FAILED, EXIT_USAGE, EXIT_BACKEND, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_UNHEALTHY = 1


class UsageError(Exception):
    """Bad command-line input: printed as one line, exit 2."""


# -- app loading ----------------------------------------------------------------------


def load_app(spec: str) -> Management:
    """Import ``module:attribute`` and return the Management it names."""
    module_name, _, attr = spec.partition(":")
    attr = attr or "mgmt"
    if not module_name:
        raise UsageError(f"app {spec!r} must look like 'module:attribute'")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except HmsBusError:
        raise
    except ModuleNotFoundError as exc:
        raise UsageError(f"cannot import app {spec!r}: {exc}") from exc
    except Exception as exc:
        raise UsageError(f"importing app {spec!r} failed: {type(exc).__name__}: {exc}") from exc
    try:
        obj: Any = getattr(module, attr)
    except AttributeError:
        raise UsageError(f"module {module_name!r} has no attribute {attr!r}") from None
    if callable(obj) and not isinstance(obj, Management):
        try:
            inspect.signature(obj).bind()
        except (TypeError, ValueError):
            raise UsageError(
                f"{spec!r} is a callable that needs arguments, not an hms_bus.Management"
            ) from None
        try:
            obj = obj()
        except HmsBusError:
            raise
        except Exception as exc:
            raise UsageError(f"calling {spec!r} failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(obj, Management):
        raise UsageError(f"{spec!r} is a {type(obj).__name__}, not an hms_bus.Management")
    return obj


def _app_or_client(args: argparse.Namespace) -> Management:
    mgmt = load_app(args.app) if getattr(args, "app", None) else init(roles=())
    _apply_common(mgmt, args, roles=())
    return mgmt


def _apply_common(mgmt: Management, args: argparse.Namespace, **extra: Any) -> None:
    mgmt.configure(
        bus=args.bus, store=args.store, namespace=args.namespace, **{k: v for k, v in extra.items()}
    )


def _memory_note(mgmt: Management, what: str) -> None:
    s = mgmt.settings
    if s.store_url.startswith("memory:"):
        _err(
            f"note: the store is {s.store_url} (inside this process only), so {what} sees "
            "only this process's workflows; set HMS_STORE_URL or --store to a shared store"
        )


# -- output ---------------------------------------------------------------------------


def _err(message: str) -> None:
    sys.stderr.write(message + "\n")


def _fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    _err(f"hms-bus: error: {message}")
    raise SystemExit(code)


def _fmt_time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _json_out(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


def _print_status(st: WorkflowStatus) -> None:
    print(f"workflow   {st.workflow_id}")
    print(f"type       {st.workflow}")
    print(f"status     {st.status}{'  (SLA breached)' if st.sla_breached else ''}")
    print(f"started    {_fmt_time(st.created_at)}")
    print(f"finished   {_fmt_time(st.finished_at)}")
    if st.error:
        print(f"error      {st.error}")
    if st.result is not None:
        print(f"result     {json.dumps(st.result, default=str)}")
    if st.steps:
        print()
        rows = [("#", "STEP", "STATUS", "ATTEMPTS", "STARTED", "FINISHED", "ERROR")]
        for s in st.steps:
            rows.append(
                (
                    str(s.seq),
                    s.step,
                    s.status.value + (" (SLA)" if s.sla_breached else ""),
                    str(s.attempts),
                    _fmt_time(s.started_at),
                    _fmt_time(s.finished_at),
                    s.error or "",
                )
            )
        _table(rows)


def _table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1])


def _parse_payload(text: str | None) -> Any:
    if text is None:
        return {}
    source = "payload"
    if text == "-":
        text, source = sys.stdin.read(), "stdin"
    elif text.startswith("@"):
        path = text[1:]
        try:
            with open(path, encoding="utf-8") as fh:
                text, source = fh.read(), path
        except OSError as exc:
            raise UsageError(f"cannot read payload file {path!r}: {exc.strerror}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"{source} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from exc


# -- commands -------------------------------------------------------------------------


async def cmd_demo(args: argparse.Namespace) -> int:
    from step_handlers.demo import run_demo

    await run_demo(color=False if args.no_color else None)
    return EXIT_OK


async def cmd_start(args: argparse.Namespace) -> int:
    mgmt = load_app(args.app)
    payload = _parse_payload(args.payload)
    local = mgmt.settings.bus_url.startswith("memory:")
    # On an in-process bus nobody else can run the workflow: run it here and wait.
    _apply_common(mgmt, args, roles=ALL_ROLES if local else ())
    async with mgmt:
        started = await mgmt.start(args.workflow, payload, workflow_id=args.id)
        verb = "started" if started.created else "already exists:"
        _err(f"{verb} {started.workflow} {started.workflow_id}")
        if local:
            _err("(memory:// bus: running every role in this process until the workflow ends)")
        if not (args.wait or local):
            print(started.workflow_id)
            return EXIT_OK
        final = await mgmt.wait(started.workflow_id, timeout=args.timeout)
    if args.json:
        _json_out(final.model_dump(mode="json"))
    else:
        _print_status(final)
    return EXIT_OK if final.status == "completed" else EXIT_WORKFLOW_FAILED


async def cmd_status(args: argparse.Namespace) -> int:
    mgmt = _app_or_client(args)
    async with mgmt:
        st = await mgmt.status(args.workflow_id)
    if st is None:
        _memory_note(mgmt, "status")
        raise NotFoundError(f"no workflow {args.workflow_id!r}")
    if args.json:
        _json_out(st.model_dump(mode="json"))
    else:
        _print_status(st)
    return EXIT_OK


async def cmd_list(args: argparse.Namespace) -> int:
    mgmt = _app_or_client(args)
    async with mgmt:
        page = await mgmt.list(args.workflow, args.status, limit=args.limit, cursor=args.cursor)
    if args.json:
        _json_out(page.model_dump(mode="json"))
        return EXIT_OK
    if not page.items:
        _memory_note(mgmt, "list")
        print("no workflows")
        return EXIT_OK
    rows = [("WORKFLOW ID", "WORKFLOW", "STATUS", "STARTED", "FINISHED", "ERROR")]
    for w in page.items:
        rows.append(
            (
                w.workflow_id,
                w.workflow,
                w.status.value,
                _fmt_time(w.created_at),
                _fmt_time(w.finished_at),
                w.error or "",
            )
        )
    _table(rows)
    if page.next_cursor:
        _err(f"more: hms-bus list --cursor {page.next_cursor}")
    return EXIT_OK


async def cmd_history(args: argparse.Namespace) -> int:
    mgmt = _app_or_client(args)
    async with mgmt:
        events = await mgmt.history(args.workflow_id)
    if not events:
        _memory_note(mgmt, "history")
        raise NotFoundError(f"no history for workflow {args.workflow_id!r}")
    if args.json:
        _json_out([e.model_dump(mode="json") for e in events])
        return EXIT_OK
    for e in events:
        detail = []
        for name in ("step", "seq", "attempt", "outcome"):
            value = getattr(e, name, None)
            if value is not None:
                detail.append(f"{name}={value}")
        error = getattr(e, "error", None)
        if error is not None:
            detail.append(f"error={getattr(error, 'message', error)!r}")
        print(f"{e.ts.strftime('%H:%M:%S.%f')[:-3]}  {e.type:<18} {' '.join(detail)}")
    return EXIT_OK


async def cmd_cancel(args: argparse.Namespace) -> int:
    mgmt = _app_or_client(args)
    async with mgmt:
        requested = await mgmt.cancel(args.workflow_id, reason=args.reason)
    print("cancellation requested" if requested else "workflow has already ended")
    return EXIT_OK


async def cmd_topics(args: argparse.Namespace) -> int:
    mgmt = _app_or_client(args)
    s = mgmt.settings
    if s.bus_url.startswith("memory:"):
        _err(
            "note: the bus is memory:// (inside this process only); its topics exist only "
            "while an app runs. Set HMS_BUS_URL=kafka://… or --bus to manage a broker's topics."
        )
    wanted = mgmt.required_topics()
    options = s.transport.options()
    if args.partitions is not None:
        if args.partitions < 1:
            raise UsageError(f"--partitions must be at least 1, got {args.partitions}")
        options["partitions"] = args.partitions
    prefix = f"{s.namespace}." if s.namespace else ""
    created: list[str] = []
    async with create_transport(s.bus_url, **options) as bus:
        existing = await bus.list_topics()
        missing = [t for t in wanted if t not in existing]
        if args.create and missing:
            await bus.ensure_topics(missing)
            created = missing
            existing = await bus.list_topics()
    ours = [t for t in existing if t.startswith(prefix) and t not in wanted]
    if not prefix:  # without a namespace, only hms-bus's own topics are "ours"
        ours = [t for t in ours if t.startswith("hms.")]
    rows: list[dict[str, Any]] = []
    for name in wanted:
        state = "created" if name in created else "ok" if name in existing else "missing"
        rows.append({"topic": name, "partitions": existing.get(name), "status": state})
    for name in sorted(ours):
        rows.append({"topic": name, "partitions": existing[name], "status": "not used by this app"})
    if args.json:
        _json_out(rows)
    else:
        table = [("TOPIC", "PARTITIONS", "STATUS")]
        table += [(r["topic"], str(r["partitions"] or "-"), r["status"]) for r in rows]
        _table(table)
        still = [r["topic"] for r in rows if r["status"] == "missing"]
        if still:
            _err(f"{len(still)} topic(s) missing; run this command again with --create")
    return EXIT_OK


async def cmd_migrate(args: argparse.Namespace) -> int:
    mgmt = _app_or_client(args)
    url = mgmt.settings.store_url
    if not url.startswith(("postgresql:", "postgres:")):
        raise UsageError(
            f"the store {redact(url)!r} has no schema to migrate; "
            "give --store postgresql://… or set HMS_STORE_URL"
        )
    from .store.postgres import PostgresStore

    store = PostgresStore(url, migrate=False)
    applied = await store.migrate()
    where = f"{redact(url)} (schema {store.schema})"
    if applied:
        print(f"applied {len(applied)} migration(s) to {where}: {', '.join(applied)}")
    else:
        print(f"{where} is up to date")
    return EXIT_OK


def _schema_models(source: str) -> list[type[BaseModel]]:
    """The models ``source`` names: ``module`` (the models in its ``__all__``),
    ``module:Model``, or ``module:app`` (every ``input=`` model of a Management)."""
    module_name, _, attr = source.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import {module_name!r}: {exc}") from exc
    if not attr:
        names = getattr(module, "__all__", None)
        if names is None:
            raise UsageError(f"module {module_name!r} has no __all__ listing its models")
        found = [getattr(module, n) for n in names]
        models = [m for m in found if isinstance(m, type) and issubclass(m, BaseModel)]
    else:
        obj = getattr(module, attr, None)
        if isinstance(obj, Management):
            models = obj._registry.models()
        elif isinstance(obj, type) and issubclass(obj, BaseModel):
            models = [obj]
        else:
            raise UsageError(f"{source!r} is neither a pydantic model nor an hms_bus.Management")
    if not models:
        raise UsageError(f"{source!r} names no pydantic models")
    return models


def _schema_files(models: list[type[BaseModel]]) -> dict[str, str]:
    """File name -> JSON text of each model's JSON Schema (as validated, wire aliases)."""
    out: dict[str, str] = {}
    for model in models:
        schema = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            **model.model_json_schema(by_alias=True, mode="validation"),
        }
        out[f"{model.__name__}.json"] = json.dumps(schema, indent=2, ensure_ascii=False) + "\n"
    return out


async def cmd_schemas_export(args: argparse.Namespace) -> int:
    return _schemas_export(args)  # file work only: nothing to await


def _schemas_export(args: argparse.Namespace) -> int:
    files = _schema_files(_schema_models(args.source))
    out = Path(args.out)
    stale = [
        name
        for name, text in files.items()
        if not (out / name).is_file() or (out / name).read_text(encoding="utf-8") != text
    ]
    extra = (
        sorted(p.name for p in out.glob("*.json") if p.is_file() and p.name not in files)
        if out.is_dir()
        else []
    )
    if args.check:
        if not stale and not extra:
            print(f"{out}: {len(files)} schema(s) match the models")
            return EXIT_OK
        for name in stale:
            _err(
                f"{out / name}: {'differs from' if (out / name).exists() else 'missing for'} "
                "the model"
            )
        for name in extra:
            _err(f"{out / name}: no model of {args.source} produces it")
        _err(f"regenerate with: hms-bus schemas export {args.source} --out {args.out}")
        return EXIT_WORKFLOW_FAILED
    out.mkdir(parents=True, exist_ok=True)
    for name in stale:
        (out / name).write_text(files[name], encoding="utf-8")
    print(
        f"{out}: wrote {len(stale)} schema(s), {len(files) - len(stale)} unchanged"
        + (f"; not produced by {args.source} (left alone): {', '.join(extra)}" if extra else "")
    )
    return EXIT_OK


async def cmd_health(args: argparse.Namespace) -> int:
    mgmt = _app_or_client(args)
    s = mgmt.settings
    if s.store_url.startswith("memory:"):
        raise UsageError(
            f"the store is {s.store_url} (inside one process only): health reads the report "
            "the monitor writes to a shared store; give --store postgresql://… or set "
            "HMS_STORE_URL"
        )
    from ._events import utcnow
    from ._health import HealthReport
    from .store import create_store

    store = create_store(
        s.store_url, namespace=s.namespace, **{**s.postgres.model_dump(), "migrate": False}
    )
    async with store:
        raw = await store.load_health()
    if raw is None:
        problems = ["no health report: no monitor has run in this namespace (hms-bus monitor APP)"]
        report = None
    else:
        report = HealthReport.model_validate(raw)
        problems = report.problems()
    healthy = not problems
    if args.json:
        _json_out(
            {
                "healthy": healthy,
                "problems": problems,
                "report": report.model_dump(mode="json") if report else None,
            }
        )
        return EXIT_OK if healthy else EXIT_UNHEALTHY
    if report is not None:
        age = (utcnow() - report.at).total_seconds()
        print(
            f"{'healthy' if healthy else 'UNHEALTHY'}: report of monitor {report.monitor}, "
            f"{age:.0f}s old"
        )
        rows = [("PROCESS", "SERVICE", "ROLES", "IN FLIGHT", "DONE", "LAG", "LAST SEEN", "STATE")]
        for p in sorted(report.processes, key=lambda p: (p.state, p.service, p.process_id)):
            rows.append(
                (
                    p.process_id,
                    p.service,
                    ",".join(p.roles),
                    str(p.in_flight),
                    str(p.steps_done),
                    str(sum(p.lag.values())),
                    _fmt_time(p.last_seen.astimezone()),
                    p.state,
                )
            )
        if len(rows) > 1:
            _table(rows)
        else:
            print("no process has sent a heartbeat")
        if report.breaches:
            print("\nopen SLA breaches:")
            _table(
                [("WORKFLOW ID", "WORKFLOW", "STEP", "SLA", "SINCE")]
                + [
                    (
                        b.workflow_id,
                        b.workflow,
                        f"{b.step} (seq {b.seq})" if b.step else "(workflow)",
                        f"{b.sla:g}s",
                        _fmt_time(b.since.astimezone()),
                    )
                    for b in report.breaches
                ]
            )
        if report.stuck:
            print("\nstuck steps:")
            _table(
                [("WORKFLOW ID", "STEP", "ATTEMPT", "WORKER", "STARTED")]
                + [
                    (
                        t.workflow_id,
                        f"{t.workflow}.{t.step} (seq {t.seq})",
                        str(t.attempt),
                        t.worker,
                        _fmt_time(t.started_at.astimezone()),
                    )
                    for t in report.stuck
                ]
            )
    if problems:
        print("\nunhealthy:" if report is not None else "UNHEALTHY:")
        for problem in problems:
            print(f"  - {problem}")
    return EXIT_OK if healthy else EXIT_UNHEALTHY


async def cmd_role(args: argparse.Namespace) -> int:
    mgmt = load_app(args.app)
    roles: tuple[str, ...] = (args.command,)
    if args.command == "run":
        roles = ALL_ROLES
        if args.roles:
            roles = tuple(r.strip() for r in args.roles.split(",") if r.strip())
            bad = [r for r in roles if r not in ALL_ROLES]
            if bad or not roles:
                raise UsageError(
                    f"--roles: unknown role(s) {', '.join(map(repr, bad)) or '(none given)'}; "
                    f"choose from {', '.join(ALL_ROLES)}"
                )
    worker: dict[str, Any] = {}
    if getattr(args, "steps", None):
        worker["steps"] = [s.strip() for s in args.steps.split(",") if s.strip()]
    if getattr(args, "concurrency", None):
        worker["concurrency"] = args.concurrency
    telemetry = {"http_port": args.http_port} if args.http_port is not None else None
    _apply_common(mgmt, args, roles=roles, worker=worker or None, telemetry=telemetry)
    s = mgmt.settings
    if args.dry_run:
        return _dry_run(mgmt, args.command)
    if s.bus_url.startswith("memory:") and set(roles) != set(ALL_ROLES):
        _err(
            "warning: the bus is memory:// (inside this process only): a lone "
            f"{args.command} cannot reach the others. Set HMS_BUS_URL=kafka://… or use 'run'."
        )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, mgmt.request_stop)
    async with mgmt:
        served = ""
        w = mgmt.role("worker")
        if w is not None:
            served = f"; steps: {', '.join(getattr(w, 'steps', []))}"
        _err(
            f"hms-bus {args.command}: {s.service_name} on {redact(s.bus_url)} / "
            f"{redact(s.store_url)}, "
            f"roles {','.join(roles)}{served}. Ctrl-C or SIGTERM to stop."
        )
        await mgmt.serve()
        _err("stopping: draining in-flight work")
    _err("stopped")
    return EXIT_OK


def _dry_run(mgmt: Management, command: str) -> int:
    """Print what ``command`` would run, with every setting resolved, and connect to nothing."""
    from ._telemetry import check_environment

    check_environment()
    s = mgmt.settings
    served = [d.qualname for d in mgmt._served_steps()]
    port = s.telemetry.http_port
    rows = [
        ("command", command),
        ("service", s.service_name),
        ("bus", redact(s.bus_url)),
        ("store", redact(s.store_url)),
        ("namespace", s.namespace or "(none)"),
        ("roles", ",".join(s.roles)),
    ]
    if "worker" in s.roles:
        rows.append(("steps", ",".join(served) or "(none)"))
        rows.append(("concurrency", str(s.worker.concurrency)))
        rows.append(("shutdown grace", f"{s.worker.shutdown_grace:g}s"))
    rows.append(("http", f"{s.telemetry.http_host}:{port}" if port is not None else "off"))
    rows.append(("topics", ",".join(mgmt.required_topics())))
    _table(rows)
    print("dry run: configuration is valid; nothing was started")
    return EXIT_OK


# -- parser ---------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--bus", help="bus URL (default: the app's, HMS_BUS_URL, memory://)")
    common.add_argument("--store", help="store URL (default: the app's, HMS_STORE_URL, memory://)")
    common.add_argument("--namespace", help="topic and group prefix (HMS_NAMESPACE)")
    common.add_argument(
        "--log-level",
        default=None,
        help="logging level (HMS_LOG_LEVEL; INFO for role commands, else WARNING)",
    )

    p = argparse.ArgumentParser(
        prog="hms-bus", description="hms-bus: event-driven workflows on a message bus."
    )
    from . import __version__

    p.add_argument("--version", action="version", version=f"hms-bus {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("demo", help="run grant approvals on the embedded default")
    d.add_argument("--no-color", action="store_true", help="plain output")
    d.set_defaults(func=cmd_demo)

    s = sub.add_parser("start", parents=[common], help="start a workflow")
    s.add_argument("app", help="module:attribute of the app")
    s.add_argument("workflow", help="workflow name")
    s.add_argument("payload", nargs="?", help="JSON payload, @file, or - for stdin (default {})")
    s.add_argument("--id", help="workflow id (makes start idempotent)")
    s.add_argument("--wait", action="store_true", help="wait for the end and print the status")
    s.add_argument("--timeout", type=float, default=None, help="seconds to wait (with --wait)")
    s.add_argument("--json", action="store_true", help="print the final status as JSON")
    s.set_defaults(func=cmd_start)

    for name, func, text in (
        ("status", cmd_status, "show a workflow and its steps"),
        ("history", cmd_history, "show a workflow's events"),
        ("cancel", cmd_cancel, "cancel a workflow"),
    ):
        c = sub.add_parser(name, parents=[common], help=text)
        c.add_argument("workflow_id")
        c.add_argument("--app", help="module:attribute (default: bus/store from the environment)")
        if name == "cancel":
            c.add_argument("--reason", help="recorded as the workflow's error")
        else:
            c.add_argument("--json", action="store_true", help="print JSON")
        c.set_defaults(func=func)

    ls = sub.add_parser("list", parents=[common], help="list workflows, newest first")
    ls.add_argument("--app", help="module:attribute (default: bus/store from the environment)")
    ls.add_argument("--workflow", help="only this workflow")
    ls.add_argument("--status", help="running, completed, failed or cancelled")
    ls.add_argument("--limit", type=int, default=20, help="rows per page (20)")
    ls.add_argument("--cursor", help="next_cursor of the previous page")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.set_defaults(func=cmd_list)

    tp = sub.add_parser(
        "topics", parents=[common], help="list the bus topics an app needs; create missing ones"
    )
    tp.add_argument("--app", help="module:attribute (default: only the hms.* topics)")
    tp.add_argument("--create", action="store_true", help="create the missing topics")
    tp.add_argument(
        "--partitions", type=int, help="partitions of created topics (HMS_TRANSPORT__PARTITIONS)"
    )
    tp.add_argument("--json", action="store_true", help="print JSON")
    tp.set_defaults(func=cmd_topics)

    mg = sub.add_parser(
        "migrate", parents=[common], help="create or upgrade the Postgres store's tables"
    )
    mg.add_argument("--app", help="module:attribute (default: the store from the environment)")
    mg.set_defaults(func=cmd_migrate)

    sc = sub.add_parser("schemas", help="JSON Schema of payload models")
    scs = sc.add_subparsers(dest="schemas_command", required=True, metavar="SUBCOMMAND")
    ex = scs.add_parser(
        "export", help="write each model's JSON Schema to a directory (or --check it)"
    )
    ex.add_argument(
        "source",
        help="module (the models in its __all__), module:Model, or module:app "
        "(the app's input= models)",
    )
    ex.add_argument("--out", default="schemas/json", help="directory (default schemas/json)")
    ex.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if a file is missing, differs or is extra",
    )
    ex.set_defaults(func=cmd_schemas_export)

    hl = sub.add_parser(
        "health",
        parents=[common],
        help="live processes, open SLA breaches and stuck steps; exit 1 when unhealthy",
    )
    hl.add_argument("--app", help="module:attribute (default: the store from the environment)")
    hl.add_argument("--json", action="store_true", help="print JSON")
    hl.set_defaults(func=cmd_health)

    for role in (*ALL_ROLES, "run"):
        text = "run every role in one process" if role == "run" else f"run the {role} role"
        r = sub.add_parser(role, parents=[common], help=text)
        r.add_argument("app", help="module:attribute of the app")
        if role == "run":
            r.add_argument(
                "--roles",
                help="comma-separated roles to run here (default: all), "
                "e.g. coordinator,projector,scheduler",
            )
        if role in ("worker", "run"):
            r.add_argument(
                "--steps", help="comma-separated workflow.step names to serve (default: all)"
            )
            r.add_argument(
                "--concurrency", type=int, help="handlers at once (HMS_WORKER__CONCURRENCY)"
            )
        r.add_argument(
            "--http-port",
            type=int,
            help="serve /healthz and Prometheus /metrics on this port (HMS_TELEMETRY__HTTP_PORT)",
        )
        r.add_argument(
            "--dry-run",
            action="store_true",
            help="load the app, resolve every setting, print them and exit without connecting",
        )
        r.set_defaults(func=cmd_role)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hms-bus`` console script; returns the exit code."""
    args = _parser().parse_args(argv)
    default = "INFO" if args.func is cmd_role else "WARNING"
    level = str(
        getattr(args, "log_level", None) or os.environ.get("HMS_LOG_LEVEL") or default
    ).upper()
    if level not in logging.getLevelNamesMapping():
        _fail(f"unknown log level {args.log_level!r}")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        code: int = asyncio.run(args.func(args))
        return code
    except KeyboardInterrupt:
        _err("interrupted")
        return EXIT_INTERRUPTED
    except (UsageError, ConfigError, NotFoundError) as exc:
        _fail(str(exc), EXIT_USAGE)
    except WaitTimeoutError as exc:
        _fail(str(exc), EXIT_WORKFLOW_FAILED)
    except HmsBusError as exc:
        _fail(str(exc), EXIT_BACKEND)


if __name__ == "__main__":
    raise SystemExit(main())
