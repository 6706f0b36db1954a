"""kill -9 an alerter in the middle of a stream of failed runs; after a restart (and the
run events delivered again) every (run, kind, recipient) got exactly one alert.

The alerter runs as a real process (so SIGKILL means what it says). It is killed while
its SMTP and Slack conversations in flight are held by the servers (and after it recorded
what they took): SMTP and Slack's API have no idempotency key, so a message taken but not
yet recorded when the process dies would go out again; that window, between the server's
"accepted" and the alert's "sent" write, is the one duplicate this design allows. The
restarted alerter re-reads the uncommitted run events, finds their alerts stored (the
dedup key), and takes over the interrupted attempts once their claims' lease passes.
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

from tests.e2e.servers import FakeSlack, Reply, Request, SmtpSink, json_reply

pytestmark = pytest.mark.e2e

Eventually = Callable[..., Awaitable[Any]]
BIN = Path(sys.executable).parent
RUNS = 24
GATE_AT = 8  # from this message on, the servers stall until the alerter is killed


class Freeze:
    """Once set, the SMTP and Slack servers hold every conversation until ``release``,
    then refuse it (its sender is dead by then): nothing in flight gets through."""

    def __init__(self) -> None:
        self.frozen = threading.Event()
        self.release = threading.Event()


class GatedSmtp(SmtpSink):
    """Takes messages until the ``gate_at``-th arrives; that freezes both servers."""

    def __init__(self, freeze: Freeze, gate_at: int) -> None:
        super().__init__()
        self.freeze = freeze
        self.gate_at = gate_at
        self.arrivals = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.arrivals += 1
        if self.arrivals >= self.gate_at:
            self.freeze.frozen.set()
        if self.freeze.frozen.is_set() and not self.freeze.release.is_set():
            await asyncio.to_thread(self.freeze.release.wait)
            return "451 4.3.0 try again later"
        return await super().handle_DATA(server, session, envelope)


class GatedSlack(FakeSlack):
    def __init__(self, freeze: Freeze) -> None:
        super().__init__()
        self.freeze = freeze
        self.accepted: list[dict[str, Any]] = []
        self.route("/chat.postMessage", self._gated)

    def _gated(self, request: Request) -> Reply:
        if self.freeze.frozen.is_set() and not self.freeze.release.is_set():
            self.freeze.release.wait()
            return json_reply({"ok": False, "error": "service_unavailable"}, 503)
        self.accepted.append(request.json())
        return self._post_message(request)


@pytest.fixture
def freeze() -> Freeze:
    return Freeze()


@pytest.fixture
def smtp(freeze: Freeze) -> Iterator[GatedSmtp]:
    with GatedSmtp(freeze, GATE_AT) as server:
        yield server
        freeze.release.set()


@pytest.fixture
def slack(freeze: Freeze) -> Iterator[GatedSlack]:
    with GatedSlack(freeze) as server:
        yield server
        freeze.release.set()


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
            # An attempt's claim lasts its send timeout + 10 s: 12 s here.
            "FLOWYARD_ALERT_SEND_TIMEOUT_SECONDS": "2",
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


@pytest.mark.timeout(240)
async def test_an_alerter_killed_mid_stream_sends_each_alert_exactly_once(
    settings: Settings,
    smtp: GatedSmtp,
    slack: GatedSlack,
    freeze: Freeze,
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

        # Mid-stream: some alerts out, the next ones held in their SMTP or Slack
        # conversation. Once the alerter has recorded what the servers took, kill it.
        await eventually(lambda: _check(freeze.frozen.is_set()), within=60)

        async def taken_ones_recorded() -> None:
            taken = len(smtp.messages) + len(slack.accepted)
            assert 0 < len(smtp.messages) < RUNS
            assert await _sent_alerts(store) == taken

        await eventually(taken_ones_recorded, within=30)
        alerters.kill(doomed)
        freeze.release.set()

        # The first events once more (a producer retrying), then a fresh alerter.
        await publish(settings, run_ids[:10])
        alerters.start()

        def each_once() -> None:
            mailed = sorted(_subject_run(m.message["Subject"]) for m in smtp.messages)
            posted = sorted(_text_run(post["text"]) for post in slack.accepted)
            assert mailed == run_ids, mailed
            assert posted == run_ids, posted

        await eventually(each_once, within=90)
        # Long enough for any lease to pass and any late duplicate to show.
        await asyncio.sleep(4)
        each_once()
        assert len({str(m.message["Message-ID"]) for m in smtp.messages}) == RUNS

        # The activity log: one "sent" per alert (attempts killed mid-way left no record).
        records, _ = await store.list_activity(ActivityFilter(), limit=500)
        sent = [r for r in records if r.status is DeliveryStatus.SENT]
        assert len(sent) == 2 * RUNS
        assert len({r.alert_id for r in sent}) == 2 * RUNS


async def _sent_alerts(store: AlertStore) -> int:
    return await store.alerts.count_documents({"status": DeliveryStatus.SENT.value})


def _check(condition: bool) -> None:
    assert condition


def _subject_run(subject: Any) -> str:
    words = " ".join(str(subject).split()).split()
    return words[words.index("run") + 1]


def _text_run(text: str) -> str:
    found = re.search(r"\*Run:\* `([^`]+)`", text)
    assert found, text
    return found.group(1)
