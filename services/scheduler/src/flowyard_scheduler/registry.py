"""The workflows that start on their own (schedules, events, upstream runs), as the
scheduler's trigger loops see them.

Reading every workflow for every event would scan the registry each time; instead the
latest versions are kept in memory and re-read only when the registry changed (one small
query: the number of stored versions and the newest ``updated_at``, which a new version
or a pause/activation moves). So a workflow applied a moment ago matches the next event.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime

from flowyard.adapters.mongo import MongoStore
from flowyard.adapters.trigger_store import TriggerStore
from flowyard.domain.triggers import TriggerSpec, parse_trigger
from flowyard.domain.workflow import StoredWorkflow


@dataclass(frozen=True)
class Triggered:
    """A workflow's latest version and what starts it."""

    workflow: StoredWorkflow
    spec: TriggerSpec


class TriggerRegistry:
    def __init__(self, store: MongoStore, triggers: TriggerStore) -> None:
        self._store = store
        self._triggers = triggers
        self._token: tuple[int, datetime | None] | None = None
        self._entries: tuple[Triggered, ...] = ()
        self._lock = asyncio.Lock()

    async def current(self) -> tuple[Triggered, ...]:
        """Every workflow's latest version (any state) with its parsed trigger."""
        token = await self._triggers.registry_token()
        if token == self._token:
            return self._entries
        async with self._lock:
            if token != self._token:
                workflows = await self._store.list_workflows()
                self._entries = tuple(
                    Triggered(w, parse_trigger(w.definition.trigger.config))
                    for w in workflows
                    if any(n.type.value == "trigger" for n in w.definition.nodes)
                )
                self._token = token
        return self._entries

    async def scheduled(self) -> list[Triggered]:
        return [t for t in await self.current() if t.spec.schedule is not None]

    async def listening_to(self, event_type: str) -> list[Triggered]:
        return [
            t
            for t in await self.current()
            if t.spec.event is not None and t.spec.event.type == event_type
        ]

    async def after(self, upstream_name: str) -> list[Triggered]:
        return [t for t in await self.current() if t.spec.after == upstream_name]
