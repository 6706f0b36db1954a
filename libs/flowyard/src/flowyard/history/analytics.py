"""Analytics over run documents: durations (average, p95, max) per workflow and per step,
the slowest steps, success rates per workflow, type and day, runs per day, the duration
trend, and the queue depth of active runs.

Computed while streaming the period's run documents, so the cost grows with the runs in
the period. Success rate
is succeeded / (succeeded + failed): stopped runs were an operator's decision.
Percentiles use the nearest-rank method.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from flowyard import codec
from flowyard.history.query import RunQuery, range_start
from flowyard.v1 import history_pb2

PROJECTION: dict[str, Any] = {
    "status": 1,
    "workflow_name": 1,
    "workflow_type": 1,
    "created_at": 1,
    "duration_ms": 1,
    "tasks.node_id": 1,
    "tasks.status": 1,
    "tasks.started_at": 1,
    "tasks.finished_at": 1,
}


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of ``values`` (0 for none)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(math.ceil(fraction * len(ordered)), 1)
    return ordered[rank - 1]


@dataclass
class Tally:
    runs: int = 0
    succeeded: int = 0
    failed: int = 0
    durations: list[float] = field(default_factory=list)

    def add(self, status: str, seconds: float | None) -> None:
        self.runs += 1
        if status == "succeeded":
            self.succeeded += 1
        elif status == "failed":
            self.failed += 1
        if seconds is not None:
            self.durations.append(seconds)

    @property
    def success_rate(self) -> float:
        decided = self.succeeded + self.failed
        return self.succeeded / decided if decided else 0.0

    def stats(self) -> history_pb2.DurationStats:
        values = self.durations
        return history_pb2.DurationStats(
            count=len(values),
            avg_seconds=sum(values) / len(values) if values else 0.0,
            p95_seconds=percentile(values, 0.95),
            max_seconds=max(values) if values else 0.0,
        )


class Collector:
    def __init__(self) -> None:
        self.runs = 0
        self.workflows: dict[str, Tally] = defaultdict(Tally)
        self.workflow_types: dict[str, str] = {}
        self.types: dict[str, Tally] = defaultdict(Tally)
        self.days: dict[str, Tally] = defaultdict(Tally)
        self.steps: dict[tuple[str, str], Tally] = defaultdict(Tally)

    def add(self, doc: Mapping[str, Any]) -> None:
        self.runs += 1
        status = str(doc.get("status", ""))
        name = str(doc.get("workflow_name", ""))
        kind = str(doc.get("workflow_type", ""))
        duration_ms = int(doc.get("duration_ms", -1))
        seconds = duration_ms / 1000 if duration_ms >= 0 else None
        self.workflows[name].add(status, seconds)
        self.workflow_types[name] = kind
        self.types[kind].add(status, seconds)
        created = doc.get("created_at")
        if isinstance(created, datetime):
            self.days[created.astimezone(UTC).date().isoformat()].add(status, seconds)
        for task in doc.get("tasks") or ():
            started, finished = task.get("started_at"), task.get("finished_at")
            task_status = str(task.get("status", ""))
            if task_status not in ("succeeded", "failed"):
                continue
            step_seconds = None
            if isinstance(started, datetime) and isinstance(finished, datetime):
                step_seconds = max((finished - started).total_seconds(), 0.0)
            self.steps[(name, str(task.get("node_id", "")))].add(task_status, step_seconds)


class QueueCounter:
    """Tasks dispatched and not started, tasks running and runs queued, from active runs."""

    def __init__(self) -> None:
        self.dispatched = 0
        self.running = 0
        self.queued_runs = 0

    def add(self, doc: Mapping[str, Any]) -> None:
        if doc.get("status") == "queued":
            self.queued_runs += 1
        for task in doc.get("tasks") or ():
            status = task.get("status")
            if status == "running":
                self.running += 1
            elif status == "pending" and int(task.get("attempt", 0)) > 0 and not task.get("due_at"):
                self.dispatched += 1


def _step(workflow: str, node_id: str, tally: Tally) -> history_pb2.StepAnalytics:
    return history_pb2.StepAnalytics(
        workflow=workflow, node_id=node_id, duration=tally.stats(), failed=tally.failed
    )


def to_proto(
    collector: Collector, queue: QueueCounter, lag: int, query: RunQuery, top: int
) -> history_pb2.Analytics:
    since = max(
        [t for t in (range_start(query.date_range, query.now), query.since) if t is not None],
        default=None,
    )
    result = history_pb2.Analytics(
        since=codec.time_to_proto(since),
        until=codec.time_to_proto(query.until or query.now),
        runs=collector.runs,
        queue=history_pb2.QueueDepth(
            dispatched_not_started=queue.dispatched,
            running_tasks=queue.running,
            queued_runs=queue.queued_runs,
            consumer_lag=lag,
        ),
    )
    for name in sorted(collector.workflows):
        tally = collector.workflows[name]
        result.workflows.append(
            history_pb2.WorkflowAnalytics(
                workflow=name,
                workflow_type=collector.workflow_types.get(name, ""),
                runs=tally.runs,
                succeeded=tally.succeeded,
                failed=tally.failed,
                success_rate=tally.success_rate,
                duration=tally.stats(),
            )
        )
    steps = [_step(w, n, t) for (w, n), t in sorted(collector.steps.items())]
    result.steps.extend(steps)
    slowest = sorted(steps, key=lambda s: (-s.duration.p95_seconds, s.workflow, s.node_id))
    result.slowest_steps.extend(s for s in slowest[:top] if s.duration.count)
    for kind in sorted(collector.types):
        tally = collector.types[kind]
        result.types.append(
            history_pb2.TypeAnalytics(
                workflow_type=kind,
                runs=tally.runs,
                succeeded=tally.succeeded,
                failed=tally.failed,
                success_rate=tally.success_rate,
            )
        )
    for day in sorted(collector.days):
        tally = collector.days[day]
        stats = tally.stats()
        result.days.append(
            history_pb2.DayAnalytics(
                day=day,
                runs=tally.runs,
                succeeded=tally.succeeded,
                failed=tally.failed,
                success_rate=tally.success_rate,
                avg_seconds=stats.avg_seconds,
                p95_seconds=stats.p95_seconds,
            )
        )
    return result
