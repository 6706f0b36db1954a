"""Hostile messages on every topic the services consume (hypothesis, bounded in time).

The scheduler (triggers, task-events, commands, events.ingest), the executor (tasks) and
the alerter and gateway (run-events) run; each topic gets messages no service can read
(random bytes, empty and null values, damaged protobuf, envelopes without payload, JSON
that is not an event) and hypothesis-drawn ones (envelopes with random field values built
from the descriptor, random CloudEvents-like JSON). Every consumer group must get through
every partition (nothing stuck behind a poison message), every unreadable message must be
on the dead-letter topic with its reason, no handler may fail on its input, a run stored
before is unchanged, and a normal run still completes afterwards.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from flowyard import codec
from flowyard.config import Settings
from flowyard.metrics import ServiceMetrics
from flowyard.v1 import events_pb2, gateway_pb2, run_pb2
from flowyard_alerter.app import Alerter
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from tests.e2e.conftest import RunningFlowyard
from tests.e2e.test_run_end_to_end import apply, finished_run
from tests.fuzzing import cloud_events, draw, envelopes

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.filterwarnings("ignore:Generating overly large repr"),
    pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies"),
]

Eventually = Callable[..., Awaitable[Any]]

DRAWN_PER_TOPIC = 60
NODE_TYPES = ["code", "http", "email", "slack", "query", "transform", "condition", "wait"]


def _envelope_without_payload() -> bytes:
    envelope = events_pb2.Envelope(event_id="e-1", run_id="r-1")
    return envelope.SerializeToString()


def _damaged_envelope() -> bytes:
    envelope = codec.new_envelope("r-2")
    envelope.task_started.node_id = "a"
    return envelope.SerializeToString()[:-3]


# Messages no consumer can read: each must be dead-lettered.
UNREADABLE_ENVELOPES: list[bytes | None] = [
    None,
    b"",
    b"not protobuf \xff\x00",
    b"\x0a\x05ab",
    _damaged_envelope(),
    _envelope_without_payload(),
    bytes(range(256)) * 64,
]
UNREADABLE_EVENTS: list[bytes | None] = [
    None,
    b"",
    b"{not json",
    b"\xff\xfe\x00",
    b"[1, 2]",
    b'"order.created"',
    b'{"id": "x"}',
    b'{"id": 7, "type": "order.created"}',
    b'{"id": "' + b"i" * 300 + b'", "type": "order.created"}',
    b'{"id": "n", "type": "order.created", "data": {"amount": NaN}}',
    b'{"id": "i", "type": "order.created", "data": {"amount": 1e999}}',
]


def guard_workflow(name: str, trigger: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "nodes": [
            {"id": "start", "type": "trigger", "config": trigger or {}},
            {"id": "triple", "type": "code", "config": {"source": "result = trigger['n'] * 3"}},
        ],
        "edges": [{"from": "start", "to": "triple"}],
    }


@dataclass(frozen=True)
class Sent:
    topic: str
    partition: int
    offset: int
    unreadable: bool


@pytest.fixture
async def alerter(settings: Settings) -> AsyncIterator[Alerter]:
    async with Alerter(settings, ServiceMetrics(CollectorRegistry(), "alerter")) as running:
        yield running


async def send_all(
    settings: Settings, messages: list[tuple[str, bytes | None, bytes | None, bool]]
) -> list[Sent]:
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, max_request_size=2 * 1024 * 1024
    )
    await producer.start()
    sent = []
    try:
        for topic, key, value, unreadable in messages:
            metadata = await producer.send_and_wait(topic, value, key=key)
            sent.append(Sent(topic, metadata.partition, metadata.offset, unreadable))
    finally:
        await producer.stop()
    return sent


async def end_offsets(settings: Settings, topics: list[str]) -> dict[TopicPartition, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(topics)
    finally:
        await admin.close()
    partitions = [
        TopicPartition(topic["topic"], partition["partition"])
        for topic in described
        for partition in topic["partitions"]
    ]
    assert {tp.topic for tp in partitions} == set(topics), described
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=None)
    await consumer.start()
    try:
        ends: dict[TopicPartition, int] = await consumer.end_offsets(partitions)
        return ends
    finally:
        await consumer.stop()


async def stuck_partitions(
    settings: Settings, groups: dict[str, list[str]], ends: dict[TopicPartition, int]
) -> list[str]:
    """Partitions whose group has not committed past the offsets in ``ends`` yet."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    behind = []
    try:
        for group, topics in groups.items():
            committed = await admin.list_consumer_group_offsets(group)
            for tp, end in ends.items():
                if tp.topic not in topics or end == 0:
                    continue
                at = committed.get(tp)
                position = at.offset if at is not None else -1
                if position < end:
                    behind.append(f"{group} on {tp.topic}[{tp.partition}]: {position} < {end}")
    finally:
        await admin.close()
    return behind


async def all_dead_letters(settings: Settings) -> list[events_pb2.DeadLetter]:
    topic = settings.topics.dead_letter
    ends = await end_offsets(settings, [topic])
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=None)
    await consumer.start()
    letters = []
    try:
        consumer.assign(list(ends))
        await consumer.seek_to_beginning(*ends)
        async with asyncio.timeout(30):
            while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    for record in records:
                        letter = events_pb2.DeadLetter()
                        letter.ParseFromString(record.value)
                        letters.append(letter)
    finally:
        await consumer.stop()
    return letters


