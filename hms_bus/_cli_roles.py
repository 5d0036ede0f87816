"""The role commands of ``hms-bus``: ``worker``, ``coordinator``, ``projector``,
``scheduler``, ``monitor`` and ``run``. Each runs its roles until SIGTERM or Ctrl-C, then
stops gracefully; ``--dry-run`` prints the resolved configuration and starts nothing."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
from typing import Any

import click

from ._admin import configuration, load_app
from ._backends import in_process, redact
from ._cli_base import (
    EXIT_OK,
    EXIT_UNCLEAN,
    Common,
    UsageError,
    app_argument,
    command,
    configure,
    err,
    option,
)
from ._render import settings_view
from ._settings import ALL_ROLES

__all__ = ["add_role_commands", "cmd_role"]


async def cmd_role(
    c: Common,
    *,
    command: str,
    app: str,
    roles: str | None = None,
    steps: str | None = None,
    concurrency: int | None = None,
    http_port: int | None,
    dry_run: bool,
) -> int:
    """Run ``command``'s roles until SIGTERM or Ctrl-C, then stop gracefully (exit 0)."""
    mgmt = load_app(app)
    chosen: tuple[str, ...] = ALL_ROLES if command == "run" else (command,)
    if roles:
        chosen = tuple(r.strip() for r in roles.split(",") if r.strip())
        bad = [r for r in chosen if r not in ALL_ROLES]
        if bad or not chosen:
            raise UsageError(
                f"--roles: unknown role(s) {', '.join(map(repr, bad)) or '(none given)'}; "
                f"choose from {', '.join(ALL_ROLES)}"
            )
    worker: dict[str, Any] = {}
    if steps:
        worker["steps"] = [s.strip() for s in steps.split(",") if s.strip()]
    if concurrency:
        worker["concurrency"] = concurrency
    telemetry = {"http_port": http_port} if http_port is not None else None
    s = configure(mgmt, c, roles=chosen, worker=worker or None, telemetry=telemetry).settings
    if dry_run:
        from ._otel_setup import check_environment

        check_environment()
        c.screen().show(configuration(mgmt, command), settings_view)
        return EXIT_OK
    if in_process(s.bus_url) and set(chosen) != set(ALL_ROLES):
        err(
            "warning: the bus is memory:// (inside this process only): a lone "
            f"{command} cannot reach the others. Set HMS_BUS_URL=kafka://… or use 'run'."
        )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, mgmt.request_stop)
    async with mgmt:
        w = mgmt.role("worker")
        served = f"; steps: {', '.join(getattr(w, 'steps', []))}" if w is not None else ""
        err(
            f"hms-bus {command}: {s.service_name} on {redact(s.bus_url)} / "
            f"{redact(s.store_url)}, roles {','.join(chosen)}{served}. "
            "Ctrl-C or SIGTERM to stop."
        )
        await mgmt.serve()
        err("stopping: draining in-flight work")
    if not mgmt.closed_cleanly:
        err("stopped, leaving work uncommitted: it will be delivered again (see the log)")
        return EXIT_UNCLEAN
    err("stopped")
    return EXIT_OK


def role_params(role: str) -> list[click.Parameter]:
    params: list[click.Parameter] = [app_argument()]
    if role == "run":
        params.append(
            option(
                "--roles",
                help="comma-separated roles to run here (default: all), "
                "e.g. coordinator,projector,scheduler",
            )
        )
    if role in ("worker", "run"):
        params += [
            option("--steps", help="comma-separated workflow.step names to serve (default: all)"),
            option("--concurrency", type=int, help="handlers at once (HMS_WORKER__CONCURRENCY)"),
        ]
    return [
        *params,
        option(
            "--http-port",
            type=int,
            help="serve /healthz and Prometheus /metrics on this port (HMS_TELEMETRY__HTTP_PORT)",
        ),
        option(
            "--dry-run",
            is_flag=True,
            help="load the app, resolve every setting, print them and exit without connecting",
        ),
    ]


def add_role_commands(group: click.Group) -> None:
    """Add ``worker``, ``coordinator``, ``projector``, ``scheduler``, ``monitor`` and
    ``run`` to ``group``."""
    for role in (*ALL_ROLES, "run"):
        command(
            group,
            role,
            "run every role in one process" if role == "run" else f"run the {role} role",
            *role_params(role),
            role=True,
        )(functools.partial(cmd_role, command=role))
