"""Kafka adapters: topic set-up, a publisher, and a consumer that commits only what
its handler has finished.

aiokafka (faust's own client) carries the hot path; kafka-python is used for topic
administration, in a worker thread so the event loop never blocks. Driver errors leave
this module as :class:`InfrastructureError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError as AioKafkaError
from google.protobuf.message import Message
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from flowyard.codec import decode_envelope
from flowyard.config import Settings
from flowyard.errors import ConflictError, DecodeError, InfrastructureError
from flowyard.metrics import ServiceMetrics
from flowyard.v1 import events_pb2

log = logging.getLogger(__name__)

# A handler error that is not an infrastructure failure is retried this often, then the
# message is dead-lettered so one poison message cannot stop a partition.
MAX_HANDLER_FAILURES = 3


def ensure_topics_blocking(bootstrap: str, topics: Iterable[str], partitions: int) -> None:
    """Create the missing topics (idempotent). Blocking: call it through a thread."""
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="flowyard-admin")
    except KafkaError as exc:
        raise InfrastructureError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc
    try:
        existing = set(admin.list_topics())
        missing = [t for t in topics if t not in existing]
        if missing:
            # Another process may create them first; that is success too.
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(
                    [NewTopic(t, num_partitions=partitions, replication_factor=1) for t in missing]
                )
    except KafkaError as exc:
        raise InfrastructureError(f"cannot create topics on {bootstrap}: {exc}") from exc
    finally:
        admin.close()


async def ensure_topics(settings: Settings) -> None:
    await asyncio.to_thread(
        ensure_topics_blocking,
        settings.kafka_bootstrap,
        settings.topics.all(),
        settings.topic_partitions,
    )


class Publisher(Protocol):
    """Port: send protobuf messages to topics."""

    async def publish(self, topic: str, key: str, message: Message) -> None: ...

    async def publish_many(self, items: Sequence[tuple[str, str, Message]]) -> None: ...


class KafkaPublisher:
    """Publishes protobuf messages keyed by run id; waits for the broker's acknowledgement."""

    def __init__(self, bootstrap: str, client_id: str) -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            client_id=client_id,
            acks="all",
            enable_idempotence=True,
            linger_ms=0,
        )

    async def __aenter__(self) -> KafkaPublisher:
        try:
            await self._producer.start()
        except AioKafkaError as exc:
            raise InfrastructureError(f"Kafka producer cannot start: {exc}") from exc
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._producer.stop()

    async def publish(self, topic: str, key: str, message: Message) -> None:
        await self.publish_many([(topic, key, message)])

    async def publish_many(self, items: Sequence[tuple[str, str, Message]]) -> None:
        # Send all, then wait for all: one round trip for a batch instead of one per message.
        try:
            futures = [
                await self._producer.send(topic, message.SerializeToString(), key=key.encode())
                for topic, key, message in items
            ]
            await asyncio.gather(*futures)
        except AioKafkaError as exc:
            raise InfrastructureError(f"Kafka publish failed: {exc}") from exc


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


EnvelopeHandler = Callable[[events_pb2.Envelope, Record], Awaitable[None]]


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, consumer: EnvelopeConsumer) -> None:
        self._consumer = consumer

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self._consumer._on_revoked()

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self._consumer._on_assigned()


