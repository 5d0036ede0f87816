"""The day-2 operations of ``hms-bus``, on an installation that runs: ``redrive`` resumes a
failed or cancelled workflow, ``why`` says what one waits for, ``ui`` serves the operator's
console, ``prune`` deletes workflows that finished long ago, and ``dead-letters`` lists,
shows and sends back what could not be processed. ``cli`` adds them to the root group."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from datetime import UTC, datetime, timedelta

import click

from ._backends import redact
from ._cli_base import (
    EXIT_OK,
    EXIT_WORKFLOW_FAILED,
    Common,
    Group,
    UsageError,
    app_argument,
    app_option,
    client,
    command,
    err,
    json_option,
    memory_note,
    option,
)
from ._dead_letters import letters, redrive_letter
from ._durations import seconds_of
from ._envelope import utcnow
from ._errors import NotFoundError
from ._render import letters_view, why_view
from ._retention import prune
from ._why import explain
from .store import Pruned
from .ui import console_server

__all__ = ["add_ops_commands"]

_ops = Group("ops")  # collects this module's commands, in the order --help lists them


@command(
    _ops,
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
    mgmt = client(c, app)
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
    back = seconds_of(text)
    if back is not None:
        return utcnow() - timedelta(seconds=back)
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(
            f"--since {text!r} is neither a time (2026-12-07T10:00) nor a duration "
            "back from now (30m, 2h, 7d)"
        ) from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


@command(
    _ops,
    "why",
    "say what a workflow waits for, and what unblocks it",
    app_argument(),
    click.Argument(["workflow_id"], help="the workflow"),
    json_option(),
)
async def cmd_why(c: Common, *, app: str, workflow_id: str, as_json: bool) -> int:
    """Explain where a workflow is: a signal or child it waits for, a timer, a step no
    worker serves or queued behind others, a step running (on which worker, alive or
    not), a dead letter; each with the action that unblocks it."""
    mgmt = client(c, app)
    async with mgmt:
        memory_note(mgmt, "why")
        found = await explain(mgmt, workflow_id, app=app)
    c.screen().show([r.as_dict() for r in found], why_view, as_json=as_json)
    return EXIT_OK


@command(
    _ops,
    "ui",
    "serve the operator's console",
    app_argument(),
    option("--port", type=int, help="port (HMS_UI__PORT, default 8080)"),
    option("--host", help="address (HMS_UI__HOST, default 127.0.0.1)"),
)
async def cmd_ui(c: Common, *, app: str, port: int | None, host: str | None) -> int:
    """Serve the console over the app's store and bus until Ctrl-C or SIGTERM. It is
    read-only unless HMS_UI__TOKEN is set; its actions then need that token."""
    mgmt = client(c, app)
    ui = mgmt.settings.ui
    token = ui.token.get_secret_value() if ui.token is not None else None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, mgmt.request_stop)
    async with mgmt:
        memory_note(mgmt, "the console")
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
    seconds = seconds_of(text)
    if seconds is not None and seconds > 0:
        return seconds
    raise UsageError(f"{what} {text!r} is not a duration such as 30d, 12h, 90m or 45s")


@command(
    _ops,
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
    app_option(),
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
    mgmt = client(c, app)
    async with mgmt:
        memory_note(mgmt, "prune")
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


@_ops.group("dead-letters", cls=Group, help="what could not be processed, and sending it back")
def dead_letters() -> None:
    """The dead-letter topic."""


_REASON = option("--reason", help="only letters whose reason contains this text")
_SINCE = option("--since", help="only letters since a time or a duration back (2h, 7d)")


@command(
    dead_letters,
    "list",
    "list dead letters, oldest first",
    app_option(),
    _REASON,
    _SINCE,
    json_option(),
)
async def cmd_dead_letters_list(
    c: Common, *, app: str | None, reason: str | None, since: str | None, as_json: bool
) -> int:
    """List the namespace's dead letters: id, time, source, workflow and reason."""
    after = _since(since)
    mgmt = client(c, app)
    async with mgmt:
        found = await letters(mgmt, reason=reason, since=after)
    c.screen().show([x.summary() for x in found], letters_view, as_json=as_json)
    return EXIT_OK


@command(
    dead_letters,
    "show",
    "show one dead letter, with its original record",
    click.Argument(["letter_id"], help="<partition>:<offset>, as listed"),
    app_option(),
)
async def cmd_dead_letters_show(c: Common, *, letter_id: str, app: str | None) -> int:
    """Print one letter as JSON (its original holds sealed values only)."""
    mgmt = client(c, app)
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
    mgmt = client(c, app)
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


def add_ops_commands(group: click.Group) -> None:
    """Add ``redrive``, ``why``, ``ui``, ``prune`` and ``dead-letters`` to ``group``."""
    for cmd in _ops.commands.values():
        group.add_command(cmd)
