"""What the ``hms-bus`` commands print: one JSON document per result, as JSON or as text.

Each ``*_view`` function takes the JSON document of one result type (the value that
``--json`` prints, e.g. ``WorkflowStatus.model_dump(mode="json")``) and returns what a
person reads: lines, ``rich`` tables and notes for standard error. The text is computed
from the JSON, so the two cannot drift apart. A table is a list of columns, each a header
and the function that reads its cell from one item of the document.

:class:`Screen` prints either form. Colour is used only on a terminal, never with
``--no-color`` or ``NO_COLOR`` set; elsewhere tables never wrap and lines carry no
trailing spaces, so that scripts can split them.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TextIO

import orjson
from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

from ._envelope import utcnow

__all__ = [
    "Block",
    "Note",
    "Screen",
    "View",
    "health_view",
    "history_view",
    "letters_view",
    "page_view",
    "schedules_view",
    "settings_view",
    "topics_view",
    "why_view",
    "workflow_view",
]

Item = Mapping[str, Any]
Column = tuple[str, Callable[[Item], str]]

# The values shown in colour (statuses, states, verdicts), by their first word.
_STYLES = {
    **dict.fromkeys(("completed", "succeeded", "ok", "created", "live", "healthy"), "green"),
    **dict.fromkeys(("failed", "down", "missing", "UNHEALTHY", "unhealthy"), "bold red"),
    "running": "cyan",
    "pending": "dim",
    "cancelled": "yellow",
}
# Columns whose cells are coloured by value, and the free-text ones that may wrap.
_STYLED = {"STATUS", "STATE"}
_WRAPPED = {"ERROR", "DETAIL", "VALUE"}


@dataclass(frozen=True)
class Note:
    """A line for standard error (a hint, a warning), not part of the result itself."""

    text: str


Block = RenderableType | Note
View = Callable[[Any], list[Block]]


class Screen:
    """Standard output (and error) of one command.

    Args:
        no_color: never colour (``--no-color``); ``NO_COLOR`` set to anything does the same.
        file: where results go (default: ``sys.stdout`` as it is now).
    """

    def __init__(self, *, no_color: bool = False, file: TextIO | None = None) -> None:
        self.file = file or sys.stdout
        tty = self.file.isatty()
        self.color = tty and not no_color and not os.environ.get("NO_COLOR")
        self._console = Console(
            file=self.file,
            force_terminal=tty,
            color_system="auto" if self.color else None,
            width=None if tty else 1 << 16,  # a pipe or a file: never wrap
            highlight=False,
            markup=False,
            emoji=False,
        )

    def show(self, doc: Any, view: View, *, as_json: bool = False) -> None:
        """Print ``doc`` as JSON, or as the blocks ``view`` makes of it."""
        if as_json:
            self.file.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
        else:
            self.print(*view(doc))

    def print(self, *blocks: Block) -> None:
        """Print lines and tables to the file, and notes to standard error."""
        for block in blocks:
            if isinstance(block, Note):
                self.file.flush()
                sys.stderr.write(block.text + "\n")
            elif self.color:
                self._console.print(block)
            else:  # the same layout, without the padding rich leaves at the ends of lines
                with self._console.capture() as captured:
                    self._console.print(block)
                self.file.write(
                    "".join(f"{line.rstrip()}\n" for line in captured.get().splitlines())
                )


def styled(value: str) -> Text:
    """``value`` in the style its first word calls for (``failed`` in red…)."""
    return Text(value, style=_STYLES.get(value.split(" ", 1)[0].rstrip(":"), ""))


def grid(items: Iterable[Item], columns: Sequence[Column], *, header: bool = True) -> Table:
    """A borderless table of ``items``, one row each, columns two spaces apart."""
    t = Table(box=None, padding=(0, 1), pad_edge=False, show_header=header)
    for title, _ in columns:
        t.add_column(title, header_style="bold", no_wrap=title not in _WRAPPED, overflow="fold")
    for item in items:
        t.add_row(
            *(
                styled(cell(item)) if title in _STYLED else Text(cell(item))
                for title, cell in columns
            )
        )
    return t


def when(value: str | None, *, local: bool = False) -> str:
    """An ISO timestamp of a JSON document as ``YYYY-MM-DD HH:MM:SS`` (UTC, or local)."""
    if not value:
        return "-"
    at = datetime.fromisoformat(value)
    return (at.astimezone() if local else at).strftime("%Y-%m-%d %H:%M:%S")


# -- views, one per result type ---------------------------------------------------------


def _step_note(s: Item) -> str:
    """What a step execution waits for or belongs to: its signal, child, group; else its
    error."""
    notes = []
    if s.get("waiting_for"):
        due = f" until {when(s['due_at'])}" if s.get("due_at") else ""
        notes.append(f"waiting for signal {s['waiting_for']!r}{due}")
    if s.get("child_id"):
        notes.append(f"child {s['child_id']}")
    if s.get("group"):
        notes.append(f"in {s['group']}")
    if s["error"]:
        notes.append(s["error"])
    return "; ".join(notes)


_STEPS: Sequence[Column] = (
    ("#", lambda s: str(s["seq"])),
    ("STEP", lambda s: s["step"]),
    ("STATUS", lambda s: s["status"] + (" (SLA)" if s["sla_breached"] else "")),
    ("ATTEMPTS", lambda s: str(s["attempts"])),
    ("STARTED", lambda s: when(s["started_at"])),
    ("FINISHED", lambda s: when(s["finished_at"])),
    ("NOTE", _step_note),
)


def workflow_view(doc: Item) -> list[Block]:
    """A ``WorkflowStatus`` (``status``, ``start --wait``): its fields, then its steps."""
    sla = "  (SLA breached)" if doc["sla_breached"] else ""
    version = f"  (version {doc['version']})" if doc.get("version") else ""
    fields: list[tuple[str, str | Text]] = [
        ("workflow", doc["workflow_id"]),
        ("type", f"{doc['workflow']}{version}"),
        ("status", Text.assemble(styled(doc["status"]), sla)),
        ("started", when(doc["created_at"])),
        ("finished", when(doc["finished_at"])),
    ]
    if doc.get("parent_id"):
        fields.append(("parent", doc["parent_id"]))
    if doc["error"]:
        fields.append(("error", doc["error"]))
    if doc["result"] is not None:
        fields.append(("result", json.dumps(doc["result"])))
    blocks: list[Block] = [Text.assemble(f"{label:<10} ", value) for label, value in fields]
    if doc["steps"]:
        blocks += [Text(""), grid(doc["steps"], _STEPS)]
    return blocks


_WORKFLOWS: Sequence[Column] = (
    ("WORKFLOW ID", lambda w: w["workflow_id"]),
    ("WORKFLOW", lambda w: w["workflow"]),
    ("STATUS", lambda w: w["status"]),
    ("STARTED", lambda w: when(w["created_at"])),
    ("FINISHED", lambda w: when(w["finished_at"])),
    ("ERROR", lambda w: w["error"] or ""),
)


def page_view(doc: Item) -> list[Block]:
    """A ``WorkflowPage`` (``list``): one row per workflow, and how to get the next page."""
    if not doc["items"]:
        return [Text("no workflows")]
    blocks: list[Block] = [grid(doc["items"], _WORKFLOWS)]
    if doc["next_cursor"]:
        blocks.append(Note(f"more: hms-bus list --cursor {doc['next_cursor']}"))
    return blocks


def _detail(event: Item) -> str:
    names = ("step", "seq", "attempt", "outcome", "group", "signal", "child_id", "status")
    facts = [f"{k}={event[k]}" for k in names if event.get(k) is not None]
    error = event.get("error")
    if error is not None:
        message = error.get("message") if isinstance(error, dict) else error
        facts.append(f"error={message!r}")
    return " ".join(facts)


_EVENTS: Sequence[Column] = (
    ("TIME", lambda e: datetime.fromisoformat(e["ts"]).strftime("%H:%M:%S.%f")[:-3]),
    ("EVENT", lambda e: e["type"]),
    ("DETAIL", _detail),
)


def history_view(doc: Sequence[Item]) -> list[Block]:
    """A workflow's events (``history``): time, type and the facts each one carries."""
    return [grid(doc, _EVENTS, header=False)]


