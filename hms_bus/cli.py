"""The ``hms-bus`` command line: each command parses, calls the library, prints the result.

::

    hms-bus demo                                   grant approvals on the embedded default
    hms-bus start APP WORKFLOW [PAYLOAD] [--id ID] [--wait]
    hms-bus status [--app APP] WORKFLOW_ID
    hms-bus list [--app APP] [--workflow W] [--status S] [--limit N] [--cursor C]
    hms-bus history [--app APP] WORKFLOW_ID
    hms-bus cancel [--app APP] WORKFLOW_ID
    hms-bus signal APP WORKFLOW_ID NAME [PAYLOAD] [--id SIGNAL_ID]   wake a waiting workflow
    hms-bus schedules APP [--json]                 the app's schedules and their next ticks
    hms-bus diagram APP [WORKFLOW]                 mermaid flowcharts of the definitions
    hms-bus redrive APP WORKFLOW_ID [--from-step S]   resume a failed or cancelled workflow
    hms-bus dead-letters list|show|redrive [--app APP] [--reason R] [--since 2h]
    hms-bus prune --older-than 30d [--dry-run]     delete workflows finished long ago
    hms-bus why APP WORKFLOW_ID [--json]           what a workflow waits for, and the fix
    hms-bus ui APP [--port 8080]                   the operator's console in the browser
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
start nothing). Every command but ``schemas export`` takes ``--no-color``: colour is
used only on a terminal, and never with ``--no-color`` or ``NO_COLOR`` set.

``APP`` is ``module:attribute`` naming a :class:`~hms_bus.Management` (or a function
returning one); ``module`` alone means ``module:mgmt``. Bad input (an unknown workflow,
JSON that does not parse, an app that does not import) prints one line and exits 2.
Exit codes: 0 success; 1 a workflow ended failed or cancelled (or, for ``health``, the
installation is unhealthy); 2 bad input or configuration; 3 the bus or store failed;
130 interrupted (Ctrl-C); 141 standard output was closed early (``hms-bus list | head
-1``; 128 + SIGPIPE, the status a shell reports for a command ended by a broken pipe);
143 stopped by SIGTERM (role commands instead stop gracefully and exit 0). None of these
prints a traceback.

How commands are declared and run is in ``_cli_base``; the role commands are in
``_cli_roles``; what commands do beyond the public API, in ``_admin``; how results look
(JSON or ``rich`` tables), in ``_render``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click

from . import __version__
from ._admin import (
    check_health,
    export_schemas,
    load_app,
    migrate,
    schedule_report,
    topic_report,
)
from ._backends import in_process, redact, scheme_of
from ._cli_base import (
    EXIT_OK,
    EXIT_UNHEALTHY,
    EXIT_WORKFLOW_FAILED,
    Common,
    Group,
    UsageError,
    app_argument,
    command,
    configure,
    err,
    option,
    parse,
    run,
)
from ._cli_roles import add_role_commands
from ._dead_letters import letters, redrive_letter
from ._diagram import mermaid
from ._envelope import utcnow
from ._errors import NotFoundError
from ._management import Management, init
from ._render import (
    health_view,
    history_view,
    letters_view,
    page_view,
    schedules_view,
    topics_view,
    why_view,
    workflow_view,
)
from ._retention import prune
from ._settings import ALL_ROLES
from ._why import explain
from .store import Pruned
from .ui import console_server

__all__ = ["cli", "load_app", "main"]


@click.group(
    "hms-bus",
    cls=Group,
    no_args_is_help=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(
    __version__,
    "--version",
    message="hms-bus %(version)s",
    help="show program's version number and exit",
)
def cli() -> None:
    """hms-bus: event-driven workflows on a message bus."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hms-bus`` console script; returns the exit code.

    Bad input and failures print one ``hms-bus: error:`` line and raise ``SystemExit``
    with their exit code; so do ``--help`` and ``--version`` (code 0).
    """
    return run(cli, argv)


def _json(text: str = "print JSON") -> click.Option:
    return option("--json", "as_json", is_flag=True, help=text)


def _app(text: str = "module:attribute (default: bus/store from the environment)") -> click.Option:
    return option("--app", help=text)


# -- apps and input ----------------------------------------------------------------------


def _client(c: Common, app: str | None) -> Management:
    """The app (or, without one, a bare client of the environment's bus and store)."""
    return configure(load_app(app) if app else init(roles=()), c, roles=())


def _memory_note(mgmt: Management, what: str) -> None:
    url = mgmt.settings.store_url
    if in_process(url):
        err(
            f"note: the store is {url} (inside this process only), so {what} sees "
            "only this process's workflows; set HMS_STORE_URL or --store to a shared store"
        )


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


@command(
    cli,
    "demo",
    "run grant approvals on the embedded default",
    option("--no-color", is_flag=True, help="plain output"),
    common=False,
)
async def cmd_demo(c: Common) -> int:
    """Run the reference application's grant approvals on the embedded default."""
    run_demo = _reference_demo()

    await run_demo(color=c.screen().color)
    return EXIT_OK


def _reference_demo() -> Any:
    """The reference application's demo, imported from the working directory (a checkout
    of the hms-bus repository): the wheel ships the framework, not the reference app."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        from step_handlers.demo import run_demo
    except ModuleNotFoundError as exc:
        if exc.name not in ("step_handlers", "step_handlers.demo", "schemas"):
            raise
        raise UsageError(
            "the demo runs the reference application (step_handlers/ and schemas/ of the "
            "hms-bus repository), which is not here: run it from a checkout "
            "(git clone … hms-bus && cd hms-bus && pip install . && hms-bus demo)"
        ) from exc
    return run_demo


@command(
    cli,
    "start",
    "start a workflow",
    app_argument(),
    click.Argument(["workflow"], help="workflow name"),
    click.Argument(
        ["payload"], help="JSON payload, @file, or - for stdin (default {})", required=False
    ),
    option("--id", "workflow_id", help="workflow id (makes start idempotent)"),
    option("--wait", is_flag=True, help="wait for the end and print the status"),
    option("--timeout", type=float, help="seconds to wait (with --wait)"),
    _json("print the final status as JSON"),
)
async def cmd_start(
    c: Common,
    *,
    app: str,
    workflow: str,
    payload: str | None,
    workflow_id: str | None,
    wait: bool,
    timeout: float | None,
    as_json: bool,
) -> int:
    """Start a workflow; with ``--wait`` (or on an in-process bus) print how it ended."""
    mgmt = load_app(app)
    data = _parse_payload(payload)
    local = in_process(configure(mgmt, c).settings.bus_url)
    # On an in-process bus nobody else can run the workflow: run it here and wait.
    mgmt.configure(roles=ALL_ROLES if local else ())
    async with mgmt:
        started = await mgmt.start(workflow, data, workflow_id=workflow_id)
        verb = "started" if started.created else "already exists:"
        err(f"{verb} {started.workflow} {started.workflow_id}")
        if local:
            err("(memory:// bus: running every role in this process until the workflow ends)")
        if not (wait or local):
            print(started.workflow_id)
            return EXIT_OK
        final = await mgmt.wait(started.workflow_id, timeout=timeout)
    c.screen().show(final.model_dump(mode="json"), workflow_view, as_json=as_json)
    return EXIT_OK if final.status == "completed" else EXIT_WORKFLOW_FAILED


@command(
    cli, "status", "show a workflow and its steps", click.Argument(["workflow_id"]), _app(), _json()
)
async def cmd_status(c: Common, *, workflow_id: str, app: str | None, as_json: bool) -> int:
    """Show a workflow and its steps."""
    mgmt = _client(c, app)
    async with mgmt:
        st = await mgmt.status(workflow_id)
    if st is None:
        _memory_note(mgmt, "status")
        raise NotFoundError(f"no workflow {workflow_id!r}")
    c.screen().show(st.model_dump(mode="json"), workflow_view, as_json=as_json)
    return EXIT_OK


@command(
    cli, "history", "show a workflow's events", click.Argument(["workflow_id"]), _app(), _json()
)
async def cmd_history(c: Common, *, workflow_id: str, app: str | None, as_json: bool) -> int:
    """Show a workflow's events, in order."""
    mgmt = _client(c, app)
    async with mgmt:
        events = await mgmt.history(workflow_id)
    if not events:
        _memory_note(mgmt, "history")
        raise NotFoundError(f"no history for workflow {workflow_id!r}")
    docs = [e.model_dump(mode="json") for e in events]
    c.screen().show(docs, history_view, as_json=as_json)
    return EXIT_OK


@command(
    cli,
    "cancel",
    "cancel a workflow",
    click.Argument(["workflow_id"]),
    _app(),
    option("--reason", help="recorded as the workflow's error"),
)
async def cmd_cancel(c: Common, *, workflow_id: str, app: str | None, reason: str | None) -> int:
    """Cancel a workflow."""
    mgmt = _client(c, app)
    async with mgmt:
        requested = await mgmt.cancel(workflow_id, reason=reason)
    print("cancellation requested" if requested else "workflow has already ended")
    return EXIT_OK


@command(
    cli,
    "signal",
    "send a signal to a workflow",
    app_argument(),
    click.Argument(["workflow_id"], help="the workflow"),
    click.Argument(["name"], help="the signal's name"),
    click.Argument(
        ["payload"], help="JSON data, @file, or - for stdin (default none)", required=False
    ),
    option("--id", "signal_id", help="signal id: a repeat with the same id is delivered once"),
)
async def cmd_signal(
    c: Common, *, app: str, workflow_id: str, name: str, payload: str | None, signal_id: str | None
) -> int:
    """Send a signal; a workflow waiting for it goes on, one that is not waiting yet keeps
    it. Exits 1 when the workflow has already ended."""
    mgmt = _client(c, app)
    data = _parse_payload(payload) if payload is not None else None
    async with mgmt:
        sent = await mgmt.signal(workflow_id, name, data, signal_id=signal_id)
    if not sent:
        print(f"workflow {workflow_id} has already ended: signal {name!r} not delivered")
        return EXIT_WORKFLOW_FAILED
    print(f"signal {name!r} recorded for {workflow_id}")
    return EXIT_OK


@command(
    cli,
    "diagram",
    "print the mermaid diagram of an app's workflows",
    app_argument(),
    click.Argument(["workflow"], help="only this workflow", required=False),
    common=False,
)
async def cmd_diagram(c: Common, *, app: str, workflow: str | None) -> int:
    """Print each workflow's definition (or one) as a mermaid flowchart, for docs."""
    mgmt = load_app(app)
    if workflow is not None and workflow not in mgmt.workflows:
        known = ", ".join(mgmt.workflows) or "none"
        raise UsageError(f"unknown workflow {workflow!r} (defined: {known})")
    chosen = [mgmt.workflows[workflow]] if workflow else list(mgmt.workflows.values())
    print("\n".join(mermaid(wf) for wf in chosen), end="")
    return EXIT_OK


@command(
    cli,
    "schedules",
    "list the app's schedules and their next ticks",
    app_argument(),
    _json(),
)
async def cmd_schedules(c: Common, *, app: str, as_json: bool) -> int:
    """List the schedules an app registers: rule, catch-up, last tick started (from the
    store) and next tick."""
    mgmt = _client(c, app)
    async with mgmt:
        rows = await schedule_report(mgmt)
    c.screen().show(rows, schedules_view, as_json=as_json)
    return EXIT_OK


@command(
    cli,
    "list",
    "list workflows, newest first",
    _app(),
    option("--workflow", help="only this workflow"),
    option("--status", help="running, completed, failed or cancelled"),
    option("--limit", type=int, default=20, help="rows per page (20)"),
    option("--cursor", help="next_cursor of the previous page"),
    _json(),
)
async def cmd_list(
    c: Common,
    *,
    app: str | None,
    workflow: str | None,
    status: str | None,
    limit: int,
    cursor: str | None,
    as_json: bool,
) -> int:
    """List workflows, newest first, a page at a time."""
    mgmt = _client(c, app)
    async with mgmt:
        page = await mgmt.list(workflow, status, limit=limit, cursor=cursor)
    if not page.items and not as_json:
        _memory_note(mgmt, "list")
    c.screen().show(page.model_dump(mode="json"), page_view, as_json=as_json)
    return EXIT_OK


@command(
    cli,
    "topics",
    "list the bus topics an app needs; create missing ones",
    _app("module:attribute (default: only the hms.* topics)"),
    option("--create", is_flag=True, help="create the missing topics"),
    option(
        "--partitions", type=int, help="partitions of created topics (HMS_TRANSPORT__PARTITIONS)"
    ),
    _json(),
)
async def cmd_topics(
    c: Common, *, app: str | None, create: bool, partitions: int | None, as_json: bool
) -> int:
    """List the topics an app needs on the bus, and create the missing ones."""
    mgmt = _client(c, app)
    if in_process(mgmt.settings.bus_url):
        err(
            "note: the bus is memory:// (inside this process only); its topics exist only "
            "while an app runs. Set HMS_BUS_URL=kafka://… or --bus to manage a broker's topics."
        )
    if partitions is not None:
        if partitions < 1:
            raise UsageError(f"--partitions must be at least 1, got {partitions}")
        mgmt.configure(transport={"partitions": partitions})
    rows = await topic_report(mgmt, create=create)
    c.screen().show(rows, topics_view, as_json=as_json)
    return EXIT_OK


@command(
    cli,
    "migrate",
    "create or upgrade the Postgres store's tables",
    _app("module:attribute (default: the store from the environment)"),
)
async def cmd_migrate(c: Common, *, app: str | None) -> int:
    """Create or upgrade the Postgres store's tables."""
    url = _client(c, app).settings.store_url
    if scheme_of(url) != "postgresql":
        raise UsageError(
            f"the store {redact(url)!r} has no schema to migrate; "
            "give --store postgresql://… or set HMS_STORE_URL"
        )
    applied, where = await migrate(url)
    if applied:
        print(f"applied {len(applied)} migration(s) to {where}: {', '.join(applied)}")
    else:
        print(f"{where} is up to date")
    return EXIT_OK


@command(
    cli,
    "redrive",
    "resume a failed or cancelled workflow",
    app_argument(),
    click.Argument(["workflow_id"], help="the workflow"),
    option("--from-step", help="the step to resume at (default: the failed one)"),
    option("--timeout", type=float, default=30.0, help="seconds to wait for it to run (30)"),
)
async def cmd_redrive(
    c: Common, *, app: str, workflow_id: str, from_step: str | None, timeout: float
) -> int:
    """Resume a failed or cancelled workflow at its failed step (or ``--from-step``),
    with the payload that step ran with. Exits 1 when it is running or completed."""
    mgmt = _client(c, app)
    async with mgmt:
        resumed = await mgmt.redrive(workflow_id, from_step, timeout=timeout)
    if not resumed:
        print(f"workflow {workflow_id} is not failed or cancelled: nothing to redrive")
        return EXIT_WORKFLOW_FAILED
    print(f"workflow {workflow_id} runs again" + (f" from step {from_step!r}" if from_step else ""))
    return EXIT_OK


def _since(text: str | None) -> datetime | None:
    """``--since``: an ISO time, or a duration back from now (``30m``, ``2h``, ``7d``)."""
    if text is None:
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text[-1:] in units and text[:-1].replace(".", "", 1).isdigit():
        return utcnow() - timedelta(seconds=float(text[:-1]) * units[text[-1]])
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(
            f"--since {text!r} is neither a time (2026-12-07T10:00) nor a duration "
            "back from now (30m, 2h, 7d)"
        ) from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


@command(
    cli,
    "why",
    "say what a workflow waits for, and what unblocks it",
    app_argument(),
    click.Argument(["workflow_id"], help="the workflow"),
    _json(),
)
async def cmd_why(c: Common, *, app: str, workflow_id: str, as_json: bool) -> int:
    """Explain where a workflow is: a signal or child it waits for, a timer, a step no
    worker serves or queued behind others, a step running (on which worker, alive or
    not), a dead letter; each with the action that unblocks it."""
    mgmt = _client(c, app)
    async with mgmt:
        _memory_note(mgmt, "why")
        found = await explain(mgmt, workflow_id, app=app)
    c.screen().show([r.as_dict() for r in found], why_view, as_json=as_json)
    return EXIT_OK


@command(
    cli,
    "ui",
    "serve the operator's console",
    app_argument(),
    option("--port", type=int, help="port (HMS_UI__PORT, default 8080)"),
    option("--host", help="address (HMS_UI__HOST, default 127.0.0.1)"),
)
async def cmd_ui(c: Common, *, app: str, port: int | None, host: str | None) -> int:
    """Serve the console over the app's store and bus until Ctrl-C or SIGTERM. It is
    read-only unless HMS_UI__TOKEN is set; its actions then need that token."""
    mgmt = _client(c, app)
    ui = mgmt.settings.ui
    token = ui.token.get_secret_value() if ui.token is not None else None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, mgmt.request_stop)
    async with mgmt:
        _memory_note(mgmt, "the console")
        server = console_server(
            mgmt,
            host=host or ui.host,
            port=ui.port if port is None else port,
            token=token,
        )
        async with server:
            mode = "actions enabled (HMS_UI__TOKEN)" if token else "read-only"
            err(
                f"hms-bus ui: console on http://{host or ui.host}:{server.port} ({mode}), "
                f"{redact(mgmt.settings.store_url)}. Ctrl-C or SIGTERM to stop."
            )
            await mgmt.serve()
    err("stopped")
    return EXIT_OK


