"""The alerter's faust app against a real Kafka: finished runs are counted and handed over
(logged), unreadable messages are dead-lettered, and the app stops cleanly."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

import pytest
from aiokafka import AIOKafkaProducer
from flowyard import codec
from flowyard.config import Settings
from flowyard.metrics import ServiceMetrics
from flowyard.v1 import events_pb2, run_pb2
from flowyard_alerter.app import Alerter
from prometheus_client import CollectorRegistry

from tests.integration.kafka_reading import read_dead_letters

pytestmark = pytest.mark.integration

GARBAGE = b"\xffnot an envelope\x00"


@pytest.fixture
async def alerter_settings(settings: Settings) -> Settings:
    """A fresh topic prefix (and so a fresh consumer group) and database per test."""
    return settings


async def until(check: Callable[[], bool], what: str, within: float = 30.0) -> None:
    """Poll ``check`` until it holds; fail naming ``what`` after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def run_status_changed(run_id: str, status: run_pb2.RunStatus.ValueType) -> events_pb2.Envelope:
    envelope = codec.new_envelope(run_id, workflow_id="wf-nightly", workflow_version=3)
    change = envelope.run_status_changed
    change.status = status
    change.previous = run_pb2.RUN_STATUS_RUNNING
    change.workflow_name = "nightly-report"
    change.workflow_type = "reporting"
    if status == run_pb2.RUN_STATUS_FAILED:
        change.failed_node_id = "fetch-sales"
        change.error.code = "http.status"
        change.error.message = "GET /sales answered 503"
    return envelope


async def publish(settings: Settings, messages: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    try:
        for key, value in messages:
            await producer.send_and_wait(settings.topics.run_events, value, key=key)
    finally:
        await producer.stop()


async def test_failed_run_is_counted_and_garbage_is_dead_lettered(
    alerter_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    settings = alerter_settings
    topic = settings.topics.run_events
    metrics = ServiceMetrics(CollectorRegistry(), "alerter")
    sample = metrics.registry.get_sample_value
    caplog.set_level(logging.INFO, logger="flowyard_alerter")
    threads_before = set(threading.enumerate())

    def finished(status: str) -> float | None:
        return sample(
            "flowyard_runs_finished_total", {"workflow": "nightly-report", "status": status}
        )

    # Published before the alerter's group exists: it must start from the earliest offset.
    running = run_status_changed("run-2", run_pb2.RUN_STATUS_RUNNING)
    failed = run_status_changed("run-1", run_pb2.RUN_STATUS_FAILED)
    await publish(
        settings,
        [
            (b"run-2", running.SerializeToString()),
            (b"run-1", failed.SerializeToString()),
            (b"junk-key", GARBAGE),
        ],
    )

    async with Alerter(settings, metrics, lag_interval=0.2):
        await until(lambda: finished("failed") == 1.0, "runs_finished{status=failed} == 1")
        await until(
            lambda: sample("flowyard_dead_letters_total", {"topic": topic}) == 1.0,
            "dead_letters == 1",
        )
        await until(
            lambda: sample("flowyard_kafka_messages_consumed_total", {"topic": topic}) == 3.0,
            "all three messages consumed",
        )
        # A run that is not finished is consumed but not counted as finished.
        assert finished("running") is None

        # Lag is reported per assigned partition and drops to 0 once faust commits.
        def lag_is_zero() -> bool:
            lags = [
                s.value
                for family in metrics.registry.collect()
                if family.name == "flowyard_kafka_consumer_lag"
                for s in family.samples
                if s.labels["topic"] == topic
            ]
            return len(lags) == settings.topic_partitions and all(v == 0 for v in lags)

        await until(lag_is_zero, "consumer lag 0 on every run-events partition")

    # The hand-over line for alert delivery: one per finished run, naming node and error.
    handover = [r.getMessage() for r in caplog.records if "failed at node" in r.getMessage()]
    assert handover == [
        "run run-1 of workflow nightly-report (v3) failed at node fetch-sales: "
        "[http.status] GET /sales answered 503"
    ]

    [letter] = await read_dead_letters(settings, 1)
    assert letter.source_topic == topic
    assert letter.key == b"junk-key"
    assert letter.value == GARBAGE
    assert "not a flowyard.v1.Envelope" in letter.reason
    assert letter.service == "alerter"
    assert letter.time.seconds > 0
    assert letter.offset >= 0
    assert 0 <= letter.partition < settings.topic_partitions

    # faust's consumer thread and tasks are gone once the Alerter has exited.
    leftover = [
        t
        for t in threading.enumerate()
        if t not in threads_before and t.is_alive() and not t.name.startswith("asyncio_")
    ]
    assert leftover == []
    # Gauges of partitions this instance no longer owns are removed.
    group = settings.topics.group("alerter")
    lag_labels = {"topic": topic, "partition": "0", "group": group}
    assert sample("flowyard_kafka_consumer_lag", lag_labels) is None


async def test_stop_event_ends_the_alerter(alerter_settings: Settings) -> None:
    metrics = ServiceMetrics(CollectorRegistry(), "alerter")
    stop = asyncio.Event()
    async with Alerter(alerter_settings, metrics) as alerter:
        runner = asyncio.create_task(alerter.run_until(stop))
        await asyncio.sleep(0)
        assert not runner.done()
        stop.set()
        async with asyncio.timeout(10):
            await runner
