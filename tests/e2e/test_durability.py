"""kill -9 a scheduler or an executor in the middle of runs; after a restart every run
finishes correctly: no task lost, none left running, none run twice under one attempt.

The services run as real processes (so SIGKILL means what it says) against the real
stack; the gateway runs in-process to register workflows and start runs.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from flowyard import codec
from flowyard.client_auth import bearer_channel
from flowyard.config import Settings
from flowyard.domain.definition import parse_definition
from flowyard.metrics import ServiceMetrics
from flowyard.v1 import gateway_pb2, gateway_pb2_grpc, run_pb2
from flowyard_api_gateway.__main__ import Gateway
from prometheus_client import CollectorRegistry

from tests.e2e.conftest import admin_token

pytestmark = pytest.mark.e2e

Eventually = Callable[..., Awaitable[Any]]
BIN = Path(sys.executable).parent
FINISHED = (run_pb2.RUN_STATUS_SUCCEEDED, run_pb2.RUN_STATUS_FAILED)


class Services:
    """Service processes for one test, with their settings in the environment."""

    def __init__(self, settings: Settings) -> None:
        self.env = {
            **os.environ,
            "FLOWYARD_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
            "FLOWYARD_MONGO_URL": settings.mongo_url,
            "FLOWYARD_MONGO_DB": settings.mongo_db,
            "FLOWYARD_TOPIC_PREFIX": settings.topics.prefix,
            "FLOWYARD_TOPIC_PARTITIONS": str(settings.topic_partitions),
            "FLOWYARD_METRICS_PORT": "0",
            "FLOWYARD_HEARTBEAT_SECONDS": "0.5",
            "FLOWYARD_TASK_LEASE_SECONDS": "4",
            "FLOWYARD_TIMER_POLL_SECONDS": "0.2",
            "FLOWYARD_LOG_LEVEL": "WARNING",
        }
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, service: str) -> subprocess.Popen[bytes]:
        process = subprocess.Popen([str(BIN / f"flowyard-{service}")], env=self.env)
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
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


@pytest.fixture
def services(settings: Settings) -> Iterator[Services]:
    running = Services(settings)
    try:
        yield running
    finally:
        running.stop_all()


@pytest.fixture
async def gateway(settings: Settings) -> AsyncIterator[grpc.aio.Channel]:
    async with Gateway(settings, ServiceMetrics(CollectorRegistry(), "api-gateway")) as gw:
        channel = bearer_channel(gw.address, await admin_token(settings))
        try:
            yield channel
        finally:
            await channel.close()


async def register(channel: Any, document: dict[str, Any]) -> None:
    workflows = gateway_pb2_grpc.WorkflowServiceStub(channel)
    definition = codec.definition_to_proto(parse_definition(document))
    await workflows.ApplyWorkflow(gateway_pb2.ApplyWorkflowRequest(definition=definition))


async def start_runs(channel: Any, workflow: str, count: int) -> list[str]:
    runs = gateway_pb2_grpc.RunServiceStub(channel)
    ids = []
    for n in range(count):
        request = gateway_pb2.StartRunRequest(
            workflow=workflow, input=codec.json_to_value({"n": n})
        )
        ids.append((await runs.StartRun(request)).run_id)
    return ids


async def get_runs(channel: Any, run_ids: list[str]) -> list[run_pb2.Run]:
    runs = gateway_pb2_grpc.RunServiceStub(channel)
    return [await runs.GetRun(gateway_pb2.GetRunRequest(run_id=r)) for r in run_ids]


def code(source: str) -> dict[str, Any]:
    return {"type": "code", "config": {"source": source}}


STEPS = {
    "name": "durable-steps",
    "nodes": [
        {"id": "start", "type": "trigger"},
        {"id": "a", **code("import time\ntime.sleep(0.3)\nresult = trigger['n']")},
        {"id": "pause", "type": "wait", "config": {"seconds": 2}},
        {"id": "b", **code("result = upstream['a'] + 1")},
        {"id": "c", **code("result = upstream['b'] * 10")},
    ],
    "edges": [
        {"from": "start", "to": "a"},
        {"from": "a", "to": "pause"},
        {"from": "pause", "to": "b"},
        {"from": "b", "to": "c"},
    ],
}

LONG_TASK = {
    "name": "durable-long-task",
    "nodes": [
        {"id": "start", "type": "trigger"},
        {"id": "slow", **code("import time\ntime.sleep(3)\nresult = trigger['n']")},
        {"id": "after", **code("result = upstream['slow'] + 100")},
    ],
    "edges": [{"from": "start", "to": "slow"}, {"from": "slow", "to": "after"}],
}


def assert_finished_correctly(run: run_pb2.Run, expected_attempts: int | None = None) -> None:
    assert run.status == run_pb2.RUN_STATUS_SUCCEEDED, (run.run_id, run.error)
    for task in run.tasks:
        assert task.status == run_pb2.TASK_STATUS_SUCCEEDED, (run.run_id, task.node_id)
        for attempt in task.attempts:
            # Every attempt ended: none was left "running" by the killed process.
            assert attempt.status != run_pb2.TASK_STATUS_RUNNING, (task.node_id, attempt)
        if expected_attempts is not None and task.type == "code":
            assert len(task.attempts) == expected_attempts, (task.node_id, task.attempts)


async def test_a_scheduler_killed_mid_run_loses_no_task_and_runs_none_twice(
    settings: Settings, services: Services, gateway: Any, eventually: Eventually
) -> None:
    await register(gateway, STEPS)
    services.start("executor")
    scheduler = services.start("scheduler")
    run_ids = await start_runs(gateway, "durable-steps", 4)

    async def some_waiting() -> None:
        runs = await get_runs(gateway, run_ids)
        assert any(r.status == run_pb2.RUN_STATUS_WAITING for r in runs)

    await eventually(some_waiting, within=60)
    services.kill(scheduler)  # mid-run: delays pending, tasks in flight
    services.start("scheduler")

    async def all_finished() -> list[run_pb2.Run]:
        runs = await get_runs(gateway, run_ids)
        assert all(r.status in FINISHED for r in runs), [r.status for r in runs]
        return runs

    for run in await eventually(all_finished, within=90):
        assert_finished_correctly(run, expected_attempts=1)
        n = run.trigger.data.struct_value.fields["n"].number_value
        c = next(t for t in run.tasks if t.node_id == "c")
        assert codec.value_to_json(c.output) == (n + 1) * 10
        pause = next(t for t in run.tasks if t.node_id == "pause")
        resumed = codec.value_to_json(pause.output)
        assert isinstance(resumed, dict)
        assert resumed["resumed_at"] >= resumed["scheduled_resume_at"]


async def test_an_executor_killed_mid_task_has_its_work_finished_elsewhere(
    settings: Settings, services: Services, gateway: Any, eventually: Eventually
) -> None:
    await register(gateway, LONG_TASK)
    services.start("scheduler")
    doomed = services.start("executor")
    run_ids = await start_runs(gateway, "durable-long-task", 2)

    async def slow_running() -> None:
        runs = await get_runs(gateway, run_ids)
        for run in runs:
            slow = next(t for t in run.tasks if t.node_id == "slow")
            assert slow.status == run_pb2.TASK_STATUS_RUNNING

    await eventually(slow_running, within=60)
    services.kill(doomed)
    services.start("executor")

    async def all_finished() -> list[run_pb2.Run]:
        runs = await get_runs(gateway, run_ids)
        assert all(r.status in FINISHED for r in runs), [r.status for r in runs]
        return runs

    for run in await eventually(all_finished, within=90):
        assert_finished_correctly(run)
        slow = next(t for t in run.tasks if t.node_id == "slow")
        # The attempt the dead executor had was either taken over or declared lost
        # and run again; either way the last attempt is the one that counted.
        assert slow.attempts[-1].status == run_pb2.TASK_STATUS_SUCCEEDED
        n = run.trigger.data.struct_value.fields["n"].number_value
        after = next(t for t in run.tasks if t.node_id == "after")
        assert codec.value_to_json(after.output) == n + 100


ROOT = Path(__file__).resolve().parents[2]


def _restart_local_store() -> None:
    """Stop and start the local stack's DocumentDB (gateway and PostgreSQL)."""
    for script in ("stop.sh", "start.sh"):
        subprocess.run(
            ["bash", str(ROOT / "scripts" / "stack" / script), "documentdb"],
            check=True,
            capture_output=True,
            timeout=120,
        )


