"""Alert latency on the real stack: lifecycle event to SMTP delivery, p50/p99.

Starts the alerter as a process (fresh topics and database) and an SMTP server (aiosmtpd)
in this process, stores an allowed domain and a policy for the workflow type ``bench``,
then publishes ``run_status_changed -> failed`` events on run-events at a steady rate
(``--rate`` per second, as the scheduler would) and times each from the event's own
timestamp to the moment the SMTP server has the whole message. The per-recipient rate
limit is lifted so it measures the pipeline, not the limit; one warm-up alert first.

Usage: python bench/alerts.py [--alerts 200] [--rate 20] [--recipients 1]
Needs Kafka and the MongoDB-compatible server: FLOWYARD_KAFKA_BOOTSTRAP/FLOWYARD_MONGO_URL,
or the local stack (scripts/stack/start.sh), which it starts when they are not set.
"""

from __future__ import annotations

import argparse
import asyncio
import email
import email.policy
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from aiosmtpd.controller import Controller
from flowyard import codec
from flowyard.adapters.alert_store import AlertStore
from flowyard.adapters.kafka import ensure_topics
from flowyard.config import Settings, Topics
from flowyard.domain.alerts import AlertPolicy
from flowyard.v1 import run_pb2
from pymongo import AsyncMongoClient

ROOT = Path(__file__).resolve().parent.parent
DOMAIN = "bench.example"


