"""kill -9 an alerter in the middle of a stream of failed runs; after a restart (and the
run events delivered again) every (run, kind, recipient) got exactly one alert.

The alerter runs as a real process (so SIGKILL means what it says). It is killed while it
waits on the SMTP server for one message, so nothing it sent was taken without being
recorded; the restarted alerter re-reads the uncommitted run events, finds their alerts
stored (the dedup key), and takes over the interrupted one once its claim's lease passes.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiosmtpd.smtp import SMTP, Envelope, Session
from flowyard import codec
from flowyard.adapters.alert_store import AlertStore
from flowyard.config import Settings
from flowyard.domain.alerts import ActivityFilter, AlertPolicy, DeliveryStatus
from flowyard.v1 import run_pb2

from tests.e2e.servers import FakeSlack, SmtpSink

pytestmark = pytest.mark.e2e

Eventually = Callable[..., Awaitable[Any]]
BIN = Path(sys.executable).parent
RUNS = 24
GATE_AT = 8  # the SMTP server stalls on this message until the alerter is killed


class GatedSmtp(SmtpSink):
    """Takes messages, but stalls on the ``gate_at``-th until released, then refuses it
    (its sender is dead by then)."""

    def __init__(self, gate_at: int) -> None:
        super().__init__()
        self.gate_at = gate_at
        self.arrivals = 0
        self.stalled = threading.Event()
        self.release = threading.Event()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.arrivals += 1
        if self.arrivals == self.gate_at:
            self.stalled.set()
            await asyncio.to_thread(self.release.wait)
            return "451 4.3.0 try again later"
        return await super().handle_DATA(server, session, envelope)


@pytest.fixture
def smtp() -> Iterator[GatedSmtp]:
    with GatedSmtp(GATE_AT) as server:
        yield server
        server.release.set()


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with FakeSlack() as server:
        yield server


class AlerterProcesses:
    def __init__(self, settings: Settings, smtp: SmtpSink, slack: FakeSlack) -> None:
        self.env = {
            **os.environ,
            "FLOWYARD_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
            "FLOWYARD_MONGO_URL": settings.mongo_url,
            "FLOWYARD_MONGO_DB": settings.mongo_db,
            "FLOWYARD_TOPIC_PREFIX": settings.topics.prefix,
            "FLOWYARD_TOPIC_PARTITIONS": str(settings.topic_partitions),
            "FLOWYARD_METRICS_PORT": "0",
            "FLOWYARD_SMTP_HOST": "127.0.0.1",
            "FLOWYARD_SMTP_PORT": str(smtp.port),
            "FLOWYARD_SMTP_FROM": "alerts@example.test",
            "FLOWYARD_SLACK_API_URL": slack.api_url,
            "FLOWYARD_SLACK_BOT_TOKEN": slack.token,
            "FLOWYARD_ALERT_POLL_SECONDS": "0.2",
            "FLOWYARD_ALERT_LEASE_SECONDS": "2",
            "FLOWYARD_ALERT_BACKOFF_SECONDS": "0.3",
            "FLOWYARD_ALERT_RATE_PER_MINUTE": "6000",
            "FLOWYARD_ALERT_RATE_BURST": "100",
            "FLOWYARD_LOG_LEVEL": "WARNING",
        }
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        process = subprocess.Popen([str(BIN / "flowyard-alerter")], env=self.env)
        self.processes.append(process)
        return process

    @staticmethod
    def kill(process: subprocess.Popen[bytes]) -> None:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


@pytest.fixture
def alerters(settings: Settings, smtp: GatedSmtp, slack: FakeSlack) -> Iterator[AlerterProcesses]:
    running = AlerterProcesses(settings, smtp, slack)
    try:
        yield running
    finally:
        running.stop_all()


def failed_event(run_id: str) -> bytes:
    envelope = codec.new_envelope(run_id, workflow_id="wf-billing", workflow_version=2)
    change = envelope.run_status_changed
    change.status = run_pb2.RUN_STATUS_FAILED
    change.previous = run_pb2.RUN_STATUS_RUNNING
    change.workflow_name = "nightly-billing"
    change.workflow_type = "billing"
    change.failed_node_id = "charge"
    change.error.code = "http.connection"
    change.error.message = "cannot connect to 127.0.0.1:9: refused"
    return envelope.SerializeToString()


async def publish(settings: Settings, run_ids: list[str]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    try:
        for run_id in run_ids:
            await producer.send_and_wait(
                settings.topics.run_events, failed_event(run_id), key=run_id.encode()
            )
    finally:
        await producer.stop()


async def test_an_alerter_killed_mid_stream_sends_each_alert_exactly_once(
    settings: Settings,
    smtp: GatedSmtp,
    slack: FakeSlack,
    alerters: AlerterProcesses,
    eventually: Eventually,
) -> None:
    async with AlertStore.connect(settings.mongo_url, settings.mongo_db) as store:
        await store.change_domains(["example.test"], [])
        await store.put_policy(
            AlertPolicy(
                name="billing",
                workflow_type="billing",
                emails=("ops@example.test",),
                slack_channels=("#billing",),
                created_at=datetime.now(UTC),
            )
        )
        run_ids = [f"run-{n:02d}" for n in range(RUNS)]
        doomed = alerters.start()
        await publish(settings, run_ids)

        # Mid-stream: some alerts out, one stuck in the SMTP conversation.
        await eventually(lambda: _check(smtp.stalled.is_set()), within=90)
        assert len(smtp.messages) == GATE_AT - 1
        alerters.kill(doomed)
        smtp.release.set()

        # The first events once more (a producer retrying), then a fresh alerter.
        await publish(settings, run_ids[:10])
        alerters.start()

        def each_once() -> None:
            mailed = sorted(_subject_run(m.message["Subject"]) for m in smtp.messages)
            posted = sorted(_text_run(r.json()["text"]) for r in slack.messages())
            assert mailed == run_ids, mailed
            assert posted == run_ids, posted

        await eventually(each_once, within=120)
        # Long enough for any lease to pass and any late duplicate to show.
        await asyncio.sleep(4)
        each_once()
        assert len({str(m.message["Message-ID"]) for m in smtp.messages}) == RUNS

        # The activity log: one "sent" per alert; the interrupted one has two attempts
        # recorded at most (the one killed mid-way was never recorded).
        records, _ = await store.list_activity(ActivityFilter(), limit=500)
        sent = [r for r in records if r.status is DeliveryStatus.SENT]
        assert len(sent) == 2 * RUNS
        assert len({r.alert_id for r in sent}) == 2 * RUNS


def _check(condition: bool) -> None:
    assert condition


def _subject_run(subject: Any) -> str:
    words = " ".join(str(subject).split()).split()
    return words[words.index("run") + 1]


def _text_run(text: str) -> str:
    found = re.search(r"\*Run:\* `([^`]+)`", text)
    assert found, text
    return found.group(1)
