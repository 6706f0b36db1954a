"""Events from producers: JSON messages on ``flowyard.events.ingest`` start the workflows
whose event trigger names their type and whose filter they pass.

A message is a JSON object with CloudEvents attributes: ``id`` and ``type`` are required,
``source``, ``time``, ``subject`` and ``data`` optional (``specversion`` and extensions are
kept but not needed). Anything else - not JSON, not an object, no ``id`` or ``type`` - goes
to the dead-letter topic with the reason.

One event may start several workflows, one run each. The run id is derived from
(workflow id, event id), so the same event delivered twice, or published twice by its
producer with the same id, starts no second run. The run's trigger data is the event
itself (``trigger.data`` is the event's data); its trigger detail is the event id.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from flowyard.adapters.kafka import Publisher, Record
from flowyard.adapters.mongo import MongoStore
from flowyard.config import Settings
from flowyard.domain.json import JsonObject
from flowyard.domain.json import loads as strict_json
from flowyard.domain.run import TriggerInfo, TriggerKind
from flowyard.domain.triggers import derived_run_id, event_matches
from flowyard.errors import DecodeError
from flowyard.metrics import ServiceMetrics
from flowyard.run_starts import refused, start_run

from flowyard_scheduler.registry import TriggerRegistry

log = logging.getLogger(__name__)

MAX_ID_LENGTH = 200


def _now() -> datetime:
    return datetime.now(UTC)


def parse_event(value: bytes | None) -> JsonObject:
    """The event in a message, or ``DecodeError`` saying what is wrong with it."""
    if not value:
        raise DecodeError("event is empty; expected a JSON object with id and type")
    try:
        event = strict_json(value)  # NaN, Infinity and 1e999 are not JSON either
    except ValueError as exc:
        raise DecodeError(f"event is not valid JSON: {exc}") from exc
    if not isinstance(event, dict):
        raise DecodeError(f"event must be a JSON object, not {type(event).__name__}")
    for attribute in ("id", "type"):
        value_of = event.get(attribute)
        if not isinstance(value_of, str) or not value_of.strip():
            raise DecodeError(f"event has no {attribute!r} (a non-empty string is required)")
    if len(str(event["id"])) > MAX_ID_LENGTH:  # a str: checked above
        raise DecodeError(f"event id is longer than {MAX_ID_LENGTH} characters")
    return event


class EventIngest:
    """The handler of the events consumer: match, then start one run per workflow."""

    def __init__(
        self,
        settings: Settings,
        store: MongoStore,
        publisher: Publisher,
        metrics: ServiceMetrics,
        registry: TriggerRegistry,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self._topics = settings.topics
        self._store = store
        self._publisher = publisher
        self._metrics = metrics
        self._registry = registry
        self._clock = clock

    async def handle(self, record: Record) -> None:
        event = parse_event(record.value)
        event_id, event_type = str(event["id"]), str(event["type"])
        source = event.get("source")
        for entry in await self._registry.listening_to(event_type):
            assert entry.spec.event is not None
            if not event_matches(entry.spec.event, event):
                continue
            workflow = entry.workflow
            if refused(self._metrics, workflow, "event", f"event {event_id}"):
                continue
            trigger = TriggerInfo(
                kind=TriggerKind.EVENT,
                data=event,
                detail=event_id,
                started_by=source if isinstance(source, str) else "",
            )
            run_id = derived_run_id(workflow.workflow_id, "event", event_id)
            started = await start_run(
                self._store, self._publisher, self._topics, workflow, trigger, run_id, self._clock()
            )
            if started.created:
                log.info("event %s (%s) started run %s of %s", event_id, event_type, run_id,
                         workflow.name)  # fmt: skip
            else:
                log.info("event %s: run %s of %s exists already (duplicate event id)",
                         event_id, run_id, workflow.name)  # fmt: skip
