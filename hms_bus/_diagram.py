"""Workflow definitions drawn as mermaid flowcharts (``hms-bus diagram``, the console).

What a definition says is drawn: the main path in order, parallel groups as a box of
branches that join, the error path of each step (dashed), and the steps off the main
path. Where a handler routes at run time (``Next``, ``WaitFor``, ``Child``, ``Each``) is
its code's choice and not in the definition, so it is not drawn.
"""

from __future__ import annotations

from ._definitions import WorkflowDefinition

__all__ = ["mermaid"]


def mermaid(wf: WorkflowDefinition) -> str:
    """The mermaid ``flowchart`` of ``wf``: deterministic, so a committed copy can be
    checked against the definition."""
    ids: dict[str, str] = {}

    def node(name: str) -> str:
        if name not in ids:
            ids[name] = f"n{len(ids)}"
        return ids[name]

    lines = ["flowchart LR", f"    %% {wf.name}, version {wf.version}"]
    lines.append('    start(("start"))')
    for entry in wf.main_path:
        group = wf.groups.get(entry)
        if group is None:
            lines.append(f'    {node(entry)}["{entry}"]')
            continue
        lines.append(f'    subgraph {node(entry)} ["parallel: {group.name}"]')
        lines.append("        direction TB")
        lines.extend(f'        {node(b)}["{b}"]' for b in group.branches)
        lines.append("    end")
    off_path = [s for s in wf.steps.values() if s.error_step]
    for step in off_path:
        lines.append(f'    {node(step.name)}["{step.name}"]:::offpath')
    lines.append('    done(("completed"))')
    previous = "start"
    for entry in wf.main_path:
        lines.append(f"    {previous} --> {node(entry)}")
        previous = node(entry)
    lines.append(f"    {previous} --> done")
    for step in wf.steps.values():
        target = wf.error_route(step.name)
        if target is not None:
            lines.append(f'    {node(step.name)} -. "on error" .-> {node(target)}')
    if off_path:
        lines.append("    classDef offpath stroke-dasharray: 4 3")
    return "\n".join(lines) + "\n"