async def test_hostile_messages_on_every_consumed_topic_are_dead_lettered_and_change_nothing(
    flowyard: RunningFlowyard, settings: Settings, alerter: Alerter, eventually: Eventually
) -> None:
    topics = settings.topics
    # A run the fuzzer never hears of: it must come out unchanged.
    guard_name = f"fuzz-guard-{uuid.uuid4().hex}"
    await apply(flowyard, guard_workflow(guard_name))
    guard = await flowyard.runs.StartRun(
        gateway_pb2.StartRunRequest(workflow=guard_name, input=codec.json_to_value({"n": 2}))
    )
    guard_before = await finished_run(flowyard, guard.run_id, eventually)
    # A workflow (with an event trigger) and a run it does know, to get past "unknown".
    event_trigger = {"event": {"type": "order.created", "filter": "data.amount > 100"}}
    await apply(flowyard, guard_workflow("fuzz-target", event_trigger))
    target = await flowyard.runs.StartRun(
        gateway_pb2.StartRunRequest(workflow="fuzz-target", input=codec.json_to_value({"n": 1}))
    )
    await finished_run(flowyard, target.run_id, eventually)
    hints = ["fuzz-target", target.run_id, "start", "triple", "order.created", *NODE_TYPES]

    envelope_topics = [
        topics.triggers,
        topics.task_events,
        topics.commands,
        topics.tasks,
        topics.run_events,
    ]
    # Each topic mostly gets the payloads its consumer handles (and now and then others).
    kinds = {
        topics.triggers: ["start_run"],
        topics.task_events: ["task_started", "task_heartbeat", "task_succeeded", "task_failed"],
        topics.commands: ["run_command", "approval_decided", "timer_fired", "child_run_finished"],
        topics.tasks: ["dispatch_task", "cancel_task"],
        topics.run_events: ["run_status_changed", "task_status_changed", "logs_appended"],
    }
    keys: list[bytes | None] = [None, b"", target.run_id.encode(), b"\xff" * 40]
    messages: list[tuple[str, bytes | None, bytes | None, bool]] = []
    started = time.monotonic()
    for topic in [*envelope_topics, topics.events_ingest]:
        is_events = topic == topics.events_ingest
        unreadable = UNREADABLE_EVENTS if is_events else UNREADABLE_ENVELOPES
        strategy = cloud_events(hints) if is_events else envelopes(hints, kinds[topic])
        drawn = draw(strategy, DRAWN_PER_TOPIC)
        for index, value in enumerate([*unreadable, *drawn]):
            key = keys[index % len(keys)] if value is not None else b"null-value"  # a tombstone
            messages.append((topic, key, value, index < len(unreadable)))
    sent = await send_all(settings, messages)
    ends = await end_offsets(settings, [*envelope_topics, topics.events_ingest])

    # Every group gets through every partition: nothing waits behind a poison message.
    groups = {
        topics.group("scheduler"): [topics.triggers, topics.task_events, topics.commands],
        topics.group("scheduler-events"): [topics.events_ingest],
        topics.group("executor"): [topics.tasks],
        alerter.group: [topics.run_events],
    }

    async def caught_up() -> None:
        behind = await stuck_partitions(settings, groups, ends)
        assert not behind, "\n".join(behind)

    await eventually(caught_up, within=90, interval=0.5)
    elapsed = time.monotonic() - started
    print(f"{len(sent)} hostile messages handled in {elapsed:.1f} s")

    # Every unreadable message is dead-lettered with its reason; no handler failed.
    letters = await all_dead_letters(settings)
    lettered = {(letter.source_topic, letter.partition, letter.offset) for letter in letters}
    missing = [s for s in sent if s.unreadable and (s.topic, s.partition, s.offset) not in lettered]
    assert not missing, f"not dead-lettered: {missing}"
    assert all(letter.reason for letter in letters)
    crashed = [
        f"{letter.service} on {letter.source_topic}@{letter.offset}: {letter.reason[:400]}"
        for letter in letters
        if "handler failed" in letter.reason or "alerter failed" in letter.reason
    ]
    assert not crashed, "handlers failed on their input:\n" + "\n".join(crashed)

    # The gateway still serves; the run stored before is as it was; a new run completes.
    health = health_pb2_grpc.HealthStub(flowyard.channel)
    status = await health.Check(health_pb2.HealthCheckRequest())
    assert status.status == health_pb2.HealthCheckResponse.SERVING
    guard_after = await flowyard.runs.GetRun(gateway_pb2.GetRunRequest(run_id=guard.run_id))
    assert guard_after == guard_before
    run = await flowyard.runs.StartRun(
        gateway_pb2.StartRunRequest(workflow=guard_name, input=codec.json_to_value({"n": 14}))
    )
    finished = await finished_run(flowyard, run.run_id, eventually)
    assert finished.status == run_pb2.RUN_STATUS_SUCCEEDED
    assert codec.value_to_json(finished.tasks[-1].output) == 42