def _duration(text: str, what: str) -> float:
    """A duration such as ``30d``, ``12h``, ``90m`` or ``45s``, in seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number = text[:-1]
    if text[-1:] in units and number.replace(".", "", 1).isdigit() and float(number) > 0:
        return float(number) * units[text[-1]]
    raise UsageError(f"{what} {text!r} is not a duration such as 30d, 12h, 90m or 45s")


@command(
    cli,
    "prune",
    "delete workflows that finished long ago, with their history",
    option("--older-than", required=True, help="finished longer ago than this (30d, 12h)"),
    option("--dry-run", is_flag=True, help="count what would be deleted; delete nothing"),
    option("--batch-size", type=int, default=500, help="workflows per transaction (500)"),
    option(
        "--duty",
        type=float,
        default=0.1,
        help="share of the time spent deleting, pausing in between (0.1; 1: no pauses)",
    ),
    _app(),
)
async def cmd_prune(
    c: Common,
    *,
    older_than: str,
    dry_run: bool,
    batch_size: int,
    duty: float,
    app: str | None,
) -> int:
    """Delete finished workflows (completed, failed, cancelled) older than ``--older-than``
    with their steps, history, ledger and facts, a batch at a time; running ones are never
    touched."""
    seconds = _duration(older_than, "--older-than")
    if batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    if not 0 < duty <= 1:
        raise UsageError("--duty must be above 0 and at most 1")
    before = utcnow() - timedelta(seconds=seconds)
    mgmt = _client(c, app)
    async with mgmt:
        _memory_note(mgmt, "prune")
        store = mgmt._st
        if dry_run:
            found = await store.prune(before, limit=batch_size, dry_run=True)
            print(
                f"would delete {found.workflows} workflow(s) and {found.events} history "
                f"event(s) finished before {before.isoformat(timespec='seconds')}"
            )
            return EXIT_OK
        last_said = time.monotonic()

        def report(so_far: Pruned) -> None:
            nonlocal last_said
            if time.monotonic() - last_said >= 2.0:
                err(f"… {so_far.workflows} workflow(s), {so_far.events} event(s) so far")
                last_said = time.monotonic()

        total = await prune(store, before, batch_size=batch_size, duty=duty, progress=report)
        workflows, events = total.workflows, total.events
    print(
        f"deleted {workflows} workflow(s) and {events} history event(s) finished before "
        f"{before.isoformat(timespec='seconds')}"
    )
    return EXIT_OK


@cli.group("dead-letters", cls=Group, help="what could not be processed, and sending it back")
def dead_letters() -> None:
    """The dead-letter topic."""


_REASON = option("--reason", help="only letters whose reason contains this text")
_SINCE = option("--since", help="only letters since a time or a duration back (2h, 7d)")


@command(dead_letters, "list", "list dead letters, oldest first", _app(), _REASON, _SINCE, _json())
async def cmd_dead_letters_list(
    c: Common, *, app: str | None, reason: str | None, since: str | None, as_json: bool
) -> int:
    """List the namespace's dead letters: id, time, source, workflow and reason."""
    after = _since(since)
    mgmt = _client(c, app)
    async with mgmt:
        found = await letters(mgmt, reason=reason, since=after)
    c.screen().show([x.summary() for x in found], letters_view, as_json=as_json)
    return EXIT_OK


