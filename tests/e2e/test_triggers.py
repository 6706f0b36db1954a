"""Triggers end to end on the real stack (FEATURES T1-T7, D6): schedules (also with two
scheduler instances), webhooks, producers' events (from a Kafka client that is not
Flowyard's), run-after, and paused workflows ignoring every one of them."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import shutil
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import grpc
import pytest
from aiokafka import AIOKafkaProducer
from flowyard import codec
from flowyard.adapters.mongo import MongoStore
from flowyard.adapters.trigger_store import TriggerStore
from flowyard.config import Settings
from flowyard.domain.definition import parse_definition
from flowyard.domain.run import RunState, RunStatus
from flowyard.domain.triggers import Schedule, tick_label
from flowyard.metrics import ServiceMetrics
from flowyard.producer import EventProducer
from flowyard.v1 import gateway_pb2, workflow_pb2
from flowyard_api_gateway.webhooks import sign
from flowyard_scheduler.__main__ import serve as serve_scheduler
from prometheus_client import CollectorRegistry

from tests.e2e.conftest import RunningFlowyard
from tests.integration.kafka_reading import read_dead_letters

pytestmark = pytest.mark.e2e

Eventually = Callable[..., Awaitable[Any]]

PAUSED = workflow_pb2.WORKFLOW_STATE_PAUSED
ACTIVE = workflow_pb2.WORKFLOW_STATE_ACTIVE


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """A webhook port of this test's own, and schedules polled often."""
    return replace(settings, http_addr=f"127.0.0.1:{free_port()}", cron_poll_seconds=0.2)


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[MongoStore]:
    async with MongoStore(settings.mongo_url, settings.mongo_db) as opened:
        yield opened


def workflow(
    name: str, trigger: dict[str, Any], source: str = "result = trigger"
) -> dict[str, Any]:
    return {
        "name": name,
        "nodes": [
            {"id": "start", "type": "trigger", "config": trigger},
            {"id": "work", "type": "code", "config": {"source": source}},
        ],
        "edges": [{"from": "start", "to": "work"}],
    }


async def apply(flowyard: RunningFlowyard, document: dict[str, Any]) -> workflow_pb2.Workflow:
    definition = codec.definition_to_proto(parse_definition(document))
    response = await flowyard.workflows.ApplyWorkflow(
        gateway_pb2.ApplyWorkflowRequest(definition=definition)
    )
    return response.workflow


async def set_state(
    flowyard: RunningFlowyard, name: str, state: workflow_pb2.WorkflowState.ValueType
) -> None:
    await flowyard.workflows.SetWorkflowState(
        gateway_pb2.SetWorkflowStateRequest(name=name, state=state)
    )


async def runs_of(store: MongoStore, workflow_id: str) -> list[RunState]:
    found = []
    async for doc in store.runs.find({"workflow_id": workflow_id}, {"_id": 1}):
        run = await store.find_run(doc["_id"])
        assert run is not None
        found.append(run)
    return sorted(found, key=lambda r: r.created_at)


def not_started(flowyard: RunningFlowyard, service: str, name: str, reason: str) -> float:
    value = flowyard.metrics[service].registry.get_sample_value(
        "flowyard_runs_not_started_total", {"workflow": name, "reason": reason}
    )
    return value or 0.0


async def finished(store: MongoStore, run_id: str, eventually: Eventually) -> RunState:
    async def check() -> RunState:
        run = await store.find_run(run_id)
        assert run is not None and run.status.finished, run
        return run

    result: RunState = await eventually(check, within=30)
    return result


# --- schedules -------------------------------------------------------------------------


