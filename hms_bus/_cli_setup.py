"""Setting up an installation's bus and store: ``hms-bus topics`` lists the topics an app
needs on the bus (and creates the missing ones), ``hms-bus migrate`` creates or upgrades
the Postgres store's tables. ``cli`` adds them to the root group."""

from __future__ import annotations

import click

from ._admin import migrate, topic_report
from ._backends import in_process, redact, scheme_of
from ._cli_base import (
    EXIT_OK,
    Common,
    Group,
    UsageError,
    app_option,
    client,
    command,
    err,
    json_option,
    option,
)
from ._render import topics_view

__all__ = ["add_setup_commands"]

_setup = Group("setup")  # collects this module's commands, in the order --help lists them


@command(
    _setup,
    "topics",
    "list the bus topics an app needs; create missing ones",
    app_option("module:attribute (default: only the hms.* topics)"),
    option("--create", is_flag=True, help="create the missing topics"),
    option(
        "--partitions", type=int, help="partitions of created topics (HMS_TRANSPORT__PARTITIONS)"
    ),
    json_option(),
)
async def cmd_topics(
    c: Common, *, app: str | None, create: bool, partitions: int | None, as_json: bool
) -> int:
    """List the topics an app needs on the bus, and create the missing ones."""
    mgmt = client(c, app)
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
    _setup,
    "migrate",
    "create or upgrade the Postgres store's tables",
    app_option("module:attribute (default: the store from the environment)"),
)
async def cmd_migrate(c: Common, *, app: str | None) -> int:
    """Create or upgrade the Postgres store's tables."""
    url = client(c, app).settings.store_url
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


def add_setup_commands(group: click.Group) -> None:
    """Add ``topics`` and ``migrate`` to ``group``."""
    for cmd in _setup.commands.values():
        group.add_command(cmd)