@command(
    dead_letters,
    "show",
    "show one dead letter, with its original record",
    click.Argument(["letter_id"], help="<partition>:<offset>, as listed"),
    _app(),
)
async def cmd_dead_letters_show(c: Common, *, letter_id: str, app: str | None) -> int:
    """Print one letter as JSON (its original holds sealed values only)."""
    mgmt = _client(c, app)
    async with mgmt:
        found = await letters(mgmt, ids=frozenset({letter_id}))
    if not found:
        raise NotFoundError(f"no dead letter {letter_id!r}")
    print(json.dumps(found[0].summary(), indent=2))
    return EXIT_OK


@command(
    dead_letters,
    "redrive",
    "send dead letters back once their cause is fixed",
    click.Argument(["letter_ids"], nargs=-1, required=False),
    option("--app", required=True, help="module:attribute of the app (its workflows)"),
    _REASON,
    _SINCE,
)
async def cmd_dead_letters_redrive(
    c: Common,
    *,
    letter_ids: tuple[str, ...],
    app: str,
    reason: str | None,
    since: str | None,
) -> int:
    """Redrive the letters named, or those matching ``--reason``/``--since``: a failed
    workflow's letter redrives the workflow; any other is published again to its source.
    Exits 1 if any could not be sent back."""
    if not (letter_ids or reason or since):
        raise UsageError("name the letters to redrive, or select them with --reason/--since")
    after = _since(since)
    mgmt = _client(c, app)
    failures = 0
    async with mgmt:
        found = await letters(mgmt, reason=reason, since=after, ids=frozenset(letter_ids))
        missing = set(letter_ids) - {x.id for x in found}
        for lid in sorted(missing):
            err(f"{lid}: no such dead letter")
            failures += 1
        for item in found:
            done, what = await redrive_letter(mgmt, item)
            failures += not done
            print(f"{item.id}: {what}")
    if not found and not missing:
        print("no dead letters match")
    return EXIT_OK if not failures else EXIT_WORKFLOW_FAILED