async def test_a_schedule_starts_one_run_per_tick_and_none_while_paused(
    flowyard: RunningFlowyard, store: MongoStore, eventually: Eventually
) -> None:
    applied = await apply(flowyard, workflow("every-second", {"schedule": {"cron": "* * * * * *"}}))

    async def three_runs() -> list[RunState]:
        runs = await runs_of(store, applied.workflow_id)
        assert len(runs) >= 3
        return runs

    await eventually(three_runs, within=30)
    await set_state(flowyard, "every-second", PAUSED)
    paused_at = datetime.now(UTC)
    runs = await runs_of(store, applied.workflow_id)

    ticks = [datetime.fromisoformat(r.trigger.detail) for r in runs]
    assert all(r.trigger.kind.value == "schedule" for r in runs)
    assert len(set(ticks)) == len(ticks), "one run per tick"
    assert [b - a for a, b in itertools.pairwise(ticks)] == [timedelta(seconds=1)] * (
        len(ticks) - 1
    ), "no tick skipped"
    first = await finished(store, runs[0].run_id, eventually)
    assert first.status is RunStatus.SUCCEEDED
    assert first.trigger.data == {
        "tick": first.trigger.detail,
        "cron": "* * * * * *",
        "timezone": "UTC",
    }

    # Paused: ticks pass, counted and not fired.
    def counted() -> None:
        assert not_started(flowyard, "scheduler", "every-second", "paused") >= 1

    await eventually(counted, within=10)
    late = [r for r in await runs_of(store, applied.workflow_id) if r.created_at > paused_at]
    assert late == []

    listed = await flowyard.workflows.ListWorkflows(gateway_pb2.ListWorkflowsRequest())
    [shown] = listed.workflows
    assert list(shown.triggers) == ["manual", "schedule '* * * * * *'"]
    assert shown.next_fire_at.ToDatetime(UTC) > paused_at
    assert shown.last_run.run_id == runs[-1].run_id or shown.last_run.run_id
    assert shown.state == PAUSED


async def test_two_scheduler_instances_start_one_run_per_tick(
    flowyard: RunningFlowyard, settings: Settings, store: MongoStore, eventually: Eventually
) -> None:
    stop = asyncio.Event()
    second = asyncio.create_task(
        serve_scheduler(settings, ServiceMetrics(CollectorRegistry(), "scheduler-2"), stop)
    )
    try:
        applied = await apply(
            flowyard, workflow("twice", {"schedule": {"cron": "* * * * * *", "missed": "run_once"}})
        )

        async def enough() -> None:
            assert len(await runs_of(store, applied.workflow_id)) >= 5

        await eventually(enough, within=30)
        await set_state(flowyard, "twice", PAUSED)
        await asyncio.sleep(1.0)  # let both instances finish a poll in flight
    finally:
        stop.set()
        await asyncio.wait_for(second, 30)
    runs = await runs_of(store, applied.workflow_id)
    ticks = sorted(datetime.fromisoformat(r.trigger.detail) for r in runs)
    assert len(set(ticks)) == len(ticks) == len(runs), "a tick started two runs"
    span = int((ticks[-1] - ticks[0]).total_seconds()) + 1
    assert len(ticks) == span, "a tick was lost between the instances"


def minute_far_from(now: datetime) -> int:
    """A minute of the hour whose tick is about half an hour away from ``now``."""
    return (now.minute + 30) % 60


@pytest.mark.parametrize("policy", ["skip", "run_once"])
async def test_ticks_missed_while_no_scheduler_ran_follow_the_policy(
    flowyard: RunningFlowyard, store: MongoStore, eventually: Eventually, policy: str
) -> None:
    now = datetime.now(UTC)
    schedule = Schedule(f"{minute_far_from(now)} * * * *", "Europe/Berlin")
    applied = await apply(
        flowyard,
        workflow(
            "hourly",
            {"schedule": {"cron": schedule.cron, "timezone": "Europe/Berlin", "missed": policy}},
        ),
    )
    triggers = TriggerStore(store)
    # As if the schedulers had been down for five hours.
    await triggers.set_cursor(applied.workflow_id, now - timedelta(hours=5, minutes=1))
    newest = max(
        t
        for t in (now - timedelta(minutes=m) for m in range(0, 60))
        if t.minute == minute_far_from(now)
    ).replace(second=0, microsecond=0)

    async def caught_up() -> None:
        cursors = await triggers.cursors_of([applied.workflow_id])
        assert cursors.get(applied.workflow_id) == newest

    await eventually(caught_up, within=20)
    runs = await runs_of(store, applied.workflow_id)
    if policy == "skip":
        assert runs == []
        return
    [run] = runs
    assert run.trigger.kind.value == "schedule"
    assert run.trigger.detail == tick_label(schedule, newest)
    assert isinstance(run.trigger.data, dict)
    assert run.trigger.data["missed_ticks"] == 5
    assert (await finished(store, run.run_id, eventually)).status is RunStatus.SUCCEEDED


# --- webhooks --------------------------------------------------------------------------


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        yield session


