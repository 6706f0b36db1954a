"""Run detail options (FEATURES R5): hide skipped tasks, hide warnings."""

from __future__ import annotations

from flowyard.v1 import run_pb2


def trim_run_view(
    view: run_pb2.Run, *, hide_skipped: bool = False, hide_warnings: bool = False
) -> run_pb2.Run:
    """``view`` without its skipped tasks and/or without warnings (on the run, its tasks
    and their attempts). Returns ``view`` itself when there is nothing to hide."""
    if not hide_skipped and not hide_warnings:
        return view
    trimmed = run_pb2.Run()
    trimmed.CopyFrom(view)
    if hide_skipped:
        kept = [t for t in trimmed.tasks if t.status != run_pb2.TASK_STATUS_SKIPPED]
        del trimmed.tasks[:]
        trimmed.tasks.extend(kept)
    if hide_warnings:
        del trimmed.warnings[:]
        for task in trimmed.tasks:
            del task.warnings[:]
            for attempt in task.attempts:
                del attempt.warnings[:]
    return trimmed
