"""Alerts end to end (FEATURES A1-A8): the scheduler, executor, gateway and alerter run
against the real stack; a real SMTP server (aiosmtpd) and a local Slack ``chat.postMessage``
server receive what the alerter sends.

Every kind (failed, succeeded, runtime before the run ends, query warning and failure,
stopped, upstream failure), policies against subscriptions, the refusals when saving,
SMTP down then back up, an undeliverable alert dead-lettered, the per-channel rate limit.
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiokafka import AIOKafkaConsumer
from aiosmtpd.controller import Controller
from cryptography.fernet import Fernet
from flowyard import codec
from flowyard.adapters.alert_store import AlertStore
from flowyard.cli import main as cli
from flowyard.config import Settings
from flowyard.domain.definition import parse_definition
from flowyard.metrics import ServiceMetrics
from flowyard.v1 import alerts_pb2, alerts_pb2_grpc, gateway_pb2, gateway_pb2_grpc, run_pb2
from flowyard_alerter.app import Alerter
from prometheus_client import CollectorRegistry

from tests.e2e.conftest import RunningFlowyard
from tests.e2e.servers import Mail, Outside, SmtpSink, free_port
from tests.integration.kafka_reading import read_dead_letters

pytestmark = pytest.mark.e2e

Eventually = Callable[..., Awaitable[Any]]
LINK_BASE = "https://flowyard.example.test/runs"
DOMAIN = "example.test"
K = alerts_pb2
FAILED = K.ALERT_KIND_FAILED


@pytest.fixture
def settings(settings: Settings, outside: Outside) -> Settings:
    configured = outside.configure(settings)
    return replace(
        configured,
        # The gateway keeps a stored Slack bot token as an encrypted credential.
        credentials_key=Fernet.generate_key().decode(),
        alerts=replace(
            configured.alerts,
            run_link_base=LINK_BASE,
            poll_seconds=0.2,
            backoff_seconds=0.3,
            backoff_max_seconds=1.0,
            max_attempts=4,
            lease_seconds=3.0,
            rate_per_minute=600,
            rate_burst=50,
            send_timeout_seconds=5.0,
        ),
    )


@pytest.fixture
async def alerter(settings: Settings) -> AsyncIterator[Alerter]:
    async with Alerter(settings, ServiceMetrics(CollectorRegistry(), "alerter")) as running:
        yield running


@pytest.fixture
async def alerts(flowyard: RunningFlowyard) -> alerts_pb2_grpc.AlertServiceStub:
    stub = alerts_pb2_grpc.AlertServiceStub(flowyard.channel)
    await stub.SetAllowedDomains(K.SetAllowedDomainsRequest(add=[DOMAIN]))
    return stub


# --- helpers ---------------------------------------------------------------------------


async def apply(flowyard: RunningFlowyard, document: dict[str, Any]) -> None:
    definition = codec.definition_to_proto(parse_definition(document))
    await flowyard.workflows.ApplyWorkflow(gateway_pb2.ApplyWorkflowRequest(definition=definition))


async def start(flowyard: RunningFlowyard, workflow: str) -> str:
    response = await flowyard.runs.StartRun(
        gateway_pb2.StartRunRequest(workflow=workflow, started_by="alice")
    )
    return response.run_id


async def run_status(flowyard: RunningFlowyard, run_id: str) -> int:
    run = await flowyard.runs.GetRun(gateway_pb2.GetRunRequest(run_id=run_id))
    return run.status


def workflow(
    name: str, wf_type: str, nodes: list[dict[str, Any]], **trigger: Any
) -> dict[str, Any]:
    chain = [{"id": "start", "type": "trigger", **({"config": trigger} if trigger else {})}]
    chain += nodes
    return {
        "name": name,
        "type": wf_type,
        "nodes": chain,
        "edges": [{"from": a["id"], "to": b["id"]} for a, b in itertools.pairwise(chain)],
    }


def code(node_id: str, source: str) -> dict[str, Any]:
    return {"id": node_id, "type": "code", "config": {"source": source}}


def http_to(port: int) -> dict[str, Any]:
    return {
        "id": "fetch",
        "type": "http",
        "retry": {"max_attempts": 1},
        "config": {"url": f"http://127.0.0.1:{port}/sales", "timeout_seconds": 5},
    }


def policy(name: str, **fields: Any) -> K.SetAlertPolicyRequest:
    return K.SetAlertPolicyRequest(policy=K.AlertPolicy(name=name, **fields))


def mails_to(outside: Outside, address: str, run_id: str = "") -> list[Mail]:
    return [
        m
        for m in list(outside.smtp.messages)
        if address in m.recipients and (not run_id or run_id in subject(m))
    ]


def slack_posts(outside: Outside, channel: str, run_id: str = "") -> list[dict[str, Any]]:
    posts = [r.json() for r in outside.slack.messages()]
    return [p for p in posts if p["channel"] == channel and run_id in p["text"]]


def one(items: list[Any]) -> Any:
    """The only item (an AssertionError otherwise, so ``eventually`` keeps polling)."""
    assert len(items) == 1, items
    return items[0]


def subject(mail: Mail) -> str:
    """The Subject unfolded (long headers are folded onto a continuation line)."""
    return " ".join(str(mail.message["Subject"]).split())


def body(mail: Mail) -> str:
    part = mail.message.get_body(("plain",))
    assert part is not None
    return str(part.get_content())


async def activity(
    alerts: alerts_pb2_grpc.AlertServiceStub, **filters: Any
) -> list[alerts_pb2.AlertAttempt]:
    response = await alerts.ListAlertActivity(K.ListAlertActivityRequest(**filters))
    return list(response.attempts)


async def read_alert_attempts(settings: Settings, count: int) -> list[alerts_pb2.AlertAttempt]:
    """The first ``count`` attempts published on this test's alerts topic."""
    consumer = AIOKafkaConsumer(
        settings.topics.alerts,
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        group_id=None,
    )
    await consumer.start()
    found: list[alerts_pb2.AlertAttempt] = []
    try:
        async with asyncio.timeout(30):
            while len(found) < count:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    found.extend(alerts_pb2.AlertAttempt.FromString(r.value) for r in records)
    finally:
        await consumer.stop()
    return found