_TOPICS: Sequence[Column] = (
    ("TOPIC", lambda t: t["topic"]),
    ("PARTITIONS", lambda t: str(t["partitions"] or "-")),
    ("STATUS", lambda t: t["status"]),
)


def topics_view(doc: Sequence[Item]) -> list[Block]:
    """The topics an app needs (``topics``): partitions, and whether each exists."""
    blocks: list[Block] = [grid(doc, _TOPICS)]
    missing = sum(t["status"] == "missing" for t in doc)
    if missing:
        blocks.append(Note(f"{missing} topic(s) missing; run this command again with --create"))
    return blocks


_SETTINGS: Sequence[Column] = (("SETTING", lambda r: r["name"]), ("VALUE", lambda r: r["value"]))


def settings_view(doc: Mapping[str, str]) -> list[Block]:
    """A role command's configuration (``--dry-run``): each setting's name and value."""
    rows = [{"name": name, "value": value} for name, value in doc.items()]
    return [
        grid(rows, _SETTINGS, header=False),
        Text("dry run: configuration is valid; nothing was started"),
    ]


_PROCESSES: Sequence[Column] = (
    ("PROCESS", lambda p: p["process_id"]),
    ("SERVICE", lambda p: p["service"]),
    ("ROLES", lambda p: ",".join(p["roles"])),
    ("IN FLIGHT", lambda p: str(p["in_flight"])),
    ("DONE", lambda p: str(p["steps_done"])),
    ("LAG", lambda p: str(sum(p["lag"].values()))),
    ("LAST SEEN", lambda p: when(p["last_seen"], local=True)),
    ("STATE", lambda p: p["state"]),
)
_BREACHES: Sequence[Column] = (
    ("WORKFLOW ID", lambda b: b["workflow_id"]),
    ("WORKFLOW", lambda b: b["workflow"]),
    ("STEP", lambda b: f"{b['step']} (seq {b['seq']})" if b["step"] else "(workflow)"),
    ("SLA", lambda b: f"{b['sla']:g}s"),
    ("SINCE", lambda b: when(b["since"], local=True)),
)
_STUCK: Sequence[Column] = (
    ("WORKFLOW ID", lambda t: t["workflow_id"]),
    ("STEP", lambda t: f"{t['workflow']}.{t['step']} (seq {t['seq']})"),
    ("ATTEMPT", lambda t: str(t["attempt"])),
    ("WORKER", lambda t: t["worker"]),
    ("STARTED", lambda t: when(t["started_at"], local=True)),
)


