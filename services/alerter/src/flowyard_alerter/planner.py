"""From lifecycle events to queued alerts: which kind, for whom, saying what (A1-A3, A7).

| event | alert |
|---|---|
| run -> failed | ``failed``; and ``upstream`` to the policies of the workflows that run after it |
| run -> succeeded | ``succeeded`` (policies that enable it; subscribers always) |
| run -> stopped | ``stopped`` (names who stopped it) |
| run -> running | a runtime watch per policy with a threshold; when one comes due while |
|   | the run is still unfinished, ``runtime`` |
| query task succeeded with warnings / failed with ``threshold.failure`` | ``query`` |

Each (run, kind, recipient) becomes one :class:`Alert` stored under its dedup key; only a
newly stored alert (or one still waiting for its first attempt, after a crash) is handed
to ``enqueue`` for delivery. Dry runs alert their subscribers only, not the policies.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta

from flowyard.adapters.alert_store import AlertStore
from flowyard.adapters.mongo import MongoStore
from flowyard.codec import RUN_STATUS_FROM_PROTO
from flowyard.config import AlertSettings
from flowyard.domain.alerts import (
    Alert,
    AlertKind,
    AlertPolicy,
    DeliveryStatus,
    Recipient,
    RunSubscription,
    RuntimeWatch,
    alert_id,
    recipients_for,
)
from flowyard.domain.run import RunState, RunStatus, TaskStatus, TriggerInfo
from flowyard.domain.triggers import parse_trigger
from flowyard.domain.workflow import WorkflowState
from flowyard.errors import DecodeError
from flowyard.v1 import events_pb2, run_pb2

from flowyard_alerter.messages import AlertContext, render

log = logging.getLogger(__name__)

Enqueue = Callable[[Alert], Awaitable[None]]
Clock = Callable[[], datetime]

THRESHOLD_FAILURE = "threshold.failure"
# Policies and run-after relations are re-read at most this often (seconds).
CACHE_SECONDS = 1.0
# A queued alert nobody claimed is handed over again after this many leases: long enough
# not to duplicate hand-overs still waiting in a backlog.
HANDOVER_GRACE = 4
_KIND_OF_STATUS = {
    RunStatus.FAILED: AlertKind.FAILED,
    RunStatus.SUCCEEDED: AlertKind.SUCCEEDED,
    RunStatus.STOPPED: AlertKind.STOPPED,
}


def _now() -> datetime:
    return datetime.now(UTC)


def describe_trigger(trigger: TriggerInfo | None) -> str:
    if trigger is None:
        return "unknown"
    text = trigger.kind.value
    if trigger.started_by:
        text += f" by {trigger.started_by}"
    if trigger.detail:
        text += f" ({trigger.detail})"
    return text


class PolicyCache:
    """Every alert policy, re-read when older than ``max_age`` seconds: one query a second
    at most instead of one per event. A policy change reaches alerts within ``max_age``."""

    def __init__(self, store: AlertStore, max_age: float) -> None:
        self._store = store
        self._max_age = max_age
        self._policies: list[AlertPolicy] = []
        self._read_at = float("-inf")
        self._lock = asyncio.Lock()

    async def covering(self, workflow_name: str, workflow_type: str) -> list[AlertPolicy]:
        if time.monotonic() - self._read_at > self._max_age:
            async with self._lock:
                if time.monotonic() - self._read_at > self._max_age:
                    self._policies = await self._store.list_policies()
                    self._read_at = time.monotonic()
        return [p for p in self._policies if p.covers(workflow_name, workflow_type)]


class AlertPlanner:
    def __init__(
        self,
        alerts: AlertStore,
        runs: MongoStore,
        settings: AlertSettings,
        enqueue: Enqueue,
        clock: Clock = _now,
        *,
        cache_seconds: float = CACHE_SECONDS,
    ) -> None:
        self._alerts = alerts
        self._runs = runs
        self._settings = settings
        self._enqueue = enqueue
        self._clock = clock
        self._policies = PolicyCache(alerts, cache_seconds)
        self._cache_seconds = cache_seconds
        self._after: dict[str, list[tuple[str, str]]] = {}
        self._after_read_at = float("-inf")
        self._after_lock = asyncio.Lock()

    # --- events ------------------------------------------------------------------------

    async def on_envelope(self, envelope: events_pb2.Envelope) -> None:
        payload = envelope.WhichOneof("payload")
        if payload == "run_status_changed":
            await self._run_status(envelope)
        elif payload == "task_status_changed":
            await self._task_status(envelope)

    async def _run_status(self, envelope: events_pb2.Envelope) -> None:
        change = envelope.run_status_changed
        status = RUN_STATUS_FROM_PROTO.get(change.status)
        if status is None:
            raise DecodeError(f"run_status_changed has an unknown status ({change.status})")
        event_at = envelope.time.ToDatetime(tzinfo=UTC) if envelope.HasField("time") else None
        event_at = event_at or self._clock()
        if status is RunStatus.RUNNING:
            await self._watch_runtime(envelope, event_at)
            return
        if status.finished:
            await self._alerts.end_watches(envelope.run_id)
        kind = _KIND_OF_STATUS.get(status)
        if kind is None:
            return
        run, subscriptions = await asyncio.gather(
            self._runs.find_run(envelope.run_id), self._alerts.subscriptions_of(envelope.run_id)
        )
        detail = ""
        if kind is AlertKind.STOPPED:
            who = change.actor or (run.stopped_by if run else "")
            detail = f"Stopped by {who}." if who else "Stopped by an operator."
        context = AlertContext(
            kind=kind,
            run_id=envelope.run_id,
            workflow_name=change.workflow_name or (run.workflow_name if run else ""),
            workflow_type=change.workflow_type or (run.workflow_type if run else ""),
            workflow_version=envelope.workflow_version,
            event_at=event_at,
            trigger=describe_trigger(run.trigger if run else None),
            failed_node=change.failed_node_id,
            error_code=change.error.code,
            error_message=change.error.message,
            detail=detail,
            test_run=bool(run and run.test),
        )
        await self.raise_alert(context, subscriptions=subscriptions)
        if kind is AlertKind.FAILED and not context.test_run:
            await self._upstream_failed(context)

    async def _task_status(self, envelope: events_pb2.Envelope) -> None:
        change = envelope.task_status_changed
        if change.node_type != "query":
            return
        if change.status == run_pb2.TASK_STATUS_SUCCEEDED and change.warnings:
            level = "warning"
            detail = f"Query node {change.node_id}: {'; '.join(change.warnings)}."
        elif change.status == run_pb2.TASK_STATUS_FAILED and change.error.code == THRESHOLD_FAILURE:
            level = "failure"
            detail = f"Query node {change.node_id} crossed its failure threshold."
        else:
            return
        run, subscriptions = await asyncio.gather(
            self._runs.find_run(envelope.run_id), self._alerts.subscriptions_of(envelope.run_id)
        )
        event_at = envelope.time.ToDatetime(tzinfo=UTC) if envelope.HasField("time") else None
        context = AlertContext(
            kind=AlertKind.QUERY,
            run_id=envelope.run_id,
            workflow_name=change.workflow_name or (run.workflow_name if run else ""),
            workflow_type=change.workflow_type or (run.workflow_type if run else ""),
            workflow_version=envelope.workflow_version,
            event_at=event_at or self._clock(),
            trigger=describe_trigger(run.trigger if run else None),
            failed_node=change.node_id,
            error_code=change.error.code if level == "failure" else "",
            error_message=change.error.message if level == "failure" else "",
            detail=detail,
            test_run=bool(run and run.test),
        )
        await self.raise_alert(
            context, subscriptions=subscriptions, dedup_detail=f"{change.node_id}:{level}"
        )

    # --- runtime -----------------------------------------------------------------------

    async def _watch_runtime(self, envelope: events_pb2.Envelope, started_at: datetime) -> None:
        change = envelope.run_status_changed
        policies = await self._policies.covering(change.workflow_name, change.workflow_type)
        for policy in policies:
            if policy.runtime_threshold_seconds <= 0:
                continue
            threshold = policy.runtime_threshold_seconds
            await self._alerts.watch_runtime(
                RuntimeWatch(
                    run_id=envelope.run_id,
                    policy=policy.name,
                    workflow_name=change.workflow_name,
                    workflow_type=change.workflow_type,
                    started_at=started_at,
                    threshold_seconds=threshold,
                    due_at=started_at + timedelta(seconds=threshold),
                )
            )

    async def runtime_due(self, watch: RuntimeWatch) -> None:
        """A runtime threshold passed: alert if the run is still unfinished, then forget
        the watch (claimed by the caller, so one instance does this)."""
        run = await self._runs.find_run(watch.run_id)
        if run is not None and not run.status.finished:
            now = self._clock()
            elapsed = (now - (run.started_at or watch.started_at)).total_seconds()
            context = AlertContext(
                kind=AlertKind.RUNTIME,
                run_id=run.run_id,
                workflow_name=run.workflow_name,
                workflow_type=run.workflow_type,
                workflow_version=run.workflow_version,
                event_at=watch.due_at,
                trigger=describe_trigger(run.trigger),
                detail=(
                    f"It has been {run.status.value} for {elapsed:.0f} s, over the "
                    f"{watch.threshold_seconds:g} s threshold of alert policy {watch.policy}."
                    + _running_now(run)
                ),
                test_run=run.test,
            )
            policies = [
                p
                for p in await self._policies.covering(run.workflow_name, run.workflow_type)
                if p.name == watch.policy
            ]
            await self.raise_alert(context, policies=policies)
        await self._alerts.delete_watch(watch)

    # --- upstream ----------------------------------------------------------------------

    async def _upstream_failed(self, failed: AlertContext) -> None:
        """A7: the recipients of every active workflow that runs after this one hear that
        it will be delayed; one alert per recipient, naming their delayed workflows."""
        downstream = await self._downstream_of(failed.workflow_name)
        if not downstream:
            return
        delayed: dict[Recipient, list[str]] = {}
        for name, workflow_type in downstream:
            policies = await self._policies.covering(name, workflow_type)
            for recipient in recipients_for(AlertKind.UPSTREAM, name, workflow_type, policies):
                delayed.setdefault(recipient, []).append(name)
        for recipient, names in sorted(delayed.items()):
            context = AlertContext(
                kind=AlertKind.UPSTREAM,
                run_id=failed.run_id,
                workflow_name=failed.workflow_name,
                workflow_type=failed.workflow_type,
                workflow_version=failed.workflow_version,
                event_at=failed.event_at,
                trigger=failed.trigger,
                failed_node=failed.failed_node,
                error_code=failed.error_code,
                error_message=failed.error_message,
                detail=(
                    f"{', '.join(sorted(names))} run{'s' if len(names) == 1 else ''} after it "
                    "and will be delayed until it succeeds."
                ),
                delayed_workflows=tuple(sorted(names)),
            )
            await self._queue(context, [recipient])

    async def _downstream_of(self, workflow_name: str) -> list[tuple[str, str]]:
        """(name, type) of the active workflows whose trigger runs after ``workflow_name``."""
        if not workflow_name:
            return []
        if time.monotonic() - self._after_read_at > self._cache_seconds:
            async with self._after_lock:
                if time.monotonic() - self._after_read_at > self._cache_seconds:
                    self._after = await self._read_after()
                    self._after_read_at = time.monotonic()
        return self._after.get(workflow_name, [])

    async def _read_after(self) -> dict[str, list[tuple[str, str]]]:
        after: dict[str, list[tuple[str, str]]] = {}
        for workflow in await self._runs.list_workflows():
            if workflow.state is not WorkflowState.ACTIVE:
                continue
            try:
                upstream = parse_trigger(workflow.definition.trigger.config).after
            except (ValueError, StopIteration):  # an unreadable stored definition
                continue
            if upstream:
                after.setdefault(upstream, []).append((workflow.name, workflow.definition.type))
        return after

    # --- queueing ----------------------------------------------------------------------

    async def raise_alert(
        self,
        context: AlertContext,
        *,
        dedup_detail: str = "",
        policies: Sequence[AlertPolicy] | None = None,
        subscriptions: Sequence[RunSubscription] | None = None,
    ) -> None:
        """Queue ``context`` for everyone who gets it: the covering policies that want
        its kind (not for dry runs) and the run's subscribers."""
        if policies is None:
            policies = await self._policies.covering(context.workflow_name, context.workflow_type)
        if subscriptions is None:
            subscriptions = await self._alerts.subscriptions_of(context.run_id)
        recipients = recipients_for(
            context.kind,
            context.workflow_name,
            context.workflow_type,
            policies,
            subscriptions,
            include_policies=not context.test_run,
        )
        await self._queue(context, recipients, dedup_detail)

    async def _queue(
        self, context: AlertContext, recipients: Iterable[Recipient], dedup_detail: str = ""
    ) -> None:
        rendered = render(context, self._settings.run_link_base)
        now = self._clock()
        alerts = [
            Alert(
                alert_id=alert_id(context.run_id, context.kind, recipient, dedup_detail),
                run_id=context.run_id,
                kind=context.kind,
                recipient=recipient,
                subject=rendered.subject,
                body=rendered.body,
                slack_text=rendered.slack_text,
                workflow_name=context.workflow_name,
                workflow_type=context.workflow_type,
                event_at=context.event_at,
                created_at=now,
                # The poller's fallback should the hand-over to delivery get lost (it is
                # on the broker before the event is acknowledged, so this is a safety net).
                due_at=now + timedelta(seconds=HANDOVER_GRACE * self._settings.lease_seconds),
            )
            for recipient in recipients
        ]
        await asyncio.gather(*(self._store_and_hand_over(alert) for alert in alerts))

    async def _store_and_hand_over(self, alert: Alert) -> None:
        if await self._alerts.insert_alert(alert):
            await self._enqueue(alert)
            return
        # Stored before: a redelivered event. Hand it over again only if it never got to
        # its first attempt (the previous instance died in between).
        existing = await self._alerts.get_alert(alert.alert_id)
        if (
            existing is not None
            and existing.status is DeliveryStatus.PENDING
            and existing.attempts == 0
        ):
            await self._alerts.ensure_queued(existing)
            await self._enqueue(existing)


def _running_now(run: RunState) -> str:
    busy = sorted(
        t.node_id
        for t in run.tasks.values()
        if t.status in (TaskStatus.RUNNING, TaskStatus.WAITING)
    )
    return f" Running now: {', '.join(busy)}." if busy else ""
