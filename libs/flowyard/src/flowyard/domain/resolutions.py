"""What an operator can do about a failed run, derived from its errors (FEATURES C10).

Each error code belongs to a class (transient, configuration, credentials, data,
threshold, missing_input); each class suggests resolutions, each with a one-line
explanation. Applying one is a single command: :func:`command_for` turns the choice into
the :class:`~flowyard.domain.control.Command` the scheduler carries out. A parameter
override changes this run only (``RunState.overrides``), never the stored definition.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from flowyard.domain.control import Command, command_problem
from flowyard.domain.definition import NodeType, WorkflowDefinition
from flowyard.domain.json import JsonValue
from flowyard.domain.run import RunState, RunStatus, TaskStatus

TRANSIENT = "transient"
CONFIGURATION = "configuration"
CREDENTIALS = "credentials"
DATA = "data"
THRESHOLD = "threshold"
MISSING_INPUT = "missing_input"

_CLASS_BY_CODE = {
    "http.connection": TRANSIENT,
    "http.timeout": TRANSIENT,
    "email.connection": TRANSIENT,
    "email.timeout": TRANSIENT,
    "slack.connection": TRANSIENT,
    "slack.timeout": TRANSIENT,
    "slack.rate_limited": TRANSIENT,
    "query.connection": TRANSIENT,
    "query.timeout": TRANSIENT,
    "executor.lost": TRANSIENT,
    "task.timeout": TRANSIENT,
    "code.timeout": TRANSIENT,
    "code.crashed": TRANSIENT,
    "slack.not_configured": CREDENTIALS,
    "slack.api_error": CREDENTIALS,
    "email.delivery": CONFIGURATION,
    "threshold.failure": THRESHOLD,
    "expression.missing_field": MISSING_INPUT,
    "approval.rejected": DATA,
}
_CLASS_BY_PREFIX = (
    ("node.", CONFIGURATION),
    ("expression.", CONFIGURATION),
    ("wait.", CONFIGURATION),
    ("workflow.", CONFIGURATION),
    ("code.", DATA),
    ("query.", DATA),
    ("http.status", DATA),
)
# The config fields a threshold override may change.
THRESHOLD_FIELDS = ("warning_threshold", "failure_threshold")


def classify(code: str, message: str = "") -> str:
    """The class of an error code (an HTTP 401/403 counts as a credentials problem)."""
    if code == "http.status" and any(f"status {s}" in message for s in (401, 403)):
        return CREDENTIALS
    if code in _CLASS_BY_CODE:
        return _CLASS_BY_CODE[code]
    for prefix, error_class in _CLASS_BY_PREFIX:
        if code.startswith(prefix):
            return error_class
    return DATA


@dataclass(frozen=True)
class Resolution:
    kind: str
    node_id: str
    explanation: str
    error_class: str
    parameters: tuple[str, ...] = ()


def resolutions_for(run: RunState, definition: WorkflowDefinition) -> list[Resolution]:
    """The resolutions that fit each failed task of a failed run, best first."""
    if run.status is not RunStatus.FAILED:
        return []
    found: list[Resolution] = []
    for task in run.tasks.values():
        if task.status is not TaskStatus.FAILED or task.error is None:
            continue
        node = definition.node(task.node_id)
        error_class = classify(task.error.code, task.error.message)
        n = task.node_id

        def add(kind: str, why: str, parameters: tuple[str, ...] = ()) -> None:
            found.append(Resolution(kind, n, why, error_class, parameters))  # noqa: B023

        if error_class == TRANSIENT:
            add("retry_task", "the failure looks temporary; run the task again as it was")
        elif error_class == CREDENTIALS:
            add(
                "update_credentials_then_restart",
                "the service refused the credentials; update them, then restart from here",
            )
        elif error_class == THRESHOLD:
            add(
                "override_parameter",
                "raise the threshold for this run only, then retry the check",
                THRESHOLD_FIELDS,
            )
        elif error_class == MISSING_INPUT:
            add(
                "ignore_missing_input",
                "the input lacks a field; go on without this task's output",
            )
        elif error_class == CONFIGURATION:
            add("restart", "fix the workflow definition, then restart on the new version")
        if error_class != TRANSIENT:
            add("retry_task", "run the task again with the same inputs")
        if node.skippable and error_class != CREDENTIALS:
            add("skip_task", "mark the task skipped and continue; downstream sees no output")
    if found and not any(r.kind == "restart" for r in found):
        found.append(
            Resolution(
                "restart",
                run.failed_node_id,
                "continue from the failed tasks on the workflow's current version",
                classify(run.error.code, run.error.message) if run.error else DATA,
            )
        )
    return found


def command_for(
    run: RunState,
    definition: WorkflowDefinition,
    kind: str,
    node_id: str,
    parameters: Mapping[str, JsonValue],
    actor: str,
    comment: str = "",
    command_id: str = "",
) -> Command | str:
    """The command applying resolution ``kind``, or why it does not fit this run."""
    offered = [r for r in resolutions_for(run, definition) if r.kind == kind]
    if not offered:
        kinds = sorted({r.kind for r in resolutions_for(run, definition)})
        return f"{kind!r} does not fit run {run.run_id} (it offers: {', '.join(kinds) or 'none'})"
    resolution = next((r for r in offered if r.node_id == node_id), offered[0])
    node = resolution.node_id

    def make(
        action: str, node_id: str = "", config_override: Mapping[str, JsonValue] | None = None
    ) -> Command:
        return Command(
            action,
            actor,
            command_id=command_id,
            comment=comment,
            node_id=node_id,
            config_override=dict(config_override or {}),
        )

    if kind == "retry_task":
        command = make("retry_task", node_id=node)
    elif kind in ("skip_task", "ignore_missing_input"):
        command = make("skip_task", node_id=node)
    elif kind in ("restart", "update_credentials_then_restart"):
        command = make("restart")
    else:  # override_parameter
        unknown = sorted(set(parameters) - set(resolution.parameters))
        if not parameters or unknown:
            allowed = ", ".join(resolution.parameters)
            return f"override_parameter takes {allowed}; got {sorted(parameters) or 'nothing'}"
        if definition.node(node).type is NodeType.QUERY and not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in parameters.values()
        ):
            return "thresholds must be numbers"
        command = make("retry_task", node_id=node, config_override=dict(parameters))
    problem = command_problem(run, definition, command)
    return problem if problem else command