def _local_store_serves(settings: Settings) -> bool:
    status = subprocess.run(
        ["bash", str(ROOT / "scripts" / "stack" / "status.sh")],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    port = os.environ.get("FLOWYARD_MONGO_PORT", "27017")
    return "documentdb: up (pid" in status and f"127.0.0.1:{port}/" in settings.mongo_url


async def test_runs_continue_after_the_store_restarts_mid_run(
    settings: Settings, services: Services, gateway: Any, eventually: Eventually
) -> None:
    if not _local_store_serves(settings):
        pytest.skip("the store is not the local stack's DocumentDB: this test restarts it")
    await register(gateway, STEPS)
    services.start("executor")
    services.start("scheduler")
    run_ids = await start_runs(gateway, "durable-steps", 4)

    async def some_waiting() -> None:
        runs = await get_runs(gateway, run_ids)
        assert any(r.status == run_pb2.RUN_STATUS_WAITING for r in runs)

    await eventually(some_waiting, within=60)
    await asyncio.to_thread(_restart_local_store)  # delays pending, tasks in flight

    async def all_finished() -> list[run_pb2.Run]:
        try:
            runs = await get_runs(gateway, run_ids)
        except grpc.aio.AioRpcError as exc:  # the gateway's store still reconnecting
            raise AssertionError(exc.details()) from exc
        assert all(r.status in FINISHED for r in runs), [r.status for r in runs]
        return runs

    for run in await eventually(all_finished, within=120):
        # at-least-once: a result the store could not take is executed again
        assert_finished_correctly(run)
        n = run.trigger.data.struct_value.fields["n"].number_value
        c = next(t for t in run.tasks if t.node_id == "c")
        assert codec.value_to_json(c.output) == (n + 1) * 10