def stack_addresses() -> tuple[str, str]:
    kafka, mongo = os.environ.get("FLOWYARD_KAFKA_BOOTSTRAP"), os.environ.get("FLOWYARD_MONGO_URL")
    if kafka and mongo:
        return kafka, mongo
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "stack" / "start.sh")],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    found = dict(
        line.removeprefix("export ").split("=", 1)
        for line in out.splitlines()
        if line.startswith("export ")
    )
    return found["FLOWYARD_KAFKA_BOOTSTRAP"], found["FLOWYARD_MONGO_URL"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Sink:
    """SMTP server noting when each alert (by run id) arrived, on the wall clock."""

    def __init__(self) -> None:
        self.arrivals: dict[tuple[str, str], float] = {}
        self.changed = threading.Condition()
        self.port = free_port()
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        now = time.time()
        message = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        alert_id = str(message["X-Flowyard-Alert"])  # run|kind|email:recipient
        run_id, recipient = alert_id.split("|")[0], alert_id.rsplit(":", 1)[-1]
        with self.changed:
            self.arrivals.setdefault((run_id, recipient), now)
            self.changed.notify_all()
        return "250 OK"

    def __enter__(self) -> Sink:
        self._controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._controller.stop()

    async def wait_for(self, keys: set[tuple[str, str]], within: float) -> None:
        deadline = time.monotonic() + within
        while not keys <= self.arrivals.keys():
            if time.monotonic() > deadline:
                missing = len(keys - self.arrivals.keys())
                raise TimeoutError(f"{missing} alerts did not arrive within {within:g} s")
            await asyncio.sleep(0.01)


def start_alerter(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([str(Path(sys.executable).parent / "flowyard-alerter")], env=env)


def failed_event(run_id: str) -> tuple[bytes, float]:
    envelope = codec.new_envelope(run_id, workflow_id="wf-bench", workflow_version=1)
    change = envelope.run_status_changed
    change.status = run_pb2.RUN_STATUS_FAILED
    change.previous = run_pb2.RUN_STATUS_RUNNING
    change.workflow_name = "bench-nightly"
    change.workflow_type = "bench"
    change.failed_node_id = "fetch"
    change.error.code = "http.connection"
    change.error.message = "cannot connect to 127.0.0.1:9"
    sent_at = envelope.time.ToDatetime(tzinfo=UTC).timestamp()
    return envelope.SerializeToString(), sent_at


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--alerts", type=int, default=200, help="failed runs to alert on")
    parser.add_argument("--rate", type=float, default=20.0, help="events per second")
    parser.add_argument("--recipients", type=int, default=1, help="email recipients per alert")
    args = parser.parse_args()

    kafka, mongo = stack_addresses()
    unique = uuid.uuid4().hex[:8]
    settings = replace(
        Settings(),
        kafka_bootstrap=kafka,
        mongo_url=mongo,
        mongo_db=f"bench_{unique}",
        topics=Topics(f"bench{unique}"),
    )
    await ensure_topics(settings)
    recipients = [f"oncall{n}@{DOMAIN}" for n in range(args.recipients)]
    async with AlertStore.connect(mongo, settings.mongo_db) as store:
        await store.change_domains([DOMAIN], [])
        await store.put_policy(
            AlertPolicy(
                name="bench",
                workflow_type="bench",
                emails=tuple(recipients),
                created_at=datetime.now(UTC),
            )
        )
    with Sink() as sink:
        env = {
            **os.environ,
            "FLOWYARD_KAFKA_BOOTSTRAP": kafka,
            "FLOWYARD_MONGO_URL": mongo,
            "FLOWYARD_MONGO_DB": settings.mongo_db,
            "FLOWYARD_TOPIC_PREFIX": settings.topics.prefix,
            "FLOWYARD_METRICS_PORT": "0",
            "FLOWYARD_LOG_LEVEL": "WARNING",
            "FLOWYARD_SMTP_HOST": "127.0.0.1",
            "FLOWYARD_SMTP_PORT": str(sink.port),
            "FLOWYARD_SMTP_FROM": f"flowyard@{DOMAIN}",
            "FLOWYARD_ALERT_RATE_PER_MINUTE": "1000000",
            "FLOWYARD_ALERT_RATE_BURST": "1000000",
        }
        alerter = start_alerter(env)
        producer = AIOKafkaProducer(bootstrap_servers=kafka, linger_ms=0)
        await producer.start()
        try:
            warm = f"warm-{unique}"
            value, _ = failed_event(warm)
            await producer.send_and_wait(settings.topics.run_events, value, key=warm.encode())
            await sink.wait_for({(warm, r) for r in recipients}, within=120)

            sent: dict[str, float] = {}
            interval = 1.0 / args.rate
            began = time.perf_counter()
            for n in range(args.alerts):
                run_id = f"run-{unique}-{n:05d}"
                value, sent_at = failed_event(run_id)
                sent[run_id] = sent_at
                await producer.send_and_wait(settings.topics.run_events, value, key=run_id.encode())
                pause = began + (n + 1) * interval - time.perf_counter()
                if pause > 0:
                    await asyncio.sleep(pause)
            wanted = {(run_id, r) for run_id in sent for r in recipients}
            await sink.wait_for(wanted, within=300)
            elapsed = time.perf_counter() - began
        finally:
            await producer.stop()
            alerter.send_signal(signal.SIGTERM)
            try:
                alerter.wait(timeout=40)
            except subprocess.TimeoutExpired:
                alerter.kill()
    in_order = [sink.arrivals[(run_id, r)] - sent[run_id] for run_id in sent for r in recipients]
    step = max(1, len(in_order) // 10)
    tenths = [max(in_order[i : i + step]) * 1000 for i in range(0, len(in_order), step)]
    latencies = sorted(in_order)
    q = statistics.quantiles(latencies, n=100)
    print(f"alerts: {len(latencies)} ({args.alerts} failed runs x {args.recipients} recipients)")
    print(f"offered rate: {args.rate:g} events/s; elapsed {elapsed:.1f} s")
    print(f"event -> SMTP delivery p50: {statistics.median(latencies) * 1000:.1f} ms")
    print(f"event -> SMTP delivery p99: {q[98] * 1000:.1f} ms")
    print(f"event -> SMTP delivery max: {latencies[-1] * 1000:.1f} ms")
    print("max per tenth of the run (ms): " + " ".join(f"{t:.0f}" for t in tenths))
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo)
    await client.drop_database(settings.mongo_db)
    await client.close()


if __name__ == "__main__":
    asyncio.run(main())