class EnvelopeConsumer:
    """Consumes envelopes and calls ``handler`` for each, committing offsets only after the
    handler returned (at-least-once).

    ``concurrency`` > 1 runs handlers side by side but commits each partition only up to
    its lowest unfinished offset; ``ordered_by_key`` keeps messages with the same key (one
    run) in order while different keys proceed concurrently. A message that cannot be decoded,
    or whose handler raises a ``DecodeError``, goes to the dead-letter topic with the
    reason, and consumption moves on.
    """

    def __init__(
        self,
        settings: Settings,
        topics: Sequence[str],
        group: str,
        handler: EnvelopeHandler,
        publisher: Publisher,
        metrics: ServiceMetrics,
        service: str,
        concurrency: int = 1,
        ordered_by_key: bool = False,
        on_revoked: Callable[[], None] | None = None,
    ) -> None:
        self._topics = list(topics)
        self._group = group
        self._handler = handler
        self._publisher = publisher
        self._metrics = metrics
        self._service = service
        self._dead_letter_topic = settings.topics.dead_letter
        self._slots = asyncio.Semaphore(max(1, concurrency))
        self._on_revoked_callback = on_revoked
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap,
            group_id=group,
            client_id=f"{service}-{group}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=500,
            fetch_max_wait_ms=100,
        )
        self._ordered = ordered_by_key
        self._last_by_key: dict[bytes | None, asyncio.Task[None]] = {}
        self._in_flight: set[asyncio.Task[None]] = set()
        self._pending: dict[TopicPartition, dict[int, bool]] = {}
        self._stopping = asyncio.Event()
        self.assigned = asyncio.Event()

    async def __aenter__(self) -> EnvelopeConsumer:
        try:
            await self._consumer.start()
        except AioKafkaError as exc:
            raise InfrastructureError(f"Kafka consumer cannot start: {exc}") from exc
        self._consumer.subscribe(self._topics, listener=_Rebalance(self))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stopping.set()
        await self._drain()
        await self._commit()
        await self._consumer.stop()

    def stop(self) -> None:
        """Stop taking new messages; ``run`` returns after the in-flight ones finish."""
        self._stopping.set()

    async def run_until(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, then finish what is in flight."""
        watcher = asyncio.create_task(stop.wait())
        watcher.add_done_callback(lambda _: self.stop())
        try:
            await self.run()
        finally:
            watcher.cancel()

    async def run(self) -> None:
        while not self._stopping.is_set():
            try:
                batches = await self._consumer.getmany(timeout_ms=200, max_records=500)
            except AioKafkaError as exc:
                log.warning("%s: fetch failed, retrying: %s", self._service, exc)
                await asyncio.sleep(1)
                continue
            for tp, records in batches.items():
                for record in records:
                    await self._slots.acquire()
                    self._pending.setdefault(tp, {})[record.offset] = False
                    previous = self._last_by_key.get(record.key) if self._ordered else None
                    task = asyncio.create_task(self._handle(tp, record, previous))
                    if self._ordered:
                        self._last_by_key[record.key] = task
                    self._in_flight.add(task)
                    task.add_done_callback(self._forget)
            await self._commit()
            await self._record_lag()
        await self._drain()

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        # Drop finished chains so the per-key map does not grow with every run ever seen.
        for key in [k for k, t in self._last_by_key.items() if t is task]:
            del self._last_by_key[key]

    async def _handle(
        self, tp: TopicPartition, record: Any, previous: asyncio.Task[None] | None
    ) -> None:
        try:
            if previous is not None:
                await asyncio.wait([previous])
            item = Record(record.topic, record.partition, record.offset, record.key, record.value)
            self._metrics.messages_consumed.labels(topic=record.topic).inc()
            await self._handle_with_retries(item)
            self._pending.setdefault(tp, {})[record.offset] = True
        except Exception:
            # Only reached while stopping: the offset stays uncommitted, so the message is
            # handled again after the restart.
            log.warning(
                "%s: %s[%d]@%d left for redelivery",
                self._service,
                record.topic,
                record.partition,
                record.offset,
            )
        finally:
            self._slots.release()

    async def _handle_with_retries(self, item: Record) -> None:
        """Infrastructure failures (a busy database, a broker election) are retried with
        backoff for as long as the service runs, since skipping would lose state; a
        message whose handler keeps failing for any other reason is dead-lettered."""
        failures = 0
        while True:
            try:
                await self._dispatch(item)
                return
            except DecodeError as exc:
                await self.dead_letter(item, str(exc))
                return
            except (InfrastructureError, ConflictError) as exc:
                failures += 1
                if self._stopping.is_set():
                    raise
                delay = min(0.02 * 2**failures, 5.0)
                log.warning("%s: %s; retrying in %.2f s", self._service, exc, delay)
                await asyncio.sleep(delay)
            except Exception as exc:
                failures += 1
                if failures >= MAX_HANDLER_FAILURES:
                    log.exception("%s: handler keeps failing; dead-lettering", self._service)
                    await self.dead_letter(item, f"handler failed {failures} times: {exc!r}")
                    return
                await asyncio.sleep(0.1 * failures)

    async def _dispatch(self, item: Record) -> None:
        await self._handler(decode_envelope(item.value), item)

    async def dead_letter(self, record: Record, reason: str) -> None:
        letter = events_pb2.DeadLetter(
            source_topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key or b"",
            value=record.value or b"",
            reason=reason,
            service=self._service,
        )
        letter.time.GetCurrentTime()
        log.warning("%s: dead-lettering %s[%d]@%d: %s", self._service, record.topic,
                    record.partition, record.offset, reason)  # fmt: skip
        key = record.key.decode(errors="replace") if record.key else ""
        await self._publisher.publish(self._dead_letter_topic, key, letter)
        self._metrics.dead_letters.labels(topic=record.topic).inc()

    async def _commit(self) -> None:
        offsets: dict[TopicPartition, int] = {}
        for tp, states in self._pending.items():
            done_upto: int | None = None
            for offset in sorted(states):
                if not states[offset]:
                    break
                done_upto = offset
            if done_upto is not None:
                offsets[tp] = done_upto + 1
                for offset in [o for o in states if o <= done_upto]:
                    del states[offset]
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
        except AioKafkaError as exc:
            # The partition moved to another consumer; it will re-handle from the last commit.
            log.info("%s: commit skipped: %s", self._service, exc)

    async def _record_lag(self) -> None:
        for tp in self._consumer.assignment():
            highwater = self._consumer.highwater(tp)
            if highwater is None:
                continue
            try:
                position = await self._consumer.position(tp)
            except AioKafkaError:
                continue
            self._metrics.consumer_lag.labels(
                topic=tp.topic, partition=str(tp.partition), group=self._group
            ).set(max(0, highwater - position))

    async def _drain(self) -> None:
        if self._in_flight:
            await asyncio.gather(*list(self._in_flight), return_exceptions=True)

    async def _on_revoked(self) -> None:
        await self._drain()
        await self._commit()
        self._pending.clear()
        if self._on_revoked_callback:
            self._on_revoked_callback()

    def _on_assigned(self) -> None:
        self.assigned.set()


RecordHandler = Callable[[Record], Awaitable[None]]


async def _no_envelopes(envelope: events_pb2.Envelope, record: Record) -> None:
    raise DecodeError("this consumer reads raw records, not envelopes")


class RecordConsumer(EnvelopeConsumer):
    """An :class:`EnvelopeConsumer` for topics outside producers write in their own format
    (JSON events): ``handler`` gets the raw record and raises ``DecodeError`` to send it
    to the dead-letter topic with the reason. Commits, retries and lag work the same."""

    def __init__(
        self,
        settings: Settings,
        topics: Sequence[str],
        group: str,
        handler: RecordHandler,
        publisher: Publisher,
        metrics: ServiceMetrics,
        service: str,
        concurrency: int = 1,
    ) -> None:
        super().__init__(
            settings, topics, group, _no_envelopes, publisher, metrics, service, concurrency
        )
        self._record_handler = handler

    async def _dispatch(self, item: Record) -> None:
        await self._record_handler(item)
