"""Schedules: starts one run per cron tick of every active workflow with a schedule trigger.

Every scheduler instance runs this loop; they agree without talking to each other:

- the run of a tick has an id derived from (workflow id, tick time), and storing it is
  create-if-new, so two instances on the same tick make one run;
- each workflow has a cursor in MongoDB, the last tick handled, moved forward with a
  compare-and-set after the tick's run is stored (a crash in between fires the same tick
  again, which finds its run already there).

A tick more than ``MISFIRE_GRACE`` old when seen was missed (no scheduler ran then). The
schedule's ``missed`` policy decides: ``skip`` drops missed ticks, ``run_once`` starts one
run for all of them (at the newest missed tick, its trigger data saying how many). Ticks
of a paused or draft workflow start nothing; they are counted in
``flowyard_runs_not_started_total`` and logged, and the cursor moves past them, so
activating the workflow does not catch up on its paused time.

A workflow seen for the first time starts from now; a schedule removed from a workflow
loses its cursor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from flowyard.adapters.kafka import Publisher
from flowyard.adapters.mongo import MongoStore
from flowyard.adapters.trigger_store import TriggerStore
from flowyard.config import Settings
from flowyard.domain.json import JsonObject
from flowyard.domain.run import TriggerInfo, TriggerKind
from flowyard.domain.triggers import (
    MissedTicks,
    Schedule,
    derived_run_id,
    due_ticks,
    tick_label,
)
from flowyard.domain.workflow import StoredWorkflow
from flowyard.errors import InfrastructureError
from flowyard.metrics import ServiceMetrics
from flowyard.run_starts import refused, start_run

from flowyard_scheduler.registry import Triggered, TriggerRegistry

log = logging.getLogger(__name__)


def _now() -> datetime:
    return datetime.now(UTC)


class CronLoop:
    def __init__(
        self,
        settings: Settings,
        store: MongoStore,
        publisher: Publisher,
        metrics: ServiceMetrics,
        registry: TriggerRegistry,
        triggers: TriggerStore,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self._topics = settings.topics
        self._interval = settings.cron_poll_seconds
        self._store = store
        self._publisher = publisher
        self._metrics = metrics
        self._registry = registry
        self._triggers = triggers
        self._clock = clock

    async def run_until(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.fire_due()
            except InfrastructureError as exc:
                log.warning("schedule poll failed, trying again: %s", exc)
            except Exception:  # a bug must not stop every schedule for good
                log.exception("schedule poll failed unexpectedly; trying again")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._interval)

    async def fire_due(self) -> int:
        """Start the runs every schedule owes now; the number of runs created."""
        scheduled = await self._registry.scheduled()
        ids = [t.workflow.workflow_id for t in scheduled]
        await self._triggers.drop_cursors_except(ids)
        if not scheduled:
            return 0
        cursors = await self._triggers.cursors_of(ids)
        created = 0
        for entry in scheduled:
            now = self._clock()
            workflow_id = entry.workflow.workflow_id
            last = cursors.get(workflow_id)
            if last is None:
                await self._triggers.start_cursor(workflow_id, now)
                continue
            created += await self._fire(entry, last, now)
        return created

    async def _fire(self, entry: Triggered, last: datetime, now: datetime) -> int:
        schedule = entry.spec.schedule
        assert schedule is not None
        workflow = entry.workflow
        due = due_ticks(schedule, last, now)
        newest = due.newest
        if newest is None:
            return 0
        to_fire = due.to_fire(schedule.missed)
        if refused(self._metrics, workflow, "schedule", "", count=0):
            # Paused or draft: the ticks pass unfired; whoever moves the cursor reports them.
            if await self._triggers.move_cursor(workflow.workflow_id, last, newest):
                refused(
                    self._metrics, workflow, "schedule", tick_label(schedule, newest), len(to_fire)
                )
            return 0
        if due.missed and schedule.missed is MissedTicks.SKIP:
            log.warning(
                "workflow %s: skipped %d missed schedule tick(s) up to %s",
                workflow.name,
                due.missed,
                tick_label(schedule, due.latest_missed or newest),
            )
        created = 0
        for tick in to_fire:
            missed = due.missed if tick == due.latest_missed else 0
            created += await self._start(workflow, schedule, tick, missed)
        await self._triggers.move_cursor(workflow.workflow_id, last, newest)
        return created

    async def _start(
        self, workflow: StoredWorkflow, schedule: Schedule, tick: datetime, missed: int
    ) -> int:
        label = tick_label(schedule, tick)
        data: JsonObject = {"tick": label, "cron": schedule.cron, "timezone": schedule.timezone}
        if missed:
            data["missed_ticks"] = missed
        trigger = TriggerInfo(kind=TriggerKind.SCHEDULE, data=data, detail=label)
        run_id = derived_run_id(workflow.workflow_id, "schedule", tick.isoformat())
        started = await start_run(
            self._store, self._publisher, self._topics, workflow, trigger, run_id, self._clock()
        )
        if started.created:
            log.info("workflow %s: schedule tick %s started run %s", workflow.name, label, run_id)
        return 1 if started.created else 0