def violation_fields(error: grpc.aio.AioRpcError) -> str:
    return error.details() or ""


# --- failed, succeeded: policies and subscriptions -------------------------------------


async def test_failed_and_succeeded_alerts_follow_policies_and_subscriptions(
    flowyard: RunningFlowyard,
    alerter: Alerter,
    alerts: alerts_pb2_grpc.AlertServiceStub,
    outside: Outside,
    eventually: Eventually,
) -> None:
    # ops watches the billing type (default kinds: no success); wins wants successes of
    # one workflow only.
    await alerts.SetAlertPolicy(
        policy(
            "billing-ops",
            workflow_type="billing",
            emails=[f"ops@{DOMAIN}"],
            slack_channels=["#billing-ops"],
        )
    )
    await alerts.SetAlertPolicy(
        policy(
            "nightly-wins",
            workflow_type="billing",
            workflow="nightly-ok",
            emails=[f"wins@{DOMAIN}"],
            kinds=[K.ALERT_KIND_SUCCEEDED],
        )
    )
    await apply(flowyard, workflow("charge-cards", "billing", [http_to(outside.closed_port)]))
    await apply(
        flowyard,
        workflow("nightly-ok", "billing", [code("work", "import time\ntime.sleep(1.5)\nresult=1")]),
    )
    failing = await start(flowyard, "charge-cards")
    succeeding = await start(flowyard, "nightly-ok")
    subscribed = await alerts.SubscribeToRun(
        K.SubscribeToRunRequest(
            run_id=succeeding,
            emails=[f"watcher@{DOMAIN}"],
            slack_channels=["#watchers"],
            subscriber="bob",
        )
    )
    assert subscribed.subscription_id and subscribed.run_id == succeeding

    # The failure: email and Slack to the policy's recipients, with every fact.
    async def failure_delivered() -> Mail:
        mail = one(mails_to(outside, f"ops@{DOMAIN}", failing))
        assert slack_posts(outside, "#billing-ops", failing)
        return mail

    mail = await eventually(failure_delivered, within=60)
    title = subject(mail)
    assert title.startswith("[Flowyard] FAILED: charge-cards run ")
    assert title.endswith(" at fetch")
    text = body(mail)
    assert f"Run {failing} of workflow charge-cards failed." in text
    assert "charge-cards (type billing, version 1)" in text
    assert f"Trigger:              api by {flowyard.principal}" in text
    assert "Failing task:" in text and " fetch" in text
    assert "[http.connection]" in text and f"127.0.0.1:{outside.closed_port}" in text
    assert "Check that the endpoint named in the error is up" in text
    assert f"{LINK_BASE}/{failing}" in text
    assert str(mail.message["From"]) == outside.configure(flowyard.settings).smtp.sender
    post = one(slack_posts(outside, "#billing-ops", failing))
    assert ":red_circle:" in post["text"] and "charge-cards" in post["text"]
    assert "[http.connection]" in post["text"] and f"<{LINK_BASE}/{failing}|" in post["text"]
    assert "Check that the endpoint" in post["text"]
    # Only policies that want failures: wins@ gets no failure alert.
    assert mails_to(outside, f"wins@{DOMAIN}", failing) == []

    # The success: the subscriber (always) and the policy that enables success.
    async def success_delivered() -> None:
        assert len(mails_to(outside, f"watcher@{DOMAIN}", succeeding)) == 1
        assert len(mails_to(outside, f"wins@{DOMAIN}", succeeding)) == 1
        assert len(slack_posts(outside, "#watchers", succeeding)) == 1

    await eventually(success_delivered, within=60)
    success = one(mails_to(outside, f"wins@{DOMAIN}", succeeding))
    assert subject(success).startswith("[Flowyard] SUCCEEDED: nightly-ok run ")
    assert f"{LINK_BASE}/{succeeding}" in body(success)
    # ops' policy does not enable success alerts.
    await asyncio.sleep(0.5)
    assert mails_to(outside, f"ops@{DOMAIN}", succeeding) == []
    assert slack_posts(outside, "#billing-ops", succeeding) == []

    # The activity log: each attempt with kind, run, recipient, channel, time, status
    # (recorded once the server has taken the message).
    async def logged() -> None:
        attempts = await activity(alerts, run_id=failing)
        assert {(a.channel, a.recipient, a.status, a.kind) for a in attempts} == {
            (K.ALERT_CHANNEL_EMAIL, f"ops@{DOMAIN}", K.ALERT_DELIVERY_STATUS_SENT, FAILED),
            (K.ALERT_CHANNEL_SLACK, "#billing-ops", K.ALERT_DELIVERY_STATUS_SENT, FAILED),
        }
        assert all(a.at.seconds > 0 and a.attempt == 1 and a.error == "" for a in attempts)
        successes = await activity(alerts, kind=K.ALERT_KIND_SUCCEEDED)
        assert {a.recipient for a in successes} == {
            f"wins@{DOMAIN}",
            f"watcher@{DOMAIN}",
            "#watchers",
        }
        emails = await activity(alerts, channel=K.ALERT_CHANNEL_EMAIL, run_id=succeeding)
        assert {a.recipient for a in emails} == {f"wins@{DOMAIN}", f"watcher@{DOMAIN}"}

    await eventually(logged, within=10)

    # Each attempt is also published on flowyard.alerts.
    published = await read_alert_attempts(flowyard.settings, 5)
    assert {(a.run_id, a.recipient) for a in published if a.run_id == failing} == {
        (failing, f"ops@{DOMAIN}"),
        (failing, "#billing-ops"),
    }

    sample = alerter.metrics.registry.get_sample_value
    assert sample("flowyard_alerts_sent_total", {"kind": "failed", "channel": "email"}) == 1
    assert sample("flowyard_alerts_sent_total", {"kind": "succeeded", "channel": "slack"}) == 1
    count = sample("flowyard_alert_delivery_seconds_count", {"kind": "failed", "channel": "slack"})
    assert count == 1