async def secret_of(flowyard: RunningFlowyard, name: str, rotate: bool = False) -> str:
    request = gateway_pb2.WebhookSecretRequest(name=name)
    call = flowyard.workflows.RotateWebhookSecret if rotate else flowyard.workflows.GetWebhookSecret
    response = await call(request)
    assert response.path == f"/webhooks/{name}"
    return response.secret


async def post(
    http: aiohttp.ClientSession,
    settings: Settings,
    name: str,
    body: bytes,
    signature: str | None,
    **headers: str,
) -> tuple[int, dict[str, Any]]:
    sent = dict(headers)
    if signature is not None:
        sent["X-Flowyard-Signature"] = signature
    url = f"http://{settings.http_addr}/webhooks/{name}"
    async with http.post(url, data=body, headers=sent) as response:
        return response.status, await response.json()


async def test_a_signed_webhook_starts_a_run_with_its_body(
    flowyard: RunningFlowyard,
    settings: Settings,
    store: MongoStore,
    http: aiohttp.ClientSession,
    eventually: Eventually,
) -> None:
    await apply(flowyard, workflow("hook", {"webhook": True}, "result = trigger['order'] * 2"))
    secret = await secret_of(flowyard, "hook")
    assert secret == await secret_of(flowyard, "hook"), "the secret is kept, not regenerated"
    body = json.dumps({"order": 21}).encode()

    status, answer = await post(http, settings, "hook", body, sign(secret, body))

    assert status == 202 and answer["created"] is True
    run = await finished(store, answer["run_id"], eventually)
    assert run.status is RunStatus.SUCCEEDED
    assert run.trigger.kind.value == "webhook"
    assert run.trigger.detail == "127.0.0.1"
    assert run.trigger.data == {"order": 21}
    assert run.tasks["work"].output == 42
    got = await flowyard.runs.GetRun(gateway_pb2.GetRunRequest(run_id=run.run_id))
    assert got.trigger.kind == "webhook" and got.trigger.detail == "127.0.0.1"