def health_view(doc: Item) -> list[Block]:
    """The installation's health (``health``): the monitor's report and what is wrong."""
    report, problems = doc["report"], doc["problems"]
    blocks: list[Block] = []
    if report is not None:
        age = (utcnow() - datetime.fromisoformat(report["at"])).total_seconds()
        verdict = styled("healthy" if doc["healthy"] else "UNHEALTHY")
        blocks.append(
            Text.assemble(verdict, f": report of monitor {report['monitor']}, {age:.0f}s old")
        )
        processes = sorted(
            report["processes"], key=lambda p: (p["state"], p["service"], p["process_id"])
        )
        blocks.append(
            grid(processes, _PROCESSES) if processes else Text("no process has sent a heartbeat")
        )
        if report["breaches"]:
            blocks += [Text("\nopen SLA breaches:"), grid(report["breaches"], _BREACHES)]
        if report["stuck"]:
            blocks += [Text("\nstuck steps:"), grid(report["stuck"], _STUCK)]
    if problems:
        verdict = (
            Text.assemble("\n", styled("unhealthy:"))
            if report is not None
            else styled("UNHEALTHY:")
        )
        blocks += [verdict, *(Text(f"  - {problem}") for problem in problems)]
    return blocks


_SCHEDULES: Sequence[Column] = (
    ("SCHEDULE", lambda s: s["name"]),
    ("WORKFLOW", lambda s: s["workflow"]),
    ("RULE", lambda s: s["rule"]),
    ("CATCHUP", lambda s: s["catchup"]),
    ("LAST TICK", lambda s: when(s["last_tick"])),
    ("NEXT TICK", lambda s: when(s["next_tick"])),
)


def schedules_view(doc: Sequence[Item]) -> list[Block]:
    """The app's schedules (``schedules``): rule, last tick started and next tick."""
    if not doc:
        return [Text("no schedules")]
    return [grid(doc, _SCHEDULES)]


_LETTERS: Sequence[Column] = (
    ("ID", lambda x: x["id"]),
    ("TIME", lambda x: when(x["ts"])),
    ("SOURCE", lambda x: x["source_topic"]),
    ("WORKFLOW", lambda x: x.get("workflow_id") or "-"),
    ("STEP", lambda x: x.get("step") or "-"),
    ("REASON", lambda x: x["reason"]),
)


def letters_view(doc: Sequence[Item]) -> list[Block]:
    """Dead letters (``dead-letters list``): where each came from and why."""
    if not doc:
        return [Text("no dead letters")]
    return [grid(doc, _LETTERS)]


def why_view(doc: Sequence[Item]) -> list[Block]:
    """Why a workflow is where it is (``why``): each reason, and what unblocks it."""
    blocks: list[Block] = []
    for reason in doc:
        blocks.append(Text.assemble(("● ", "bold"), reason["text"]))
        blocks.append(Text(f"  → {reason['action']}"))
    return blocks or [Text("nothing to explain")]
