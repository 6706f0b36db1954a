"""Starting a run because something happened (a schedule tick, a webhook call, an event, an
upstream run): the same flow as the gateway's ``StartRun``.

The queued run is stored under a run id derived from its cause, then ``StartRun`` is
published on the triggers topic. The insert is create-if-new, so a cause seen twice (a
redelivered event, two scheduler instances on the same tick) yields one run; a run that
was stored but is still queued is published again, in case whoever stored it died before
publishing (the scheduler ignores a second ``StartRun`` of a started run).

A workflow that is not active (paused, draft) starts nothing: the attempt is counted in
``flowyard_runs_not_started_total{reason=paused|draft}`` and logged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from flowyard import codec
from flowyard.adapters.kafka import Publisher
from flowyard.adapters.mongo import MongoStore
from flowyard.config import Topics
from flowyard.domain import engine
from flowyard.domain.run import RunStatus, TriggerInfo
from flowyard.domain.workflow import StoredWorkflow, WorkflowState
from flowyard.metrics import ServiceMetrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Started:
    run_id: str
    # False when the cause had started this run already.
    created: bool


async def start_run(
    store: MongoStore,
    publisher: Publisher,
    topics: Topics,
    workflow: StoredWorkflow,
    trigger: TriggerInfo,
    run_id: str,
    now: datetime,
) -> Started:
    """Store the queued run (if new) and ask the scheduler to start it."""
    run = engine.new_run(
        run_id, workflow.workflow_id, workflow.version, workflow.definition, trigger, now
    )
    created = await store.insert_run(run)
    if not created:
        existing = await store.find_run(run_id)
        if existing is None or existing.status is not RunStatus.QUEUED:
            return Started(run_id, created=False)
        run = existing
    envelope = codec.new_envelope(run.run_id, run.workflow_id, run.workflow_version)
    envelope.start_run.workflow_name = run.workflow_name
    envelope.start_run.trigger.CopyFrom(codec.trigger_to_proto(run.trigger))
    await publisher.publish(topics.triggers, run.run_id, envelope)
    return Started(run_id, created)


def refused(
    metrics: ServiceMetrics, workflow: StoredWorkflow, kind: str, detail: str, count: int = 1
) -> bool:
    """True (and counted and logged) when ``workflow`` may not start runs now; ``count``
    is how many runs the trigger would have started (0: check only)."""
    if workflow.state is WorkflowState.ACTIVE:
        return False
    if count:
        state = workflow.state.value
        log.info(
            "%s trigger of workflow %s not fired (%s): the workflow is %s",
            kind,
            workflow.name,
            detail,
            state,
        )
        metrics.runs_not_started.labels(workflow=workflow.name, reason=state).inc(count)
    return True
