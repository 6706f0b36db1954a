"""Throughput and step hand-off latency of the real services on the local stack.

Starts the gateway, scheduler and executor as processes (fresh topics and database),
registers a 5-step linear no-op workflow, starts N runs through gRPC at once, waits
for all of them to finish, and prints runs/s, steps/s and the step hand-off latency
(from one task's end to the next one's start, both stamped by the executor) p50/p99.

Usage: python bench/handoff.py [--runs 200] [--executors 1]
Needs Kafka and the MongoDB-compatible server: FLOWYARD_KAFKA_BOOTSTRAP/FLOWYARD_MONGO_URL,
or the local stack (scripts/stack/start.sh), which it starts when they are not set.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path

import grpc
from aiokafka import AIOKafkaConsumer
from flowyard import codec
from flowyard.adapters.kafka import ensure_topics
from flowyard.adapters.tokens import TokenStore
from flowyard.client_auth import bearer_channel
from flowyard.config import Settings, Topics
from flowyard.domain.access import Role
from flowyard.domain.definition import parse_definition
from flowyard.v1 import gateway_pb2, gateway_pb2_grpc
from pymongo import AsyncMongoClient

ROOT = Path(__file__).resolve().parent.parent
STEPS = 5


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


def definition() -> gateway_pb2.ApplyWorkflowRequest:
    nodes = [{"id": "start", "type": "trigger"}] + [
        {"id": f"step{i}", "type": "code", "config": {"source": "result = None"}}
        for i in range(1, STEPS + 1)
    ]
    ids = [n["id"] for n in nodes]
    edges = [{"from": a, "to": b} for a, b in itertools.pairwise(ids)]
    parsed = parse_definition({"name": "bench-linear", "nodes": nodes, "edges": edges})
    return gateway_pb2.ApplyWorkflowRequest(definition=codec.definition_to_proto(parsed))


def start_services(commands: list[str], env: dict[str, str]) -> list[subprocess.Popen[bytes]]:
    bin_dir = Path(sys.executable).parent
    return [subprocess.Popen([str(bin_dir / c)], env=env) for c in commands]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--executors", type=int, default=1)
    args = parser.parse_args()

    kafka, mongo = stack_addresses()
    unique = uuid.uuid4().hex[:8]
    grpc_addr = f"127.0.0.1:{free_port()}"
    env = {
        **os.environ,
        "FLOWYARD_KAFKA_BOOTSTRAP": kafka,
        "FLOWYARD_MONGO_URL": mongo,
        "FLOWYARD_MONGO_DB": f"bench_{unique}",
        "FLOWYARD_TOPIC_PREFIX": f"bench{unique}",
        "FLOWYARD_GRPC_ADDR": grpc_addr,
        "FLOWYARD_METRICS_PORT": "0",
        "FLOWYARD_LOG_LEVEL": "WARNING",
    }
    commands = ["flowyard-api-gateway", "flowyard-scheduler"] + [
        "flowyard-executor"
    ] * args.executors
    processes = start_services(commands, env)
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(mongo, tz_aware=True)
    finished = FinishedRuns(kafka, f"bench{unique}.run-events")
    try:
        await ensure_topics(
            replace(Settings(), kafka_bootstrap=kafka, topics=Topics(f"bench{unique}"))
        )
        await finished.__aenter__()
        async with TokenStore.connect(mongo, env["FLOWYARD_MONGO_DB"]) as tokens:
            _record, token = await tokens.issue("bench", Role.ADMIN, created_by="bench")
        channel = bearer_channel(grpc_addr, token)
        workflows = gateway_pb2_grpc.WorkflowServiceStub(channel)
        runs = gateway_pb2_grpc.RunServiceStub(channel)
        await channel.channel_ready()
        for _ in range(600):
            try:
                await workflows.ApplyWorkflow(definition())
                break
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.1)
        # one warm-up run so consumers have joined their groups before timing starts
        warm = await runs.StartRun(gateway_pb2.StartRunRequest(workflow="bench-linear"))
        db = client[env["FLOWYARD_MONGO_DB"]]
        await finished.wait([warm.run_id], within=120)

        began = time.perf_counter()
        started = await asyncio.gather(
            *(runs.StartRun(gateway_pb2.StartRunRequest(workflow="bench-linear"))
              for _ in range(args.runs))
        )  # fmt: skip
        run_ids = [s.run_id for s in started]
        statuses = await finished.wait(run_ids, within=600)
        elapsed = time.perf_counter() - began

        handoffs = await handoff_latencies(db, run_ids)
        succeeded = sum(1 for s in statuses.values() if s == "succeeded")
        print(f"runs: {args.runs} ({succeeded} succeeded), executors: {args.executors}")
        print(f"elapsed: {elapsed:.2f} s")
        print(f"runs/s: {args.runs / elapsed:.1f}")
        print(f"steps/s: {args.runs * STEPS / elapsed:.1f}")
        if handoffs:
            q = statistics.quantiles(handoffs, n=100)
            print(f"hand-off p50: {statistics.median(handoffs) * 1000:.1f} ms")
            print(f"hand-off p99: {q[98] * 1000:.1f} ms  (n={len(handoffs)}, ms resolution)")
        await channel.close()
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                process.kill()
        await finished.__aexit__()
        await client.drop_database(env["FLOWYARD_MONGO_DB"])
        await client.close()


class FinishedRuns:
    """Follows run-events so waiting costs the database nothing (no polling)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
        )
        self.statuses: dict[str, str] = {}

    async def __aenter__(self) -> FinishedRuns:
        await self._consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._consumer.stop()

    async def wait(self, run_ids: list[str], within: float) -> dict[str, str]:
        wanted = set(run_ids)
        async with asyncio.timeout(within):
            while not wanted <= self.statuses.keys():
                for records in (await self._consumer.getmany(timeout_ms=200)).values():
                    for record in records:
                        envelope = codec.decode_envelope(record.value)
                        if envelope.WhichOneof("payload") != "run_status_changed":
                            continue
                        status = codec.RUN_STATUS_FROM_PROTO[envelope.run_status_changed.status]
                        if status.finished:
                            self.statuses[envelope.run_id] = status.value
        return {r: self.statuses[r] for r in run_ids}


async def handoff_latencies(db: object, run_ids: list[str]) -> list[float]:
    attempts = db["attempts"]  # type: ignore[index]
    by_run: dict[str, dict[str, tuple[object, object]]] = {}
    async for doc in attempts.find({"run_id": {"$in": run_ids}}):
        by_run.setdefault(doc["run_id"], {})[doc["node_id"]] = (
            doc["started_at"],
            doc["finished_at"],
        )
    latencies: list[float] = []
    for steps in by_run.values():
        for i in range(1, STEPS):
            before, after = steps.get(f"step{i}"), steps.get(f"step{i + 1}")
            if before and after:
                latencies.append((after[0] - before[1]).total_seconds())  # type: ignore[operator]
    return latencies


if __name__ == "__main__":
    asyncio.run(main())
