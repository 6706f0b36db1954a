"""Pure rendering of runs for the terminal: protobuf messages in, text out (no I/O).

Every function takes ``tz`` (the zone times are shown in; ``None`` = the local zone) and,
where a running task's elapsed time matters, ``now``; tests pass both to get stable text.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, tzinfo
from typing import Any

from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2

from flowyard.codec import RUN_STATUS_FROM_PROTO, TASK_STATUS_FROM_PROTO, value_to_json
from flowyard.domain.run import RunStatus, TaskStatus
from flowyard.v1 import run_pb2

VALUE_LIMIT = 200
"""Characters of a task's input or output shown in table mode."""

_UTC_FORMAT = "%Y-%m-%d %H:%M:%S"


# --- small building blocks ---------------------------------------------------------------


def enum_label(name_of: Callable[[Any], str], value: int, prefix: str) -> str:
    """``RUN_STATUS_FAILED`` -> ``failed``; an unknown number is shown as the number.

    ``name_of`` is the enum's ``Name``, e.g. ``run_pb2.RunStatus.Name``.
    """
    try:
        name = name_of(value)
    except ValueError:
        return str(value)
    return name.removeprefix(prefix).lower()


def run_status_label(value: int) -> str:
    return enum_label(run_pb2.RunStatus.Name, value, "RUN_STATUS_")


def task_status_label(value: int) -> str:
    return enum_label(run_pb2.TaskStatus.Name, value, "TASK_STATUS_")


def run_finished(run: run_pb2.Run) -> bool:
    status = RUN_STATUS_FROM_PROTO.get(run.status)
    return status is not None and status.finished


def format_seconds(seconds: float) -> str:
    """``1.23s``, ``2m05s``, ``1h02m05s``."""
    if seconds < 60:
        return f"{max(seconds, 0.0):.2f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s"


def _moment(stamp: timestamp_pb2.Timestamp, tz: tzinfo | None) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC).astimezone(tz)


def format_time(
    message: Any, field: str, tz: tzinfo | None, fmt: str = _UTC_FORMAT, empty: str = "-"
) -> str:
    """A timestamp field of ``message`` in ``tz``, or ``empty`` when it is not set."""
    if not message.HasField(field):
        return empty
    return _moment(getattr(message, field), tz).strftime(fmt)


def elapsed_seconds(
    message: run_pb2.Run | run_pb2.Task | run_pb2.Attempt, now: datetime | None = None
) -> float | None:
    """The recorded duration, else finished - started, else (with ``now``) time so far."""
    if message.HasField("duration"):
        duration: duration_pb2.Duration = message.duration
        return duration.ToTimedelta().total_seconds()
    if not message.HasField("started_at"):
        return None
    started = _moment(message.started_at, None)
    if message.HasField("finished_at"):
        return (_moment(message.finished_at, None) - started).total_seconds()
    if now is not None:
        return (now - started).total_seconds()
    return None


