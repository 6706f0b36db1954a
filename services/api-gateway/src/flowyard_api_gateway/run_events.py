"""Fan-out of run lifecycle events to live watchers (WatchRun).

Every gateway instance reads the whole run-events topic from its end, without a
consumer group (each instance must see every event), and wakes the watchers of the
run an event belongs to. Watchers then re-read the run from MongoDB, so a dropped
wake-up costs freshness until the next event, never correctness.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Iterator
from types import TracebackType

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError
from flowyard.errors import InfrastructureError

log = logging.getLogger(__name__)


class RunEventsHub:
    def __init__(self, bootstrap: str, topic: str) -> None:
        self._topic = topic
        # Without a group every partition is assigned to this instance (and new ones
        # as they appear); "latest" starts at the end, watchers read the run first anyway.
        self._consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="latest",
        )
        self._watchers: dict[str, set[asyncio.Event]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> RunEventsHub:
        try:
            await self._consumer.start()
        except KafkaError as exc:
            raise InfrastructureError(f"cannot read {self._topic}: {exc}") from exc
        self._task = asyncio.create_task(self._pump())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._consumer.stop()

    @contextlib.contextmanager
    def watch(self, run_id: str) -> Iterator[asyncio.Event]:
        """An event set whenever something happens to ``run_id``; clear it after reading."""
        event = asyncio.Event()
        self._watchers[run_id].add(event)
        try:
            yield event
        finally:
            self._watchers[run_id].discard(event)
            if not self._watchers[run_id]:
                del self._watchers[run_id]

    async def _pump(self) -> None:
        while True:
            try:
                batches = await self._consumer.getmany(timeout_ms=500)
            except KafkaError as exc:
                log.warning("run-events hub: fetch failed, retrying: %s", exc)
                await asyncio.sleep(1)
                continue
            for records in batches.values():
                for record in records:
                    run_id = record.key.decode(errors="replace") if record.key else ""
                    for event in self._watchers.get(run_id, ()):
                        event.set()