@cli.group("schemas", cls=Group, no_args_is_help=False, help="JSON Schema of payload models")
def schemas() -> None:
    """JSON Schema of payload models."""


@command(
    schemas,
    "export",
    "write each model's JSON Schema to a directory (or --check it)",
    click.Argument(
        ["source"],
        help="module (the models in its __all__), module:Model, or module:app "
        "(the app's input= models)",
    ),
    option("--out", default="schemas/json", help="directory (default schemas/json)"),
    option(
        "--check",
        is_flag=True,
        help="write nothing; exit 1 if a file is missing, differs or is extra",
    ),
    common=False,
)
async def cmd_schemas_export(c: Common, *, source: str, out: str, check: bool) -> int:
    """Write each model's JSON Schema to ``out``, or (``--check``) compare them."""
    folder = Path(out)
    result = export_schemas(source, folder, check=check)
    if not check:
        unchanged = len(result.files) - len(result.stale)
        left = f"; not produced by {source} (left alone): {', '.join(result.extra)}"
        print(
            f"{folder}: wrote {len(result.stale)} schema(s), {unchanged} unchanged"
            + (left if result.extra else "")
        )
        return EXIT_OK
    if not result.stale and not result.extra:
        print(f"{folder}: {len(result.files)} schema(s) match the models")
        return EXIT_OK
    for name in result.stale:
        verb = "differs from" if (folder / name).exists() else "missing for"
        err(f"{folder / name}: {verb} the model")
    for name in result.extra:
        err(f"{folder / name}: no model of {source} produces it")
    err(f"regenerate with: hms-bus schemas export {source} --out {out}")
    return EXIT_WORKFLOW_FAILED


