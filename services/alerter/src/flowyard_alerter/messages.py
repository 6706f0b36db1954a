"""What an alert says (A4, A5): the same facts for email (plain text) and Slack (mrkdwn).

Every alert names what happened, the workflow, the run id, the trigger, the failing task
and its error when there is one, a suggested resolution derived from the error code, and
a link to the run (``FLOWYARD_RUN_LINK_BASE``/<run id>).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from flowyard.domain.alerts import AlertKind
from flowyard.domain.resolutions import (
    CONFIGURATION,
    CREDENTIALS,
    DATA,
    MISSING_INPUT,
    THRESHOLD,
    TRANSIENT,
    classify,
)

# Error codes with their own advice; any other code gets its class's advice below.
_BY_CODE: dict[str, str] = {
    "http.connection": (
        "Check that the endpoint named in the error is up and reachable from the executors "
        "(host, port, DNS, firewall), then retry the task."
    ),
    "http.timeout": (
        "The endpoint answered too slowly: check its health or raise the node's "
        "timeout_seconds, then retry the task."
    ),
    "http.status": (
        "The endpoint refused the request: read the status and response body in the task's "
        "output, fix the request (or the service), then retry the task."
    ),
    "threshold.failure": (
        "The query's value crossed its failure threshold: review the data it reads. If the "
        "value is expected, override the threshold for this run only and retry the check."
    ),
    "expression.missing_field": (
        "An expression reads a field the data does not have: fix the trigger input or the "
        "workflow definition, then rerun (or skip the task if its output is not needed)."
    ),
    "approval.rejected": (
        "An approver rejected the run: read the reason above, address it, and start a new "
        "run (or replay this one) once it is settled."
    ),
    "code.exception": (
        "The code node raised: read the stack trace in the task's error, fix the code or its "
        "input, then retry the task."
    ),
    "code.timeout": (
        "The code node ran out of time: make it faster or raise its timeout_seconds, then "
        "retry the task."
    ),
    "code.memory": "The code node ran out of memory: process less at once, then retry the task.",
    "executor.lost": (
        "Executors stopped responding while running the task: check that they are up and "
        "healthy, then retry the task."
    ),
    "task.timeout": (
        "The task exceeded its timeout: check what it waits for, or raise timeout_seconds, "
        "then retry the task."
    ),
    "workflow.child_failed": (
        "The workflow this run started failed: open the child run, fix it, then retry this task."
    ),
    "concurrency.limit": (
        "The workflow already runs as many runs as its concurrency allows: wait for them or "
        "raise concurrency.max_runs, then start the run again."
    ),
    "email.delivery": (
        "The SMTP server refused the message: check the recipients and the server's "
        "policy, then retry the task."
    ),
}
_BY_CLASS: dict[str, str] = {
    TRANSIENT: "The failure looks temporary: check the service it names, then retry the task.",
    CREDENTIALS: (
        "The service refused the credentials: update them, then restart the run from the "
        "failed task."
    ),
    THRESHOLD: "Review the data, or override the threshold for this run only and retry.",
    MISSING_INPUT: "Fix the input or the definition, then rerun.",
    CONFIGURATION: (
        "The workflow's configuration is wrong for this run: fix the definition, then "
        "restart the run on the new version."
    ),
    DATA: "Read the error and the task's input, fix the cause, then retry the task.",
}


def suggested_resolution(kind: AlertKind, error_code: str, error_message: str = "") -> str:
    """What to do about it, from the alert kind and the error code."""
    if kind is AlertKind.RUNTIME:
        return (
            "The run is still going: check the task that is running now (flowyard run get), "
            "whether it waits on a slow service, and stop the run if it is stuck."
        )
    if kind is AlertKind.STOPPED:
        return "Nothing to do unless the stop was a mistake: then replay the run."
    if kind is AlertKind.SUCCEEDED:
        return "Nothing to do."
    if kind is AlertKind.UPSTREAM:
        return (
            "Fix the upstream run (see its error); the workflows that run after it start "
            "once it succeeds."
        )
    if kind is AlertKind.QUERY and not error_code:
        return (
            "The query crossed its warning threshold; the run goes on. Review the data before "
            "it reaches the failure threshold."
        )
    if error_code in _BY_CODE:
        return _BY_CODE[error_code]
    if not error_code:
        return "Open the run to see what happened."
    return _BY_CLASS.get(classify(error_code, error_message), _BY_CLASS[DATA])


@dataclass(frozen=True)
class AlertContext:
    """The facts one alert reports."""

    kind: AlertKind
    run_id: str
    workflow_name: str
    workflow_type: str
    workflow_version: int
    event_at: datetime
    trigger: str = ""
    failed_node: str = ""
    error_code: str = ""
    error_message: str = ""
    # Kind-specific: "value 12 is over the warning threshold 10", "running for 65 s" ...
    detail: str = ""
    # Upstream alerts: the workflows that will be delayed.
    delayed_workflows: tuple[str, ...] = field(default_factory=tuple)
    test_run: bool = False


@dataclass(frozen=True)
class Rendered:
    subject: str
    body: str
    slack_text: str


_HEADLINES = {
    AlertKind.FAILED: ("FAILED", ":red_circle:", "failed"),
    AlertKind.SUCCEEDED: ("SUCCEEDED", ":large_green_circle:", "succeeded"),
    AlertKind.RUNTIME: ("RUNNING LONG", ":hourglass:", "is running longer than its threshold"),
    AlertKind.QUERY: ("QUERY THRESHOLD", ":warning:", "crossed a query threshold"),
    AlertKind.STOPPED: ("STOPPED", ":black_square_for_stop:", "was stopped"),
    AlertKind.UPSTREAM: ("UPSTREAM FAILED", ":construction:", "failed; downstream is delayed"),
}


def run_link(base: str, run_id: str) -> str:
    return f"{base.rstrip('/')}/{run_id}"


def render(context: AlertContext, link_base: str) -> Rendered:
    label, emoji, verb = _HEADLINES[context.kind]
    workflow = context.workflow_name or "(unknown workflow)"
    link = run_link(link_base, context.run_id)
    what = f"Run {context.run_id} of workflow {workflow} {verb}."
    if context.detail:
        what = f"{what} {context.detail}"
    if context.test_run:
        what = f"{what} (a dry run)"
    resolution = suggested_resolution(context.kind, context.error_code, context.error_message)
    error = ""
    if context.error_code or context.error_message:
        code = f"[{context.error_code}] " if context.error_code else ""
        error = f"{code}{context.error_message or '(no message)'}"
    version = f", version {context.workflow_version}" if context.workflow_version else ""
    facts: list[tuple[str, str]] = [
        ("What happened", what),
        ("Workflow", f"{workflow} (type {context.workflow_type or '-'}{version})"),
        ("Run", context.run_id),
        ("Trigger", context.trigger or "unknown"),
    ]
    if context.delayed_workflows:
        facts.append(("Delayed workflows", ", ".join(context.delayed_workflows)))
    if context.failed_node:
        facts.append(("Failing task", context.failed_node))
    if error:
        facts.append(("Error", error))
    facts.append(("Suggested resolution", resolution))
    facts.append(("Link", link))
    subject = f"[Flowyard] {label}: {workflow} run {context.run_id}"
    if context.failed_node and context.kind in (AlertKind.FAILED, AlertKind.QUERY):
        subject += f" at {context.failed_node}"
    width = max(len(name) for name, _ in facts) + 1
    body_lines = [f"{name + ':':<{width}} {value}" for name, value in facts]
    commands = [f"Details:     flowyard run get {context.run_id}"]
    if context.kind is AlertKind.RUNTIME:
        commands.append(f"Stop it:     flowyard run stop {context.run_id}")
    elif context.error_code:
        commands.append(f"Resolutions: flowyard run resolutions {context.run_id}")
    body = "\n".join([*body_lines, "", *commands, ""])
    slack_lines = [f"{emoji} *{_slack_escape(what)}*"]
    for name, value in facts[1:]:
        if name == "Link":
            slack_lines.append(f"*Link:* <{link}|open run {context.run_id}>")
        elif name in ("Run", "Failing task"):
            slack_lines.append(f"*{name}:* `{_slack_escape(value)}`")
        else:
            slack_lines.append(f"*{name}:* {_slack_escape(value)}")
    return Rendered(subject=subject, body=body, slack_text="\n".join(slack_lines))


def _slack_escape(text: str) -> str:
    """Slack mrkdwn needs &, < and > escaped (its own control characters)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
