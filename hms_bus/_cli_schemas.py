"""``hms-bus schemas export``: the JSON Schema of payload models, written to a directory or
checked against it (in CI). ``cli`` adds the ``schemas`` group to the root group."""

from __future__ import annotations

from pathlib import Path

import click

from ._admin import export_schemas
from ._cli_base import EXIT_OK, EXIT_WORKFLOW_FAILED, Common, Group, command, err, option

__all__ = ["add_schemas_command"]


@click.group("schemas", cls=Group, no_args_is_help=False, help="JSON Schema of payload models")
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


def add_schemas_command(group: click.Group) -> None:
    """Add the ``schemas`` group (``schemas export``) to ``group``."""
    group.add_command(schemas)