async def test_webhooks_refuse_bad_requests_with_the_right_status(
    flowyard: RunningFlowyard,
    settings: Settings,
    store: MongoStore,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    applied = await apply(flowyard, workflow("hook", {"webhook": True}))
    await apply(flowyard, workflow("no-hook", {"manual": True}))
    secret = await secret_of(flowyard, "hook")
    body = b'{"a": 1}'

    with caplog.at_level("WARNING"):
        wrong = await post(http, settings, "hook", body, sign("not-the-secret", body))
        missing = await post(http, settings, "hook", body, None)
    assert wrong[0] == 401 and "X-Flowyard-Signature" in wrong[1]["error"]
    assert missing[0] == 401
    assert "webhook hook: a wrong X-Flowyard-Signature header from 127.0.0.1" in caplog.text
    assert "webhook hook: no X-Flowyard-Signature header" in caplog.text
    assert not_started(flowyard, "api-gateway", "hook", "signature") == 2

    not_json = b"order=21"
    status, answer = await post(http, settings, "hook", not_json, sign(secret, not_json))
    assert status == 400 and "not valid JSON" in answer["error"]

    status, answer = await post(http, settings, "ghost", body, sign(secret, body))
    assert status == 404 and "no workflow named 'ghost'" in answer["error"]
    status, answer = await post(http, settings, "no-hook", body, sign(secret, body))
    assert status == 404 and "no webhook trigger" in answer["error"]

    huge = b'{"x": "' + b"a" * (1024 * 1024) + b'"}'
    status, _ = await post(http, settings, "hook", huge, sign(secret, huge))
    assert status == 413

    # A rotated secret replaces the old one at once.
    rotated = await secret_of(flowyard, "hook", rotate=True)
    assert rotated != secret
    assert (await post(http, settings, "hook", body, sign(secret, body)))[0] == 401
    assert (await post(http, settings, "hook", body, sign(rotated, body)))[0] == 202
    assert len(await runs_of(store, applied.workflow_id)) == 1

    no_hook = await asyncio.gather(
        flowyard.workflows.GetWebhookSecret(gateway_pb2.WebhookSecretRequest(name="no-hook")),
        return_exceptions=True,
    )
    assert isinstance(no_hook[0], grpc.aio.AioRpcError)
    assert no_hook[0].code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_the_idempotency_key_returns_the_same_run_across_webhook_and_grpc(
    flowyard: RunningFlowyard,
    settings: Settings,
    store: MongoStore,
    http: aiohttp.ClientSession,
) -> None:
    applied = await apply(flowyard, workflow("hook", {"webhook": True}))
    secret = await secret_of(flowyard, "hook")
    body = b'{"n": 1}'
    key = {"X-Flowyard-Idempotency-Key": "order-17"}

    first = await post(http, settings, "hook", body, sign(secret, body), **key)
    again = await post(http, settings, "hook", body, sign(secret, body), **key)
    by_grpc = await flowyard.runs.StartRun(
        gateway_pb2.StartRunRequest(workflow="hook", idempotency_key="order-17")
    )

    assert first[0] == again[0] == 202
    assert first[1]["created"] is True and again[1]["created"] is False
    assert first[1]["run_id"] == again[1]["run_id"] == by_grpc.run_id
    assert not by_grpc.created
    [run] = await runs_of(store, applied.workflow_id)
    assert run.trigger.idempotency_key == "order-17"


async def test_a_webhook_to_a_paused_workflow_gets_409(
    flowyard: RunningFlowyard,
    settings: Settings,
    store: MongoStore,
    http: aiohttp.ClientSession,
) -> None:
    applied = await apply(flowyard, workflow("hook", {"webhook": True}))
    secret = await secret_of(flowyard, "hook")
    await set_state(flowyard, "hook", PAUSED)
    body = b"{}"

    status, answer = await post(http, settings, "hook", body, sign(secret, body))

    assert status == 409
    assert answer["error"] == (
        "workflow 'hook' is paused and starts no runs; "
        "activate it with: flowyard workflow activate hook"
    )
    assert not_started(flowyard, "api-gateway", "hook", "paused") == 1
    assert await runs_of(store, applied.workflow_id) == []


# --- events ----------------------------------------------------------------------------


@pytest.fixture
async def kafka(settings: Settings) -> AsyncIterator[AIOKafkaProducer]:
    """A plain Kafka client, not Flowyard code: what any external producer would use."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


async def test_events_from_an_external_producer_start_every_matching_workflow_once(
    flowyard: RunningFlowyard,
    settings: Settings,
    store: MongoStore,
    kafka: AIOKafkaProducer,
    eventually: Eventually,
) -> None:
    big = await apply(
        flowyard,
        workflow("big-orders", {"event": {"type": "order.created", "filter": "data.amount > 100"}}),
    )
    every = await apply(flowyard, workflow("all-orders", {"event": {"type": "order.created"}}))
    other = await apply(flowyard, workflow("refunds", {"event": {"type": "order.refunded"}}))
    topic = settings.topics.events_ingest
    # Hand-written JSON, as kcat or any client would send it.
    large = (
        b'{"specversion":"1.0","id":"evt-1","source":"shop","type":"order.created",'
        b'"time":"2026-05-01T10:00:00Z","data":{"order":17,"amount":250}}'
    )
    small = b'{"id":"evt-2","source":"shop","type":"order.created","data":{"amount":5}}'
    await kafka.send_and_wait(topic, large)
    await kafka.send_and_wait(topic, small)

    async def started() -> None:
        assert len(await runs_of(store, big.workflow_id)) == 1
        assert len(await runs_of(store, every.workflow_id)) == 2

    await eventually(started, within=30)
    [run] = await runs_of(store, big.workflow_id)
    assert run.trigger.kind.value == "event"
    assert run.trigger.detail == "evt-1"
    assert run.trigger.started_by == "shop"
    assert isinstance(run.trigger.data, dict)
    assert run.trigger.data["data"] == {"order": 17, "amount": 250}
    assert (await finished(store, run.run_id, eventually)).status is RunStatus.SUCCEEDED

    # The same event again (a producer's retry) starts nothing new.
    await kafka.send_and_wait(topic, large)
    marker = b'{"id":"evt-3","type":"order.refunded"}'
    await kafka.send_and_wait(topic, marker)

    async def marker_seen() -> None:
        assert len(await runs_of(store, other.workflow_id)) == 1

    await eventually(marker_seen, within=30)
    assert len(await runs_of(store, big.workflow_id)) == 1
    assert len(await runs_of(store, every.workflow_id)) == 2


async def test_unreadable_events_go_to_the_dead_letter_topic_with_the_reason(
    flowyard: RunningFlowyard,
    settings: Settings,
    store: MongoStore,
    kafka: AIOKafkaProducer,
    eventually: Eventually,
) -> None:
    applied = await apply(flowyard, workflow("orders", {"event": {"type": "order.created"}}))
    topic = settings.topics.events_ingest
    await kafka.send_and_wait(topic, b"{not json", key=b"k1")
    await kafka.send_and_wait(topic, b'{"id": "e-1", "data": {}}', key=b"k2")
    await kafka.send_and_wait(topic, b'{"type": "order.created"}', key=b"k3")
    await kafka.send_and_wait(topic, b'{"id": "e-2", "type": "order.created"}', key=b"k4")

    letters = await read_dead_letters(settings, 3)
    reasons = {letter.key: letter.reason for letter in letters}
    assert "not valid JSON" in reasons[b"k1"]
    assert "no 'type'" in reasons[b"k2"]
    assert "no 'id'" in reasons[b"k3"]
    assert {letter.source_topic for letter in letters} == {topic}

    async def good_one_started() -> None:
        runs = await runs_of(store, applied.workflow_id)
        assert [r.trigger.detail for r in runs] == ["e-2"]

    await eventually(good_one_started, within=30)


async def test_the_producer_library_starts_a_workflow(
    flowyard: RunningFlowyard, settings: Settings, store: MongoStore, eventually: Eventually
) -> None:
    applied = await apply(flowyard, workflow("orders", {"event": {"type": "order.created"}}))

    def publish() -> str:
        with EventProducer(settings.kafka_bootstrap, topic_prefix=settings.topics.prefix) as p:
            return p.send("order.created", {"order": 9}, source="billing")

    event_id = await asyncio.to_thread(publish)

    async def started() -> RunState:
        runs = await runs_of(store, applied.workflow_id)
        assert len(runs) == 1
        return runs[0]

    run = await eventually(started, within=30)
    assert run.trigger.detail == event_id and run.trigger.started_by == "billing"


@pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat is not installed")
async def test_kcat_starts_a_workflow_as_the_readme_shows(
    flowyard: RunningFlowyard, settings: Settings, store: MongoStore, eventually: Eventually
) -> None:
    applied = await apply(flowyard, workflow("orders", {"event": {"type": "order.created"}}))
    line = (
        b'{"specversion":"1.0","id":"order-17","source":"shop","type":"order.created",'
        b'"data":{"order":17,"amount":250}}\n'
    )
    kcat = await asyncio.create_subprocess_exec(
        "kcat", "-P", "-b", settings.kafka_bootstrap, "-t", settings.topics.events_ingest,
        stdin=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, errors = await asyncio.wait_for(kcat.communicate(line), 30)
    assert kcat.returncode == 0, errors

    async def started() -> RunState:
        runs = await runs_of(store, applied.workflow_id)
        assert len(runs) == 1 and runs[0].status.finished
        return runs[0]

    run = await eventually(started, within=30)
    assert run.status is RunStatus.SUCCEEDED and run.trigger.detail == "order-17"
    assert run.tasks["work"].output == {
        "specversion": "1.0",
        "id": "order-17",
        "source": "shop",
        "type": "order.created",
        "data": {"order": 17, "amount": 250},
    }


# --- run after -------------------------------------------------------------------------


async def test_a_workflow_runs_after_another_succeeds_with_its_outputs(
    flowyard: RunningFlowyard, store: MongoStore, eventually: Eventually
) -> None:
    await apply(flowyard, workflow("upstream", {}, "result = {'total': trigger['n'] * 2}"))
    downstream = await apply(
        flowyard,
        workflow(
            "downstream",
            {"after": {"workflow": "upstream"}},
            "result = trigger['outputs']['work']['total'] + 1",
        ),
    )
    started = await flowyard.runs.StartRun(
        gateway_pb2.StartRunRequest(workflow="upstream", input=codec.json_to_value({"n": 20}))
    )

    async def downstream_ran() -> RunState:
        runs = await runs_of(store, downstream.workflow_id)
        assert len(runs) == 1 and runs[0].status.finished
        return runs[0]

    run = await eventually(downstream_ran, within=40)
    assert run.status is RunStatus.SUCCEEDED
    assert run.trigger.kind.value == "workflow"
    assert run.trigger.detail == started.run_id
    assert run.trigger.data == {
        "workflow": "upstream",
        "workflow_id": run.trigger.data["workflow_id"]
        if isinstance(run.trigger.data, dict)
        else "",
        "run_id": started.run_id,
        "outputs": {"work": {"total": 40}},
    }
    assert run.tasks["work"].output == 41


async def test_nothing_runs_after_a_failed_run(
    flowyard: RunningFlowyard, store: MongoStore, eventually: Eventually
) -> None:
    await apply(flowyard, workflow("upstream", {}, "raise ValueError('no')"))
    downstream = await apply(flowyard, workflow("downstream", {"after": {"workflow": "upstream"}}))
    started = await flowyard.runs.StartRun(gateway_pb2.StartRunRequest(workflow="upstream"))
    upstream = await finished(store, started.run_id, eventually)
    assert upstream.status is RunStatus.FAILED
    await asyncio.sleep(0.5)
    assert await runs_of(store, downstream.workflow_id) == []


# --- paused workflows fire nothing -----------------------------------------------------


async def test_a_paused_workflow_ignores_every_trigger(
    flowyard: RunningFlowyard,
    settings: Settings,
    store: MongoStore,
    kafka: AIOKafkaProducer,
    http: aiohttp.ClientSession,
    eventually: Eventually,
) -> None:
    await apply(flowyard, workflow("upstream", {}))
    everything = {
        "schedule": {"cron": "* * * * * *", "missed": "run_once"},
        "webhook": True,
        "event": {"type": "ping"},
        "after": {"workflow": "upstream"},
    }
    paused = await apply(flowyard, workflow("quiet", everything))
    witness = await apply(flowyard, workflow("witness", {"event": {"type": "ping"}}))
    secret = await secret_of(flowyard, "quiet")
    await set_state(flowyard, "quiet", PAUSED)

    body = b"{}"
    assert (await post(http, settings, "quiet", body, sign(secret, body)))[0] == 409
    await kafka.send_and_wait(settings.topics.events_ingest, b'{"id":"p-1","type":"ping"}')
    up = await flowyard.runs.StartRun(gateway_pb2.StartRunRequest(workflow="upstream"))
    await finished(store, up.run_id, eventually)

    def every_kind_counted() -> None:
        # webhook (gateway) + event + after + schedule ticks (scheduler)
        assert not_started(flowyard, "api-gateway", "quiet", "paused") == 1
        assert not_started(flowyard, "scheduler", "quiet", "paused") >= 3

    await eventually(every_kind_counted, within=20)
    assert len(await runs_of(store, witness.workflow_id)) == 1  # the event did arrive
    assert await runs_of(store, paused.workflow_id) == []

    # Activated again, it starts runs without catching up on its paused time.
    await set_state(flowyard, "quiet", ACTIVE)

    async def fires_again() -> None:
        runs = await runs_of(store, paused.workflow_id)
        assert runs and all(r.trigger.kind.value == "schedule" for r in runs)
        assert all(
            not (isinstance(r.trigger.data, dict) and r.trigger.data.get("missed_ticks"))
            for r in runs
        )

    await eventually(fires_again, within=20)
    await set_state(flowyard, "quiet", PAUSED)
    with contextlib.suppress(Exception):
        await asyncio.sleep(0)


async def test_a_draft_fires_nothing_and_manual_false_refuses_start_run(
    flowyard: RunningFlowyard,
    settings: Settings,
    store: MongoStore,
    kafka: AIOKafkaProducer,
    eventually: Eventually,
) -> None:
    original = await apply(
        flowyard, workflow("orders", {"manual": False, "event": {"type": "order.created"}})
    )
    draft = await flowyard.workflows.CloneWorkflow(
        gateway_pb2.CloneWorkflowRequest(source="orders", new_name="orders-v2")
    )
    assert draft.state == workflow_pb2.WORKFLOW_STATE_DRAFT

    await kafka.send_and_wait(settings.topics.events_ingest, b'{"id":"d-1","type":"order.created"}')

    async def original_started() -> None:
        assert len(await runs_of(store, original.workflow_id)) == 1
        assert not_started(flowyard, "scheduler", "orders-v2", "draft") == 1

    await eventually(original_started, within=30)
    assert await runs_of(store, draft.workflow_id) == []

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await flowyard.runs.StartRun(gateway_pb2.StartRunRequest(workflow="orders"))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "does not start manually" in (refused.value.details() or "")
