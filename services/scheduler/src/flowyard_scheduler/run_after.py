"""Run after: when a run succeeds, start the active workflows whose trigger says
``after: {workflow: <its workflow's name>}``.

The downstream run's trigger data is ``{workflow, workflow_id, run_id, outputs}`` of the
upstream run (``outputs``: its final tasks' outputs, by node id); its trigger detail is
the upstream run id, and its id is derived from (downstream workflow id, upstream run id),
so a redelivered success starts nothing twice. Dry runs start nothing downstream.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from flowyard.adapters.kafka import Publisher
from flowyard.adapters.mongo import MongoStore
from flowyard.adapters.trigger_store import TriggerStore
from flowyard.config import Topics
from flowyard.domain import engine
from flowyard.domain.definition import WorkflowDefinition
from flowyard.domain.json import JsonObject
from flowyard.domain.run import RunState, RunStatus, TriggerInfo, TriggerKind
from flowyard.domain.triggers import derived_run_id
from flowyard.metrics import ServiceMetrics
from flowyard.run_starts import refused, start_run

from flowyard_scheduler.registry import TriggerRegistry

log = logging.getLogger(__name__)


def _now() -> datetime:
    return datetime.now(UTC)


class RunAfter:
    def __init__(
        self,
        topics: Topics,
        store: MongoStore,
        publisher: Publisher,
        metrics: ServiceMetrics,
        registry: TriggerRegistry | None = None,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self._topics = topics
        self._store = store
        self._publisher = publisher
        self._metrics = metrics
        self._registry = registry or TriggerRegistry(store, TriggerStore(store))
        self._clock = clock

    async def run_finished(self, run: RunState, definition: WorkflowDefinition) -> None:
        """Start what runs after ``run``, if it succeeded (idempotent)."""
        if run.status is not RunStatus.SUCCEEDED or run.test or not run.workflow_name:
            return
        downstream = await self._registry.after(run.workflow_name)
        if not downstream:
            return
        data: JsonObject = {
            "workflow": run.workflow_name,
            "workflow_id": run.workflow_id,
            "run_id": run.run_id,
            "outputs": engine.run_output(run, definition),
        }
        for entry in downstream:
            workflow = entry.workflow
            if refused(self._metrics, workflow, "after", f"upstream run {run.run_id}"):
                continue
            trigger = TriggerInfo(
                kind=TriggerKind.WORKFLOW,
                data=data,
                detail=run.run_id,
                started_by=run.trigger.started_by,
            )
            run_id = derived_run_id(workflow.workflow_id, "after", run.run_id)
            started = await start_run(
                self._store, self._publisher, self._topics, workflow, trigger, run_id, self._clock()
            )
            if started.created:
                log.info("run %s of %s succeeded: started run %s of %s", run.run_id,
                         run.workflow_name, run_id, workflow.name)  # fmt: skip
