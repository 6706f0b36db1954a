"""Compare two runs task by task: status, duration, output (FEATURES C7)."""

from __future__ import annotations

from dataclasses import dataclass

from flowyard.domain.json import JsonValue
from flowyard.domain.run import RunState, TaskState, TaskStatus


@dataclass(frozen=True)
class TaskDifference:
    node_id: str
    status: TaskStatus | None
    other_status: TaskStatus | None
    duration_seconds: float
    other_duration_seconds: float
    output_differs: bool
    output: JsonValue
    other_output: JsonValue


def compare_runs(run: RunState, other: RunState) -> list[TaskDifference]:
    """One entry per node of either run, in the first run's order, then the other's."""
    order = list(run.tasks) + [n for n in other.tasks if n not in run.tasks]
    found = []
    for node_id in order:
        a, b = run.tasks.get(node_id), other.tasks.get(node_id)
        found.append(
            TaskDifference(
                node_id=node_id,
                status=a.status if a else None,
                other_status=b.status if b else None,
                duration_seconds=_seconds(a),
                other_duration_seconds=_seconds(b),
                output_differs=(a.output if a else None) != (b.output if b else None),
                output=a.output if a else None,
                other_output=b.output if b else None,
            )
        )
    return found


def _seconds(task: TaskState | None) -> float:
    if task is None or task.started_at is None or task.finished_at is None:
        return 0.0
    return (task.finished_at - task.started_at).total_seconds()
