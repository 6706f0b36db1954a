"""Runs with known fields, stored through the real document mapping (run_to_doc), for the
history, export, analytics and retention tests and for bench/history.py."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from flowyard.adapters.mongo_documents import Document, run_to_doc
from flowyard.domain.run import (
    RunState,
    RunStatus,
    TaskError,
    TaskState,
    TaskStatus,
    TriggerInfo,
    TriggerKind,
)


@dataclass(frozen=True)
class Seed:
    workflow: str
    created_at: datetime
    status: RunStatus = RunStatus.SUCCEEDED
    workflow_type: str = "ops"
    version: int = 1
    trigger: TriggerKind = TriggerKind.API
    started_by: str = "alice"
    duration: timedelta | None = timedelta(seconds=10)
    # (node_id, status, seconds) per task; default: two succeeded steps.
    steps: Sequence[tuple[str, TaskStatus, float]] = field(
        default=(("fetch", TaskStatus.SUCCEEDED, 2.0), ("report", TaskStatus.SUCCEEDED, 3.0))
    )
    run_id: str = ""
    warnings: int = 0


def make_run(seed: Seed) -> RunState:
    start = seed.created_at
    finished = seed.status.finished and seed.duration is not None
    tasks: dict[str, TaskState] = {}
    moment = start
    for index, (node_id, status, seconds) in enumerate(seed.steps):
        end = moment + timedelta(seconds=seconds)
        tasks[node_id] = TaskState(
            node_id=node_id,
            status=status,
            attempt=1,
            started_at=moment if status is not TaskStatus.PENDING else None,
            finished_at=end if status.finished else None,
            error=TaskError("code.exception", "boom") if status is TaskStatus.FAILED else None,
            warnings=("slow",) * seed.warnings if index == 0 else (),
        )
        moment = end
    return RunState(
        run_id=seed.run_id or uuid.uuid4().hex,
        workflow_id=f"id-{seed.workflow}",
        workflow_name=seed.workflow,
        workflow_type=seed.workflow_type,
        workflow_version=seed.version,
        status=seed.status,
        trigger=TriggerInfo(kind=seed.trigger, data={}, started_by=seed.started_by),
        created_at=start,
        started_at=start if seed.status is not RunStatus.QUEUED else None,
        finished_at=start + seed.duration if finished and seed.duration is not None else None,
        tasks=tasks,
        error=TaskError("code.exception", "boom") if seed.status is RunStatus.FAILED else None,
        failed_node_id="fetch" if seed.status is RunStatus.FAILED else "",
    )


def seed_docs(seeds: Sequence[Seed]) -> list[Document]:
    return [run_to_doc(make_run(seed)) for seed in seeds]