# --- refusals when saved ---------------------------------------------------------------


async def test_recipients_outside_the_allowed_domains_or_not_channels_are_refused_when_saved(
    flowyard: RunningFlowyard, alerts: alerts_pb2_grpc.AlertServiceStub
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await alerts.SetAlertPolicy(
            policy("p", workflow_type="billing", emails=[f"ok@{DOMAIN}", "eve@gmail.com"])
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "eve@gmail.com" in violation_fields(refused.value)
    assert "gmail.com" in violation_fields(refused.value)

    for channel in ("billing-ops", "@alice", "#Has Spaces"):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await alerts.SetAlertPolicy(
                policy("p", workflow_type="billing", slack_channels=[channel])
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert channel in violation_fields(refused.value)

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await alerts.SetAlertPolicy(policy("p", emails=[f"ok@{DOMAIN}"]))
    assert "workflow type" in violation_fields(refused.value)
    # Nothing was stored by the refused calls.
    listed = await alerts.ListAlertPolicies(K.ListAlertPoliciesRequest())
    assert list(listed.policies) == []

    await apply(flowyard, workflow("slow", "misc", [code("w", "import time\ntime.sleep(5)")]))
    run_id = await start(flowyard, "slow")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await alerts.SubscribeToRun(
            K.SubscribeToRunRequest(run_id=run_id, emails=["mallory@elsewhere.test"])
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "mallory@elsewhere.test" in violation_fields(refused.value)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await alerts.SubscribeToRun(K.SubscribeToRunRequest(run_id=run_id, slack_channels=["U123"]))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'U123' is not a channel" in violation_fields(refused.value)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await alerts.SubscribeToRun(
            K.SubscribeToRunRequest(run_id="no-such-run", emails=[f"a@{DOMAIN}"])
        )
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND

    # A valid policy is stored; the domain it uses cannot be removed while it does.
    saved = await alerts.SetAlertPolicy(
        policy("p", workflow_type="billing", emails=[f"Ok@{DOMAIN}"], slack_channels=["#ops"])
    )
    assert saved.name == "p" and saved.created_at.seconds > 0
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await alerts.SetAllowedDomains(K.SetAllowedDomainsRequest(remove=[DOMAIN]))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "policy p" in (refused.value.details() or "")
    settings = await alerts.GetAlertSettings(K.GetAlertSettingsRequest())
    assert list(settings.allowed_domains) == [DOMAIN]
    assert settings.slack.token_configured and settings.slack.source == "environment"

    await alerts.DeleteAlertPolicy(K.DeleteAlertPolicyRequest(name="p"))
    after = await alerts.SetAllowedDomains(K.SetAllowedDomainsRequest(remove=[DOMAIN]))
    assert list(after.allowed_domains) == []
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await alerts.DeleteAlertPolicy(K.DeleteAlertPolicyRequest(name="p"))
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND


# --- runtime ---------------------------------------------------------------------------


async def test_runtime_alert_is_sent_while_the_run_is_still_running(
    flowyard: RunningFlowyard,
    alerter: Alerter,
    alerts: alerts_pb2_grpc.AlertServiceStub,
    outside: Outside,
    eventually: Eventually,
) -> None:
    await alerts.SetAlertPolicy(
        policy(
            "slow-reports",
            workflow_type="reporting",
            emails=[f"oncall@{DOMAIN}"],
            runtime_threshold_seconds=1.5,
        )
    )
    await apply(
        flowyard,
        workflow("big-report", "reporting", [code("crunch", "import time\ntime.sleep(8)")]),
    )
    run_id = await start(flowyard, "big-report")
    started = time.monotonic()

    async def runtime_alert() -> Mail:
        mail = one(mails_to(outside, f"oncall@{DOMAIN}", run_id))
        return mail

    mail = await eventually(runtime_alert, within=30)
    # Sent while the run is still running, soon after the threshold passed.
    assert await run_status(flowyard, run_id) == run_pb2.RUN_STATUS_RUNNING
    assert time.monotonic() - started < 8
    assert subject(mail).startswith("[Flowyard] RUNNING LONG: big-report run ")
    text = body(mail)
    assert "over the 1.5 s threshold of alert policy slow-reports" in text
    assert "Running now: crunch." in text

    async def finished() -> None:
        assert await run_status(flowyard, run_id) == run_pb2.RUN_STATUS_SUCCEEDED

    await eventually(finished, within=30)
    await asyncio.sleep(0.5)
    # One runtime alert; the policy does not want success alerts.
    assert len(mails_to(outside, f"oncall@{DOMAIN}", run_id)) == 1
    logged = one(await activity(alerts, run_id=run_id))
    assert logged.kind == K.ALERT_KIND_RUNTIME and logged.status == K.ALERT_DELIVERY_STATUS_SENT


# --- query thresholds ------------------------------------------------------------------


def orders_db(path: Path, failed: int) -> Path:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, status TEXT)")
        db.executemany("INSERT INTO orders (status) VALUES (?)", [("failed",)] * failed)
    return path


def query_check(path: Path, warning: int, failure: int) -> dict[str, Any]:
    return {
        "id": "check",
        "type": "query",
        "retry": {"max_attempts": 1},
        "config": {
            "source": {
                "kind": "sqlite",
                "path": str(path),
                "sql": "SELECT count(*) FROM orders WHERE status = 'failed'",
            },
            "warning_threshold": warning,
            "failure_threshold": failure,
        },
    }


async def test_query_threshold_alerts_for_warnings_and_failures(
    flowyard: RunningFlowyard,
    alerter: Alerter,
    alerts: alerts_pb2_grpc.AlertServiceStub,
    outside: Outside,
    tmp_path: Path,
    eventually: Eventually,
) -> None:
    await alerts.SetAlertPolicy(
        policy(
            "data-quality",
            workflow_type="quality",
            slack_channels=["#data-quality"],
            kinds=[K.ALERT_KIND_QUERY],
        )
    )
    db = orders_db(tmp_path / "orders.db", failed=12)
    await apply(flowyard, workflow("orders-warn", "quality", [query_check(db, 10, 100)]))
    await apply(flowyard, workflow("orders-fail", "quality", [query_check(db, 5, 11)]))
    warned = await start(flowyard, "orders-warn")
    failed = await start(flowyard, "orders-fail")

    async def both_posted() -> tuple[dict[str, Any], dict[str, Any]]:
        warning = one(slack_posts(outside, "#data-quality", warned))
        failure = one(slack_posts(outside, "#data-quality", failed))
        return warning, failure

    warning, failure = await eventually(both_posted, within=60)
    assert "crossed a query threshold" in warning["text"]
    assert "Query node check:" in warning["text"] and "warning" in warning["text"].lower()
    assert "the run goes on" in warning["text"]
    assert "crossed its failure threshold" in failure["text"]
    assert "[threshold.failure]" in failure["text"]
    assert "override the threshold for this run" in failure["text"]
    # The policy wants query alerts only: the failed run raises no "failed" alert.
    await asyncio.sleep(0.5)
    assert len(slack_posts(outside, "#data-quality", failed)) == 1

    async def logged() -> None:
        kinds = {a.kind for a in await activity(alerts, run_id=failed)}
        assert kinds == {K.ALERT_KIND_QUERY}

    await eventually(logged, within=10)


# --- stopped ---------------------------------------------------------------------------


async def test_stopped_alert_names_who_stopped_the_run(
    flowyard: RunningFlowyard,
    alerter: Alerter,
    alerts: alerts_pb2_grpc.AlertServiceStub,
    outside: Outside,
    eventually: Eventually,
) -> None:
    await apply(flowyard, workflow("long-job", "batch", [code("w", "import time\ntime.sleep(30)")]))
    run_id = await start(flowyard, "long-job")
    # A subscriber gets the stopped alert with no policy at all.
    await alerts.SubscribeToRun(
        K.SubscribeToRunRequest(run_id=run_id, emails=[f"owner@{DOMAIN}"], subscriber="carol")
    )

    async def running() -> None:
        assert await run_status(flowyard, run_id) == run_pb2.RUN_STATUS_RUNNING

    await eventually(running, within=30)
    control = gateway_pb2_grpc.RunControlServiceStub(flowyard.channel)
    await control.StopRun(gateway_pb2.StopRunRequest(run_id=run_id, comment="wrong input"))

    async def stopped_alert() -> Mail:
        mail = one(mails_to(outside, f"owner@{DOMAIN}", run_id))
        return mail

    mail = await eventually(stopped_alert, within=60)
    assert subject(mail).startswith("[Flowyard] STOPPED: long-job run ")
    assert f"Stopped by {flowyard.principal}." in body(mail)

    # The attempt is logged once the SMTP server has taken the message.
    async def logged() -> None:
        attempt = one(await activity(alerts, run_id=run_id, kind=K.ALERT_KIND_STOPPED))
        assert attempt.status == K.ALERT_DELIVERY_STATUS_SENT

    await eventually(logged, within=10)


# --- upstream failure ------------------------------------------------------------------


async def test_downstream_recipients_hear_that_an_upstream_failure_delays_them(
    flowyard: RunningFlowyard,
    alerter: Alerter,
    alerts: alerts_pb2_grpc.AlertServiceStub,
    outside: Outside,
    eventually: Eventually,
) -> None:
    await apply(flowyard, workflow("extract", "etl", [http_to(outside.closed_port)]))
    await apply(
        flowyard,
        workflow("report", "reporting", [code("r", "result = 1")], after={"workflow": "extract"}),
    )
    await apply(
        flowyard,
        workflow("invoice", "billing", [code("i", "result = 1")], after={"workflow": "extract"}),
    )
    await alerts.SetAlertPolicy(
        policy("reporting", workflow_type="reporting", emails=[f"analysts@{DOMAIN}"])
    )
    await alerts.SetAlertPolicy(
        policy("invoicing", workflow="invoice", emails=[f"analysts@{DOMAIN}", f"ar@{DOMAIN}"])
    )
    # The upstream's own policy: recipients of extract's failure are told as usual.
    await alerts.SetAlertPolicy(policy("etl", workflow_type="etl", slack_channels=["#etl"]))
    run_id = await start(flowyard, "extract")

    async def delayed() -> tuple[Mail, Mail]:
        analysts = one(mails_to(outside, f"analysts@{DOMAIN}", run_id))
        ar = one(mails_to(outside, f"ar@{DOMAIN}", run_id))
        assert slack_posts(outside, "#etl", run_id)
        return analysts, ar

    analysts, ar = await eventually(delayed, within=60)
    assert subject(analysts).startswith("[Flowyard] UPSTREAM FAILED: extract run")
    # One alert per recipient, naming every workflow of theirs that is delayed.
    assert delayed_line(analysts) == "Delayed workflows: invoice, report"
    assert "will be delayed until it succeeds" in body(analysts)
    assert "[http.connection]" in body(analysts)
    assert delayed_line(ar) == "Delayed workflows: invoice"

    async def logged() -> None:
        kinds = {(a.recipient, a.kind) for a in await activity(alerts, run_id=run_id)}
        assert kinds == {
            (f"analysts@{DOMAIN}", K.ALERT_KIND_UPSTREAM),
            (f"ar@{DOMAIN}", K.ALERT_KIND_UPSTREAM),
            ("#etl", K.ALERT_KIND_FAILED),
        }

    await eventually(logged, within=10)


# --- delivery: SMTP down then up, undeliverable, rate limit ----------------------------


def delayed_line(mail: Mail) -> str:
    line = one([t for t in body(mail).splitlines() if t.startswith("Delayed workflows:")])
    return " ".join(str(line).split())


class SmtpOnPort(SmtpSink):
    """The loopback SMTP sink on a port chosen before it starts."""

    def __init__(self, port: int) -> None:
        self.messages: list[Mail] = []
        self.port = port
        self._controller = Controller(self, hostname="127.0.0.1", port=port)


@pytest.fixture
def down_port() -> int:
    return free_port()


async def test_an_alert_is_retried_while_smtp_is_down_and_delivered_once_it_is_back(
    settings: Settings,
    flowyard: RunningFlowyard,
    alerts: alerts_pb2_grpc.AlertServiceStub,
    outside: Outside,
    down_port: int,
    eventually: Eventually,
) -> None:
    down = replace(
        settings,
        smtp=replace(settings.smtp, port=down_port),
        alerts=replace(settings.alerts, max_attempts=30, backoff_seconds=0.3),
    )
    await alerts.SetAlertPolicy(policy("ops", workflow_type="billing", emails=[f"ops@{DOMAIN}"]))
    await apply(flowyard, workflow("charge-cards", "billing", [http_to(outside.closed_port)]))
    async with Alerter(down, ServiceMetrics(CollectorRegistry(), "alerter")):
        run_id = await start(flowyard, "charge-cards")

        async def retrying() -> None:
            logged = await activity(alerts, run_id=run_id)
            assert len(logged) >= 2
            assert all(a.status == K.ALERT_DELIVERY_STATUS_RETRYING for a in logged)
            assert f"127.0.0.1:{down_port}" in logged[0].error

        await eventually(retrying, within=60)
        with SmtpOnPort(down_port) as smtp:

            async def delivered() -> Mail:
                return one([m for m in smtp.messages if run_id in subject(m)])

            mail = await eventually(delivered, within=60)
            assert mail.recipients == [f"ops@{DOMAIN}"]

            async def sent_after_retries() -> None:
                logged = await activity(alerts, run_id=run_id)
                statuses = [a.status for a in reversed(logged)]  # oldest first
                assert statuses[-1] == K.ALERT_DELIVERY_STATUS_SENT
                assert set(statuses[:-1]) == {K.ALERT_DELIVERY_STATUS_RETRYING}
                assert [a.attempt for a in reversed(logged)] == list(range(1, len(logged) + 1))

            await eventually(sent_after_retries, within=10)
            await asyncio.sleep(1.0)
            assert len([m for m in smtp.messages if run_id in subject(m)]) == 1


async def test_an_undeliverable_alert_is_dead_lettered_and_logged_as_failed(
    settings: Settings,
    flowyard: RunningFlowyard,
    alerter: Alerter,
    alerts: alerts_pb2_grpc.AlertServiceStub,
    outside: Outside,
    eventually: Eventually,
) -> None:
    # A bot token must be a credential that exists, or a bot token (kept as a credential).
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await alerts.SetSlackSettings(K.SetSlackSettingsRequest(bot_token_credential="nope"))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no credential named 'nope'" in (refused.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await alerts.SetSlackSettings(K.SetSlackSettingsRequest(bot_token="xoxp-user-token"))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # A stored workspace token Slack does not accept: refused for good (invalid_auth).
    answer = await alerts.SetSlackSettings(
        K.SetSlackSettingsRequest(
            workspace="acme", bot_token="xoxb-revoked", api_url=outside.slack.api_url
        )
    )
    assert answer.slack.source == "stored" and answer.slack.workspace == "acme"
    assert answer.slack.token_credential == "alerts_slack_bot_token"
    assert "revoked" not in str(answer)
    # Kept encrypted: the stored document holds no token.
    async with AlertStore.connect(settings.mongo_url, settings.mongo_db) as store:
        stored = await store.get_settings()
    assert stored.slack is not None and "revoked" not in repr(stored)
    await alerts.SetAlertPolicy(policy("ops", workflow_type="billing", slack_channels=["#ops"]))
    await apply(flowyard, workflow("charge-cards", "billing", [http_to(outside.closed_port)]))
    run_id = await start(flowyard, "charge-cards")

    async def failed() -> alerts_pb2.AlertAttempt:
        logged = one(await activity(alerts, run_id=run_id, status=K.ALERT_DELIVERY_STATUS_FAILED))
        return logged

    logged = await eventually(failed, within=60)
    assert logged.recipient == "#ops" and logged.channel == K.ALERT_CHANNEL_SLACK
    assert "invalid_auth" in logged.error
    [letter] = await read_dead_letters(flowyard.settings, 1)
    assert letter.service == "alerter"
    assert "alert undeliverable" in letter.reason and "invalid_auth" in letter.reason
    assert run_id.encode() in letter.value
    sample = alerter.metrics.registry.get_sample_value
    assert sample("flowyard_alerts_failed_total", {"kind": "failed", "channel": "slack"}) == 1

    # Back to the environment's token: alerts go out again.
    cleared = await alerts.SetSlackSettings(K.SetSlackSettingsRequest(clear=True))
    assert cleared.slack.source == "environment"


async def test_alerts_to_one_channel_are_rate_limited(
    settings: Settings,
    flowyard: RunningFlowyard,
    alerts: alerts_pb2_grpc.AlertServiceStub,
    outside: Outside,
    eventually: Eventually,
) -> None:
    limited = replace(settings, alerts=replace(settings.alerts, rate_per_minute=60, rate_burst=1))
    await alerts.SetAlertPolicy(
        policy("ops", workflow_type="billing", slack_channels=["#narrow"], emails=[f"a@{DOMAIN}"])
    )
    await apply(flowyard, workflow("charge-cards", "billing", [http_to(outside.closed_port)]))
    metrics = ServiceMetrics(CollectorRegistry(), "alerter")
    async with Alerter(limited, metrics):
        run_ids = [await start(flowyard, "charge-cards") for _ in range(3)]

        async def all_posted() -> None:
            assert len(slack_posts(outside, "#narrow")) == 3
            assert len(mails_to(outside, f"a@{DOMAIN}")) == 3

        await eventually(all_posted, within=60)

        async def all_logged() -> list[float]:
            logged = await activity(alerts, channel=K.ALERT_CHANNEL_SLACK)
            times = sorted(a.at.ToDatetime().timestamp() for a in logged if a.run_id in run_ids)
            assert len(times) == 3
            return times

        arrivals = await eventually(all_logged, within=10)
    # One per second after the first: the three took at least ~2 s in all.
    assert arrivals[-1] - arrivals[0] >= 1.5
    rate_limited = metrics.registry.get_sample_value(
        "flowyard_alerts_rate_limited_total", {"channel": "slack"}
    )
    assert rate_limited is not None and rate_limited >= 2


# --- the CLI ---------------------------------------------------------------------------


async def test_alerts_are_configured_and_read_with_the_cli(
    flowyard: RunningFlowyard,
    alerter: Alerter,
    outside: Outside,
    eventually: Eventually,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    assert flowyard.admin is not None
    monkeypatch.setenv("FLOWYARD_TOKEN", flowyard.admin.token)
    monkeypatch.delenv("FLOWYARD_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))  # no config file of the user's

    async def flowyard_cli(*argv: str) -> tuple[int, str, str]:
        # The CLI is synchronous; the services run on this event loop.
        exit_code = await asyncio.to_thread(cli.main, [*argv, "--server", flowyard.address])
        out, err = capsys.readouterr()
        return exit_code, out, err

    status, out, _ = await flowyard_cli("alert", "domains", "--add", DOMAIN, "--add", "corp.test")
    assert status == 0 and f"allowed email domains: corp.test, {DOMAIN}" in out
    status, out, err = await flowyard_cli(
        "alert", "policy", "set", "ops", "--type", "billing", "--email", "eve@gmail.com"
    )
    assert status == 1 and "INVALID_ARGUMENT" in err and "eve@gmail.com" in err
    status, out, err = await flowyard_cli(
        "alert", "policy", "set", "ops", "--type", "billing", "--slack", "ops"
    )
    assert status == 1 and "'ops' is not a channel" in err
    status, out, err = await flowyard_cli(
        "alert", "policy", "set", "ops", "--type", "billing", "--kinds", "failed,nope"
    )
    assert status == 2 and "unknown kind 'nope'" in err
    status, out, _ = await flowyard_cli(
        "alert", "policy", "set", "ops", "--type", "billing", "--email", f"ops@{DOMAIN}",
        "--slack", "#ops", "--kinds", "failed,succeeded", "--runtime-threshold", "600",
    )  # fmt: skip
    assert status == 0 and "alert policy ops saved" in out
    status, out, _ = await flowyard_cli("alert", "policy", "list")
    assert status == 0
    assert "failed,succeeded" in out and "600s" in out and f"ops@{DOMAIN}, #ops" in out

    status, out, _ = await flowyard_cli("alert", "slack")
    assert status == 0 and "bot token configured (from environment)" in out

    await apply(flowyard, workflow("charge-cards", "billing", [http_to(outside.closed_port)]))
    run_id = await start(flowyard, "charge-cards")

    async def logged() -> str:
        status, out, _ = await flowyard_cli("alert", "log", "--run", run_id, "--status", "sent")
        assert status == 0 and out.count(run_id) == 2, out
        return str(out)

    out = await eventually(logged, within=60)
    assert f"ops@{DOMAIN}" in out and "#ops" in out and "failed" in out
    status, out, _ = await flowyard_cli("alert", "log", "--kind", "runtime")
    assert status == 0 and "no alert activity" in out

    await apply(flowyard, workflow("slow", "misc", [code("w", "import time\ntime.sleep(20)")]))
    slow = await start(flowyard, "slow")
    status, out, err = await flowyard_cli("alert", "subscribe", slow, "--email", f"me@{DOMAIN}")
    assert status == 0 and f"subscribed me@{DOMAIN} to run {slow}" in out, err
    status, out, _ = await flowyard_cli("alert", "subscriptions", slow)
    assert status == 0 and f"me@{DOMAIN}" in out
    status, out, err = await flowyard_cli("alert", "subscribe", run_id, "--email", f"me@{DOMAIN}")
    assert status == 1 and "FAILED_PRECONDITION" in err and "failed already" in err

    status, out, _ = await flowyard_cli("alert", "policy", "delete", "ops")
    assert status == 0 and "deleted" in out
    status, out, _ = await flowyard_cli("alert", "policy", "list")
    assert "no alert policies" in out
