"""A run's graph as DOT (Graphviz) or Mermaid text, each node coloured by its task's state.

Colours: failed red, succeeded green, cancelled grey, running blue, skipped light grey,
waiting amber, pending white. Edges into a skipped node are dashed; an edge leaving a
condition is labelled with its branch.
"""

from __future__ import annotations

from dataclasses import dataclass

from flowyard.domain.definition import WorkflowDefinition
from flowyard.domain.run import RunState, TaskStatus


@dataclass(frozen=True)
class Colour:
    fill: str
    font: str


COLOURS: dict[TaskStatus, Colour] = {
    TaskStatus.FAILED: Colour("#e53935", "#ffffff"),
    TaskStatus.SUCCEEDED: Colour("#43a047", "#ffffff"),
    TaskStatus.CANCELLED: Colour("#9e9e9e", "#ffffff"),
    TaskStatus.RUNNING: Colour("#1e88e5", "#ffffff"),
    TaskStatus.SKIPPED: Colour("#e0e0e0", "#616161"),
    TaskStatus.WAITING: Colour("#ffb300", "#000000"),
    TaskStatus.PENDING: Colour("#ffffff", "#000000"),
}


def _status(run: RunState, node_id: str) -> TaskStatus:
    task = run.tasks.get(node_id)
    return task.status if task else TaskStatus.PENDING


def _dot_text(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")


def to_dot(run: RunState, definition: WorkflowDefinition) -> str:
    lines = [
        "digraph run {",
        f'  label="{_dot_text(run.workflow_name)} run {run.run_id} ({run.status.value})";',
        "  labelloc=t;",
        "  rankdir=LR;",
        '  node [shape=box, style="rounded,filled", fontname="Helvetica"];',
    ]
    for node in definition.nodes:
        status = _status(run, node.id)
        colour = COLOURS[status]
        label = f"{_dot_text(node.display_name)}\\n{node.type.value} · {status.value}"
        lines.append(
            f'  "{_dot_text(node.id)}" [label="{label}", fillcolor="{colour.fill}", '
            f'fontcolor="{colour.font}", tooltip="{status.value}"];'
        )
    for edge in definition.edges:
        attrs = []
        if edge.when:
            attrs.append(f'label="{edge.when}"')
        if _status(run, edge.target) is TaskStatus.SKIPPED:
            attrs.append("style=dashed")
        suffix = f" [{', '.join(attrs)}]" if attrs else ""
        lines.append(f'  "{_dot_text(edge.source)}" -> "{_dot_text(edge.target)}"{suffix};')
    lines.append("}")
    return "\n".join(lines) + "\n"


def _mermaid_text(text: str) -> str:
    # Inside ["..."] Mermaid takes HTML entities; quotes and angle brackets must be escaped.
    return (
        text.replace("&", "&amp;")
        .replace('"', "&quot;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace("\n", " ")
    )


def to_mermaid(run: RunState, definition: WorkflowDefinition) -> str:
    # Node ids may hold '-' (not safe in every Mermaid position): use n0, n1, ... instead.
    ids = {node.id: f"n{index}" for index, node in enumerate(definition.nodes)}
    lines = [
        "---",
        f"title: {_mermaid_text(run.workflow_name)} run {run.run_id} ({run.status.value})",
        "---",
        "flowchart LR",
    ]
    used: set[TaskStatus] = set()
    for node in definition.nodes:
        status = _status(run, node.id)
        used.add(status)
        label = f"{_mermaid_text(node.display_name)}<br/>{node.type.value} · {status.value}"
        lines.append(f'  {ids[node.id]}["{label}"]:::{status.value}')
    for edge in definition.edges:
        arrow = "-.->" if _status(run, edge.target) is TaskStatus.SKIPPED else "-->"
        label = f"|{edge.when}|" if edge.when else ""
        lines.append(f"  {ids[edge.source]} {arrow}{label} {ids[edge.target]}")
    for status in TaskStatus:
        if status in used:
            colour = COLOURS[status]
            lines.append(
                f"  classDef {status.value} fill:{colour.fill},color:{colour.font},stroke:#424242"
            )
    return "\n".join(lines) + "\n"