def compact_json(value: struct_pb2.Value, limit: int | None = VALUE_LIMIT) -> str:
    """One-line JSON; longer than ``limit`` characters is cut and says so."""
    # Keys sorted: a protobuf Struct keeps no order, so this keeps the text stable.
    text = json.dumps(
        value_to_json(value), separators=(",", ":"), ensure_ascii=False, sort_keys=True
    )
    if limit is not None and len(text) > limit:
        return f"{text[:limit]}... ({len(text)} chars; -o json shows all)"
    return text


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces, headers first."""
    widths = [len(h) for h in headers]
    for row in rows:
        for index, cell in enumerate(row):
            widths[index] = max(widths[index], len(cell))
    lines = []
    for row in [headers, *rows]:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _indent(text: str, prefix: str) -> list[str]:
    return [prefix + line if line else line for line in text.rstrip("\n").splitlines()]


def _has_error(message: run_pb2.Run | run_pb2.Task | run_pb2.Attempt) -> bool:
    return message.HasField("error") and bool(message.error.code or message.error.message)


def error_summary(error: run_pb2.TaskError) -> str:
    """``code.exception: boom`` (first line of the message only)."""
    first = error.message.strip().splitlines()[0] if error.message.strip() else ""
    return ": ".join(part for part in (error.code, first) if part) or "unknown error"


def render_error(error: run_pb2.TaskError, prefix: str = "  ") -> list[str]:
    """Code, full message and stack trace of an error, as indented lines."""
    lines = [f"{prefix}error code: {error.code or '-'}"]
    message = error.message.rstrip("\n") or "-"
    message_lines = message.splitlines()
    lines.append(f"{prefix}message:    {message_lines[0]}")
    lines.extend(f"{prefix}            {line}" for line in message_lines[1:])
    if error.stack_trace.strip():
        lines.append(f"{prefix}stack trace:")
        lines.extend(_indent(error.stack_trace, prefix + "  "))
    return lines


def _last_failed_attempt(task: run_pb2.Task) -> str:
    numbers = [a.number for a in task.attempts if a.status == run_pb2.TASK_STATUS_FAILED]
    return str(numbers[-1]) if numbers else str(len(task.attempts) or "?")


# --- watching: one line per task change ------------------------------------------------


def _change_key(task: run_pb2.Task) -> tuple[int, int]:
    return task.status, len(task.attempts)


def changed_tasks(previous: run_pb2.Run | None, current: run_pb2.Run) -> list[run_pb2.Task]:
    """Tasks of ``current`` whose status (or attempt) differs from ``previous``.

    Against no previous snapshot every task that has left ``pending`` counts as changed.
    """
    before = {t.node_id: _change_key(t) for t in previous.tasks} if previous else {}
    changed = []
    for task in current.tasks:
        if task.node_id in before:
            if before[task.node_id] != _change_key(task):
                changed.append(task)
        elif task.status != run_pb2.TASK_STATUS_PENDING or task.attempts:
            changed.append(task)
    return changed


def render_task_change(
    task: run_pb2.Task, *, node_width: int = 0, tz: tzinfo | None = None, now: datetime
) -> str:
    """``HH:MM:SS  node_id  status  duration`` for a task whose status just changed.

    The time is when the task finished (or started); ``now`` when it has neither.
    A retry shows as ``retrying`` with the failed attempt's error.
    """
    status = TASK_STATUS_FROM_PROTO.get(task.status)
    if status is not None and status.finished and task.HasField("finished_at"):
        when = _moment(task.finished_at, tz)
    elif status is TaskStatus.RUNNING and task.HasField("started_at"):
        when = _moment(task.started_at, tz)
    else:
        when = now.astimezone(tz)
    label = task_status_label(task.status)
    detail = ""
    if status is TaskStatus.PENDING and task.attempts and _has_error(task):
        label = "retrying"
        detail = f"attempt {_last_failed_attempt(task)} failed: {error_summary(task.error)}"
    elif status is TaskStatus.RUNNING and len(task.attempts) > 1:
        detail = f"attempt {len(task.attempts)}"
    elif status is TaskStatus.FAILED and _has_error(task):
        detail = error_summary(task.error)
    seconds = elapsed_seconds(task) if status is not None and status.finished else None
    duration = format_seconds(seconds) if seconds is not None else "-"
    parts = [when.strftime("%H:%M:%S"), task.node_id.ljust(node_width), label.ljust(9)]
    parts.append(duration.rjust(8) if not detail else duration.rjust(8) + "  " + detail)
    return "  ".join(parts).rstrip()


def render_run_result(run: run_pb2.Run) -> str:
    """The closing summary of a watched run: outcome, time and, if it failed, why."""
    seconds = elapsed_seconds(run)
    took = f" in {format_seconds(seconds)}" if seconds is not None else ""
    lines = [f"run {run.run_id} {run_status_label(run.status)}{took}"]
    if RUN_STATUS_FROM_PROTO.get(run.status) is RunStatus.FAILED:
        failed = next((t for t in run.tasks if t.node_id == run.failed_node_id), None)
        if failed is None:
            failed = next((t for t in run.tasks if t.status == run_pb2.TASK_STATUS_FAILED), None)
        error = run.error if _has_error(run) else None
        if error is None and failed is not None and _has_error(failed):
            error = failed.error
        node = run.failed_node_id or (failed.node_id if failed else "")
        if node:
            name = f" ({failed.name})" if failed and failed.name and failed.name != node else ""
            lines.append(f"  failed task: {node}{name}")
        if error is not None:
            lines.extend(render_error(error))
    return "\n".join(lines)


def watch_exit_code(run: run_pb2.Run) -> int:
    """0 when the run succeeded, 1 when it failed or was stopped (or has not finished)."""
    return 0 if RUN_STATUS_FROM_PROTO.get(run.status) is RunStatus.SUCCEEDED else 1


# --- the run detail ----------------------------------------------------------------------


def _task_duration(task: run_pb2.Task, now: datetime | None) -> str:
    status = TASK_STATUS_FROM_PROTO.get(task.status)
    if status is TaskStatus.RUNNING:
        seconds = elapsed_seconds(task, now)
        return f"{format_seconds(seconds)}+" if seconds is not None else "-"
    seconds = elapsed_seconds(task)
    return format_seconds(seconds) if seconds is not None else "-"


def _header(run: run_pb2.Run, tz: tzinfo | None, now: datetime | None) -> list[str]:
    workflow = f"{run.workflow_name or run.workflow_id} v{run.workflow_version}"
    if run.test:  # a dry run's definition is in no registry: it has no version
        workflow = f"{run.workflow_name or '-'} [dry run]"
    if run.workflow_type:
        workflow += f" (type {run.workflow_type})"
    status = run_status_label(run.status)
    if RUN_STATUS_FROM_PROTO.get(run.status) is RunStatus.FAILED:
        where = f"at node {run.failed_node_id}" if run.failed_node_id else ""
        why = error_summary(run.error) if _has_error(run) else ""
        status += f" ({': '.join(p for p in (where, why) if p)})" if where or why else ""
    trigger = run.trigger.kind or "-"
    if run.trigger.started_by:
        trigger += f", started by {run.trigger.started_by}"
    if run.trigger.detail:
        trigger += f" ({run.trigger.detail})"
    seconds = elapsed_seconds(run, now)
    duration = format_seconds(seconds) if seconds is not None else "-"
    if seconds is not None and not run.HasField("finished_at"):
        duration += " so far"
    fields = [
        ("Run", run.run_id),
        ("Workflow", workflow),
        ("Status", status),
        ("Trigger", trigger),
    ]
    if run.trigger.idempotency_key:
        fields.append(("Idempotency key", run.trigger.idempotency_key))
    if run.parent_run_id:
        fields.append(("Started by run", f"{run.parent_run_id} (node {run.parent_node_id})"))
    if run.replay_of:
        fields.append(("Replay of", run.replay_of))
    fields += [
        ("Created", format_time(run, "created_at", tz)),
        ("Started", format_time(run, "started_at", tz)),
        ("Finished", format_time(run, "finished_at", tz)),
        ("Duration", duration),
    ]
    width = max(len(label) for label, _ in fields) + 2
    lines = [f"{label + ':':<{width}}{value}" for label, value in fields]
    lines += [f"{'Warning:':<{width}}{warning}" for warning in run.warnings]
    return lines


def render_audit(run: run_pb2.Run, tz: tzinfo | None = None) -> list[str]:
    """``Audit:`` and a line per operator action: when, who, what (on which task), why."""
    if not run.audit:
        return []
    lines = ["Audit:"]
    for entry in run.audit:
        what = entry.action + (f" {entry.node_id}" if entry.node_id else "")
        line = f"  {format_time(entry, 'at', tz)}  {entry.actor or '-'}  {what}"
        if entry.detail:
            line += f" ({entry.detail})"
        if entry.comment:
            line += f": {json.dumps(entry.comment, ensure_ascii=False)}"
        lines.append(line)
    return lines


def _task_table(run: run_pb2.Run, tz: tzinfo | None, now: datetime | None) -> str:
    with_stage = any(t.stage for t in run.tasks)
    headers = ["NODE", "TYPE", *(["STAGE"] if with_stage else []), "STATUS", "STARTED"]
    headers += ["DURATION", "ATTEMPTS"]
    rows = []
    for task in run.tasks:
        row = [task.node_id, task.type or "-", *([task.stage or "-"] if with_stage else [])]
        row += [task_status_label(task.status), format_time(task, "started_at", tz, "%H:%M:%S")]
        row += [_task_duration(task, now), str(len(task.attempts))]
        rows.append(row)
    return render_table(headers, rows)


def _task_detail(task: run_pb2.Task, tz: tzinfo | None, limit: int | None) -> list[str]:
    title = task.node_id
    if task.name and task.name != task.node_id:
        title += f' "{task.name}"'
    kind = ", ".join(p for p in (task.type, task_status_label(task.status)) if p)
    lines = [f"{title} ({kind})"]
    status = TASK_STATUS_FROM_PROTO.get(task.status)
    if task.HasField("due_at") and status in {TaskStatus.WAITING, TaskStatus.PENDING}:
        what = "resumes" if status is TaskStatus.WAITING else f"attempt {task.attempt} starts"
        lines.append(f"  {what} at {format_time(task, 'due_at', tz)}")
    if task.child_run_id:
        lines.append(f"  child run: {task.child_run_id}")
    lines.extend(f"  warning: {warning}" for warning in task.warnings)
    never_ran = status in {TaskStatus.PENDING, TaskStatus.SKIPPED, TaskStatus.CANCELLED}
    if never_ran and not task.attempts and not task.HasField("started_at"):
        return lines
    if task.HasField("input"):
        lines.append(f"  input:  {compact_json(task.input, limit)}")
    if task.HasField("output") and status is not TaskStatus.FAILED:
        lines.append(f"  output: {compact_json(task.output, limit)}")
    if _has_error(task):
        if status is not TaskStatus.FAILED:
            lines.append(f"  last failed attempt (attempt {_last_failed_attempt(task)}):")
        lines.extend(render_error(task.error))
    if len(task.attempts) > 1:
        lines.append("  attempts:")
        for attempt in task.attempts:
            seconds = elapsed_seconds(attempt)
            took = format_seconds(seconds) if seconds is not None else "-"
            started = format_time(attempt, "started_at", tz, "%H:%M:%S")
            line = f"    #{attempt.number}  {task_status_label(attempt.status):<9}  {started}"
            line += f"  {took:>8}"
            if _has_error(attempt):
                line += f"  {error_summary(attempt.error)}"
            lines.append(line)
    return lines


def render_run(
    run: run_pb2.Run,
    *,
    tz: tzinfo | None = None,
    now: datetime | None = None,
    value_limit: int | None = VALUE_LIMIT,
) -> str:
    """The run as a readable report: header, task table, then each task's data and errors."""
    lines = _header(run, tz, now)
    audit = render_audit(run, tz)
    if audit:
        lines += ["", *audit]
    if not run.tasks:
        lines += ["", "(no tasks)"]
    else:
        lines += ["", _task_table(run, tz, now)]
        for task in run.tasks:
            lines += ["", *_task_detail(task, tz, value_limit)]
    failed_task_errors = {
        t.error.SerializeToString(deterministic=True) for t in run.tasks if _has_error(t)
    }
    run_error = run.error.SerializeToString(deterministic=True)
    if _has_error(run) and run_error not in failed_task_errors:
        lines += ["", f"run error{f' (node {run.failed_node_id})' if run.failed_node_id else ''}:"]
        lines.extend(render_error(run.error))
    return "\n".join(lines)
