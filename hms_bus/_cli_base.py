"""How an ``hms-bus`` command is declared, parsed and run (the commands are in ``cli`` and
the ``_cli_*`` modules it adds to its root group).

:func:`command` turns an async function into a click command whose parsed command line
becomes a :class:`Job`; :func:`run` parses ``argv`` and runs the job, mapping what can go
wrong to an exit code and at most one line on standard error: bad input (2), a failed
bus or store (3), Ctrl-C (130), standard output closed early (141), SIGTERM (143).
The click classes keep ``--help`` in the shape it has always had (``usage:`` lines,
commands in the order they are defined).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, NoReturn, TypeVar

import click

from ._admin import load_app
from ._backends import in_process
from ._errors import ConfigError, HmsBusError, NotFoundError, WaitTimeoutError
from ._management import Management, init
from ._render import Screen

__all__ = [
    "EXIT_BACKEND",
    "EXIT_BROKEN_PIPE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_TERMINATED",
    "EXIT_UNCLEAN",
    "EXIT_UNHEALTHY",
    "EXIT_USAGE",
    "EXIT_WORKFLOW_FAILED",
    "Common",
    "Group",
    "Job",
    "UsageError",
    "app_argument",
    "app_option",
    "client",
    "command",
    "configure",
    "err",
    "json_option",
    "memory_note",
    "option",
    "parse",
    "run",
]

EXIT_OK, EXIT_WORKFLOW_FAILED, EXIT_USAGE, EXIT_BACKEND = 0, 1, 2, 3
EXIT_UNHEALTHY = 1
EXIT_UNCLEAN = 4  # a role command stopped, leaving work uncommitted (delivered again)
EXIT_INTERRUPTED, EXIT_BROKEN_PIPE, EXIT_TERMINATED = 130, 141, 143

Run = Callable[..., Awaitable[int]]
R = TypeVar("R", bound=Run)


class UsageError(Exception):
    """Bad command-line input: printed as one line, exit 2."""


@dataclass(frozen=True)
class Common:
    """The options most commands share (``--bus``, ``--store``, ``--namespace``…)."""

    bus: str | None = None
    store: str | None = None
    namespace: str | None = None
    log_level: str | None = None
    no_color: bool = False

    def screen(self) -> Screen:
        """Standard output, coloured only on a terminal and without ``--no-color``."""
        return Screen(no_color=self.no_color)


@dataclass(frozen=True)
class Job:
    """A parsed command line: ``run(common, **params)`` does the work.

    Attributes:
        name: the command's name (``worker``, ``status``…).
        run: the command's async function.
        common: the shared options.
        params: the command's own parameters, by name.
        role: a role command (INFO logging, handles SIGTERM itself).
    """

    name: str
    run: Run
    common: Common
    params: dict[str, Any] = field(default_factory=dict)
    role: bool = False


# -- click, in the shape of hms-bus's help --------------------------------------------


class _Formatter(click.HelpFormatter):
    def write_usage(self, prog: str, args: str = "", prefix: str | None = None) -> None:
        super().write_usage(prog, args, "usage: " if prefix is None else prefix)


class _Context(click.Context):
    formatter_class = _Formatter


class _HelpOption:
    def get_help_option(self, ctx: click.Context) -> click.Option | None:
        help_option: click.Option | None = super().get_help_option(ctx)  # type: ignore[misc]
        if help_option is not None:
            help_option.help = "show this help message and exit"
        return help_option


class _Command(_HelpOption, click.Command):
    context_class = _Context


class Group(_HelpOption, click.Group):
    """A group of commands, listed by ``--help`` in the order they were added."""

    context_class = _Context
    command_class = _Command
    group_class = type

    def list_commands(self, ctx: click.Context) -> list[str]:
        """The commands' names, in the order they were added."""
        return list(self.commands)


def option(*decls: str, help: str, **attrs: Any) -> click.Option:
    """An option; one that takes a value shows its name as the metavar (``--bus BUS``)."""
    if not attrs.get("is_flag"):
        attrs.setdefault("metavar", decls[0].lstrip("-").replace("-", "_").upper())
    return click.Option(list(decls), help=help, **attrs)


def _common_options() -> list[click.Parameter]:
    return [
        option("--bus", help="bus URL (default: the app's, HMS_BUS_URL, memory://)"),
        option("--store", help="store URL (default: the app's, HMS_STORE_URL, memory://)"),
        option("--namespace", help="topic and group prefix (HMS_NAMESPACE)"),
        option(
            "--log-level",
            help="logging level (HMS_LOG_LEVEL; INFO for role commands, else WARNING)",
        ),
        option("--no-color", is_flag=True, help="plain output (as with NO_COLOR set)"),
    ]