@command(
    cli,
    "health",
    "live processes, open SLA breaches and stuck steps; exit 1 when unhealthy",
    _app("module:attribute (default: the store from the environment)"),
    _json(),
)
async def cmd_health(c: Common, *, app: str | None, as_json: bool) -> int:
    """Report the monitor's view of the installation; exit 1 when it is unhealthy."""
    mgmt = _client(c, app)
    url = mgmt.settings.store_url
    if in_process(url):
        raise UsageError(
            f"the store is {url} (inside one process only): health reads the report "
            "the monitor writes to a shared store; give --store postgresql://… or set "
            "HMS_STORE_URL"
        )
    doc = await check_health(mgmt)
    c.screen().show(doc, health_view, as_json=as_json)
    return EXIT_OK if doc["healthy"] else EXIT_UNHEALTHY


add_role_commands(cli)


class _ArgvParser:
    def parse_args(self, argv: Sequence[str]) -> SimpleNamespace:
        """The parameters ``argv`` gives its command, by name (``command`` is its name),
        running nothing: how a deployment's command lines are checked."""
        job = parse(cli, argv)
        return SimpleNamespace(command=job.name, **asdict(job.common), **job.params)


def _parser() -> _ArgvParser:
    return _ArgvParser()


if __name__ == "__main__":
    raise SystemExit(main())
