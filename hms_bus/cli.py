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

How commands are declared and run is in ``_cli_base``; ``topics`` and ``migrate`` are in
``_cli_setup``; the day-2 operations (``redrive``, ``why``, ``ui``, ``prune``,
``dead-letters``) in ``_cli_ops``; ``schemas export`` in ``_cli_schemas``; the role
commands in ``_cli_roles``; what commands do beyond the public API, in ``_admin``; how
results look (JSON or ``rich`` tables), in ``_render``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict
from types import SimpleNamespace
from typing import Any

import click

from . import __version__
from ._admin import check_health, load_app, schedule_report
from ._backends import in_process
from ._cli_base import (
    EXIT_OK,
    EXIT_UNHEALTHY,
    EXIT_WORKFLOW_FAILED,
    Common,
    Group,
    UsageError,
    app_argument,
    app_option,
    client,
    command,
    configure,
    err,
    json_option,
    memory_note,
    option,
    parse,
    run,
)
from ._cli_ops import add_ops_commands
from ._cli_roles import add_role_commands
from ._cli_schemas import add_schemas_command
from ._cli_setup import add_setup_commands
from ._diagram import mermaid
from ._errors import NotFoundError
from ._render import (
    health_view,
    history_view,
    page_view,
    schedules_view,
    workflow_view,
)
from ._settings import ALL_ROLES

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


# -- input ----------------------------------------------------------------------------


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
    json_option("print the final status as JSON"),
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
    cli,
    "status",
    "show a workflow and its steps",
    click.Argument(["workflow_id"]),
    app_option(),
    json_option(),
)
async def cmd_status(c: Common, *, workflow_id: str, app: str | None, as_json: bool) -> int:
    """Show a workflow and its steps."""
    mgmt = client(c, app)
    async with mgmt:
        st = await mgmt.status(workflow_id)
    if st is None:
        memory_note(mgmt, "status")
        raise NotFoundError(f"no workflow {workflow_id!r}")
    c.screen().show(st.model_dump(mode="json"), workflow_view, as_json=as_json)
    return EXIT_OK


@command(
    cli,
    "history",
    "show a workflow's events",
    click.Argument(["workflow_id"]),
    app_option(),
    json_option(),
)
async def cmd_history(c: Common, *, workflow_id: str, app: str | None, as_json: bool) -> int:
    """Show a workflow's events, in order."""
    mgmt = client(c, app)
    async with mgmt:
        events = await mgmt.history(workflow_id)
    if not events:
        memory_note(mgmt, "history")
        raise NotFoundError(f"no history for workflow {workflow_id!r}")
    docs = [e.model_dump(mode="json") for e in events]
    c.screen().show(docs, history_view, as_json=as_json)
    return EXIT_OK


@command(
    cli,
    "cancel",
    "cancel a workflow",
    click.Argument(["workflow_id"]),
    app_option(),
    option("--reason", help="recorded as the workflow's error"),
)
async def cmd_cancel(c: Common, *, workflow_id: str, app: str | None, reason: str | None) -> int:
    """Cancel a workflow."""
    mgmt = client(c, app)
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
    mgmt = client(c, app)
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
    json_option(),
)
async def cmd_schedules(c: Common, *, app: str, as_json: bool) -> int:
    """List the schedules an app registers: rule, catch-up, last tick started (from the
    store) and next tick."""
    mgmt = client(c, app)
    async with mgmt:
        rows = await schedule_report(mgmt)
    c.screen().show(rows, schedules_view, as_json=as_json)
    return EXIT_OK


@command(
    cli,
    "list",
    "list workflows, newest first",
    app_option(),
    option("--workflow", help="only this workflow"),
    option("--status", help="running, completed, failed or cancelled"),
    option("--limit", type=int, default=20, help="rows per page (20)"),
    option("--cursor", help="next_cursor of the previous page"),
    json_option(),
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
    mgmt = client(c, app)
    async with mgmt:
        page = await mgmt.list(workflow, status, limit=limit, cursor=cursor)
    if not page.items and not as_json:
        memory_note(mgmt, "list")
    c.screen().show(page.model_dump(mode="json"), page_view, as_json=as_json)
    return EXIT_OK


# Added here so that --help lists every command in the order it always has.
add_setup_commands(cli)
add_ops_commands(cli)
add_schemas_command(cli)


@command(
    cli,
    "health",
    "live processes, open SLA breaches and stuck steps; exit 1 when unhealthy",
    app_option("module:attribute (default: the store from the environment)"),
    json_option(),
)
async def cmd_health(c: Common, *, app: str | None, as_json: bool) -> int:
    """Report the monitor's view of the installation; exit 1 when it is unhealthy."""
    mgmt = client(c, app)
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
