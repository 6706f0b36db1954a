"""Nodes the scheduler settles itself, without an executor: conditions, transforms,
delays, approvals and the start of a child workflow.

They do no I/O, so sending them through Kafka would only add latency. Each function
takes the node and the scope it sees and returns what happened; the engine turns that
into task state and effects.
"""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from flowyard.domain import expressions
from flowyard.domain.definition import WAIT_UNITS, Node, parse_time
from flowyard.domain.json import JsonObject, JsonValue
from flowyard.domain.run import TaskError
from flowyard.errors import ExpressionError

# Child run ids derive from the parent task, so a redelivered decision starts no second run.
_CHILD_RUN_NAMESPACE = uuid.UUID("6f1c3a52-8d0e-4c1b-9a57-3c2f6f0b9e11")


@dataclass(frozen=True)
class Settled:
    """The node finished at once."""

    output: JsonValue = None
    error: TaskError | None = None


def condition(node: Node, scope: JsonObject) -> Settled:
    expression = str(node.config.get("expression", ""))
    try:
        result = expressions.evaluate_condition(expression, scope)
    except ExpressionError as exc:
        return Settled(error=TaskError(exc.code, f"condition {expression!r}: {exc}"))
    branch = "true" if result else "false"
    return Settled(output={"expression": expression, "result": result, "branch": branch})


def transform(node: Node, scope: JsonObject) -> Settled:
    try:
        return Settled(output=expressions.evaluate_mapping(node.config.get("output"), scope))
    except ExpressionError as exc:
        return Settled(error=TaskError(exc.code, f"transform: {exc}"))


def wait_until(node: Node, scope: JsonObject, now: datetime) -> datetime | TaskError:
    """When a delay node resumes: ``now`` plus its duration, or its ``until`` time."""
    try:
        config = expressions.render(dict(node.config), scope)
    except ExpressionError as exc:
        return TaskError(exc.code, f"wait: {exc}")
    if not isinstance(config, dict):
        return TaskError("wait.invalid", "wait config must be a mapping")
    if "until" in config:
        moment = parse_time(str(config["until"]))
        if moment is None:
            return TaskError(
                "wait.invalid", f"until {config['until']!r} is not an ISO 8601 time with an offset"
            )
        return moment
    for unit, seconds in WAIT_UNITS.items():
        if unit in config:
            amount = config[unit]
            if isinstance(amount, str):
                with contextlib.suppress(ValueError):
                    amount = float(amount)
            if not isinstance(amount, int | float) or isinstance(amount, bool) or amount < 0:
                return TaskError("wait.invalid", f"{unit} must be a number >= 0, got {amount!r}")
            return now + timedelta(seconds=float(amount) * seconds)
    return TaskError("wait.invalid", "a wait needs seconds, minutes, hours, days or until")


def resumed(scheduled: datetime | None, now: datetime) -> JsonObject:
    """What a delay node outputs: when it was meant to resume and when it did."""
    late = (now - scheduled).total_seconds() if scheduled else 0.0
    return {
        "scheduled_resume_at": scheduled.isoformat() if scheduled else None,
        "resumed_at": now.isoformat(),
        "late_seconds": round(max(0.0, late), 3),
    }


@dataclass(frozen=True)
class ChildRun:
    run_id: str
    workflow: str
    input: JsonValue
    wait: bool


def child_run(run_id: str, node: Node, attempt: int, scope: JsonObject) -> ChildRun | TaskError:
    try:
        child_input = expressions.render(node.config.get("input"), scope)
    except ExpressionError as exc:
        return TaskError(exc.code, f"run_workflow input: {exc}")
    child_id = uuid.uuid5(_CHILD_RUN_NAMESPACE, f"{run_id}/{node.id}/{attempt}").hex
    return ChildRun(
        run_id=child_id,
        workflow=str(node.config.get("workflow", "")),
        input=child_input,
        wait=bool(node.config.get("wait", True)),
    )


def decision_output(approved: bool, decided_by: str, comment: str, now: datetime) -> JsonObject:
    return {
        "approved": approved,
        "decided_by": decided_by,
        "comment": comment,
        "decided_at": now.isoformat(),
    }