def command(
    group: click.Group,
    name: str,
    help: str,
    *params: click.Parameter,
    common: bool = True,
    role: bool = False,
) -> Callable[[R], R]:
    """Add the decorated async function to ``group`` as command ``name``.

    Args:
        group: where the command goes.
        name: its name on the command line.
        help: one line for ``--help``.
        *params: its own arguments and options; their values become its keywords.
        common: it also takes the shared options, passed as its first argument, a
            :class:`Common` (without them, that holds only the options it declares).
        role: a role command (see :class:`Job`).
    """

    def register(fn: R) -> R:
        shared = {f.name for f in fields(Common)}

        def parsed(**values: Any) -> Job:
            c = Common(**{k: values.pop(k) for k in list(values) if k in shared})
            return Job(name, fn, c, values, role)

        own = [*params, *(_common_options() if common else ())]
        group.add_command(_Command(name, callback=parsed, params=own, help=help))
        return fn

    return register


# -- running --------------------------------------------------------------------------


def err(message: str) -> None:
    """Write one line to standard error."""
    sys.stderr.write(message + "\n")


def _fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    err(f"hms-bus: error: {message}")
    raise SystemExit(code)


def parse(group: click.Group, argv: Sequence[str] | None) -> Job:
    """The command line as a job; ``--help``, ``--version`` and bad input exit here."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        parsed = group.main(args, prog_name="hms-bus", standalone_mode=False)
    except click.UsageError as exc:
        if exc.ctx is not None:
            err(exc.ctx.get_usage())
        _fail(exc.format_message(), exc.exit_code)
    except click.ClickException as exc:
        _fail(exc.format_message(), exc.exit_code)
    except click.Abort:
        raise KeyboardInterrupt from None
    except SystemExit:  # what click does, in this mode, when --help meets a closed pipe
        raise SystemExit(EXIT_BROKEN_PIPE) from None
    if isinstance(parsed, Job):
        return parsed
    raise SystemExit(parsed if isinstance(parsed, int) else EXIT_OK)  # --help, --version


async def _until_sigterm(job: Job) -> int:
    """Run ``job``; SIGTERM cancels it (exit 143) unless the job handles SIGTERM itself,
    as role commands do to stop gracefully."""
    task, loop = asyncio.current_task(), asyncio.get_running_loop()
    terminated = False

    def terminate() -> None:
        nonlocal terminated
        terminated = True
        if task is not None:
            task.cancel()

    with contextlib.suppress(NotImplementedError, RuntimeError):  # Windows; not main thread
        loop.add_signal_handler(signal.SIGTERM, terminate)
    try:
        return await job.run(job.common, **job.params)
    except asyncio.CancelledError:
        if not terminated:
            raise
        err("terminated")
        return EXIT_TERMINATED


def _detach_stdout() -> None:
    """Point standard output at /dev/null, so that the last flush at exit cannot fail."""
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def run(group: click.Group, argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``), run the command, return its exit code.

    Bad input and failures print one ``hms-bus: error:`` line and raise ``SystemExit``
    with their exit code; so do ``--help`` and ``--version`` (code 0).
    """
    try:
        job = parse(group, argv)
        level = (job.common.log_level or os.environ.get("HMS_LOG_LEVEL") or "").upper()
        level = level or ("INFO" if job.role else "WARNING")
        if level not in logging.getLevelNamesMapping():
            raise UsageError(f"unknown log level {level!r}")
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        code = asyncio.run(_until_sigterm(job))
        sys.stdout.flush()  # a closed pipe is reported here, not at exit
        return code
    except KeyboardInterrupt:
        err("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _detach_stdout()
        return EXIT_BROKEN_PIPE
    except (UsageError, ConfigError, NotFoundError) as exc:
        _fail(str(exc), EXIT_USAGE)
    except WaitTimeoutError as exc:
        _fail(str(exc), EXIT_WORKFLOW_FAILED)
    except HmsBusError as exc:
        _fail(str(exc), EXIT_BACKEND)


# -- apps and options the commands share ----------------------------------------------


def app_argument() -> click.Argument:
    """The ``APP`` argument of the commands that need an app."""
    return click.Argument(["app"], help="module:attribute of the app")


def configure(mgmt: Management, c: Common, **settings: Any) -> Management:
    """Apply the common options (``--bus``, ``--store``, ``--namespace``) and ``settings``."""
    mgmt.configure(bus=c.bus, store=c.store, namespace=c.namespace, **settings)
    return mgmt


def app_option(
    text: str = "module:attribute (default: bus/store from the environment)",
) -> click.Option:
    """The ``--app`` option of the commands that can do without an app."""
    return option("--app", help=text)


def json_option(text: str = "print JSON") -> click.Option:
    """The ``--json`` flag (``as_json``) of the commands that print a result."""
    return option("--json", "as_json", is_flag=True, help=text)


def client(c: Common, app: str | None) -> Management:
    """The app (or, without one, a bare client of the environment's bus and store)."""
    return configure(load_app(app) if app else init(roles=()), c, roles=())


def memory_note(mgmt: Management, what: str) -> None:
    """Warn on standard error when the store is in-process: ``what`` sees only this
    process's workflows."""
    url = mgmt.settings.store_url
    if in_process(url):
        err(
            f"note: the store is {url} (inside this process only), so {what} sees "
            "only this process's workflows; set HMS_STORE_URL or --store to a shared store"
        )
