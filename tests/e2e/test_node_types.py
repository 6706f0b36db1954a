"""Each action node type in a run on the real stack: http, email, slack, transform, query and
run_workflow, talking to loopback servers (tests/e2e/servers.py) instead of the internet."""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flowyard import codec
from flowyard.config import Settings
from flowyard.v1 import run_pb2
from pymongo import AsyncMongoClient

from tests.e2e.conftest import RunningFlowyard
from tests.e2e.runs import apply, finished_run, get_run, output, start, task
from tests.e2e.servers import SLACK_CHANNEL_ID, SMTP_SENDER, Outside, json_reply

pytestmark = pytest.mark.e2e

Eventually = Callable[..., Awaitable[Any]]

SUCCEEDED, FAILED = run_pb2.RUN_STATUS_SUCCEEDED, run_pb2.RUN_STATUS_FAILED


@pytest.fixture
def settings(settings: Settings, outside: Outside) -> Settings:
    """The services of this module send mail, Slack messages and requests to ``outside``."""
    return outside.configure(settings)


# --- helpers ---------------------------------------------------------------------------


def status_names(run: run_pb2.Run) -> dict[str, str]:
    return {t.node_id: run_pb2.TaskStatus.Name(t.status) for t in run.tasks}


def workflow(name: str, nodes: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """A chain: trigger ``start``, then ``nodes`` one after the other."""
    everything = [{"id": "start", "type": "trigger"}, *nodes]
    edges = [{"from": a["id"], "to": b["id"]} for a, b in itertools.pairwise(everything)]
    return {"name": name, "nodes": everything, "edges": edges, **extra}


# --- http ------------------------------------------------------------------------------


async def test_http_node_sends_the_templated_request_and_passes_the_response_on(
    flowyard: RunningFlowyard, outside: Outside, eventually: Eventually
) -> None:
    outside.http.route("/orders/A-17", lambda _r: json_reply({"price": 5, "currency": "EUR"}))
    await apply(
        flowyard,
        workflow(
            "http-order",
            [
                {
                    "id": "call",
                    "type": "http",
                    "config": {
                        "url": "{{ context.api }}/orders/{{ trigger.order_id }}",
                        "method": "POST",
                        "headers": {"X-Order": "{{ trigger.order_id }}"},
                        "json": {
                            "qty": "{{ trigger.qty }}",
                            "note": "order {{ trigger.order_id }}",
                        },
                    },
                },
                {
                    "id": "total",
                    "type": "code",
                    "config": {
                        "source": "body = upstream['call']['body']\n"
                        "result = {'total': body['price'] * trigger['qty'],"
                        " 'currency': body['currency'], 'status': upstream['call']['status']}"
                    },
                },
            ],
            context={"api": outside.http.url()},
        ),
    )

    run_id = await start(flowyard, "http-order", {"order_id": "A-17", "qty": 3})
    run = await finished_run(flowyard, run_id, eventually)

    assert run.status == SUCCEEDED, (run.error, status_names(run))
    [request] = outside.http.received("/orders/A-17")
    assert request.method == "POST"
    assert request.headers["x-order"] == "A-17"
    assert request.json() == {"qty": 3, "note": "order A-17"}  # a lone segment keeps its type
    call = output(run, "call")
    assert call["status"] == 200 and call["body"] == {"price": 5, "currency": "EUR"}
    assert output(run, "total") == {"total": 15, "currency": "EUR", "status": 200}


async def test_http_node_to_a_closed_port_fails_the_run_with_a_connection_error(
    flowyard: RunningFlowyard, outside: Outside, eventually: Eventually
) -> None:
    await apply(
        flowyard,
        workflow(
            "http-down",
            [
                {
                    "id": "call",
                    "type": "http",
                    "config": {"url": f"http://127.0.0.1:{outside.closed_port}/health"},
                },
                {"id": "after", "type": "code", "config": {"source": "result = 1"}},
            ],
        ),
    )

    run = await finished_run(flowyard, await start(flowyard, "http-down"), eventually)

    assert run.status == FAILED
    call = task(run, "call")
    assert call.status == run_pb2.TASK_STATUS_FAILED
    assert call.error.code == "http.connection"
    assert f"127.0.0.1:{outside.closed_port}" in call.error.message
    assert run.error.code == "http.connection" and run.failed_node_id == "call"
    assert task(run, "after").status == run_pb2.TASK_STATUS_PENDING


# --- email -----------------------------------------------------------------------------


async def test_email_node_delivers_the_templated_message_over_smtp(
    flowyard: RunningFlowyard, outside: Outside, eventually: Eventually
) -> None:
    await apply(
        flowyard,
        workflow(
            "email-stock",
            [
                {
                    "id": "mail",
                    "type": "email",
                    "config": {
                        "to": "{{ trigger.owner }}",
                        "subject": "Stock low: {{ trigger.sku }} ({{ trigger.left }} left)",
                        "body": "Reorder {{ trigger.sku }} from {{ context.supplier }}.",
                    },
                }
            ],
            context={"supplier": "ACME"},
        ),
    )

    run_id = await start(
        flowyard, "email-stock", {"owner": "buyer@example.test", "sku": "BOLT-9", "left": 4}
    )
    run = await finished_run(flowyard, run_id, eventually)

    assert run.status == SUCCEEDED, (run.error, status_names(run))
    [mail] = outside.smtp.messages
    assert mail.sender == SMTP_SENDER
    assert mail.recipients == ["buyer@example.test"]
    assert mail.message["Subject"] == "Stock low: BOLT-9 (4 left)"
    assert mail.message["To"] == "buyer@example.test"
    assert mail.message["From"] == SMTP_SENDER
    body = mail.message.get_body(("plain",))
    assert body is not None and body.get_content().strip() == "Reorder BOLT-9 from ACME."
    sent = output(run, "mail")
    assert sent["accepted"] == ["buyer@example.test"]
    assert sent["message_id"] == mail.message["Message-ID"]


# --- slack -----------------------------------------------------------------------------


async def test_slack_node_posts_to_the_api_with_the_bot_token(
    flowyard: RunningFlowyard, settings: Settings, outside: Outside, eventually: Eventually
) -> None:
    await apply(
        flowyard,
        workflow(
            "slack-deploy",
            [
                {
                    "id": "notify",
                    "type": "slack",
                    "config": {
                        "channel": "#{{ trigger.team }}-alerts",
                        "text": "Deploy of {{ trigger.service }} v{{ trigger.version }} finished",
                    },
                }
            ],
        ),
    )

    run_id = await start(
        flowyard, "slack-deploy", {"team": "ops", "service": "billing", "version": 7}
    )
    run = await finished_run(flowyard, run_id, eventually)

    assert run.status == SUCCEEDED, (run.error, status_names(run))
    [message] = outside.slack.messages()
    assert message.method == "POST"
    assert message.headers["authorization"] == f"Bearer {settings.slack.bot_token}"
    assert message.json() == {"channel": "#ops-alerts", "text": "Deploy of billing v7 finished"}
    posted = output(run, "notify")
    assert posted["channel"] == SLACK_CHANNEL_ID and posted["ts"]


# --- transform -------------------------------------------------------------------------


async def test_transform_node_maps_upstream_outputs_into_its_own(
    flowyard: RunningFlowyard, eventually: Eventually
) -> None:
    items = "[{'sku': 'a', 'qty': 2}, {'sku': 'b', 'qty': 0}, {'sku': 'c', 'qty': 5}]"
    await apply(
        flowyard,
        workflow(
            "transform-basket",
            [
                {
                    "id": "basket",
                    "type": "code",
                    "config": {"source": f"result = {{'items': {items}, 'unit_price': 3}}"},
                },
                {
                    "id": "summary",
                    "type": "transform",
                    "config": {
                        "output": {
                            "skus": "[i.sku for i in upstream.basket.items if i.qty > 0]",
                            "total": "sum(i.qty for i in upstream.basket.items)"
                            " * upstream.basket.unit_price",
                            "customer": "upper(trigger.customer)",
                            "region": "context.region",
                            "size": "'big' if len(upstream.basket.items) > 2 else 'small'",
                            "version": 2,
                        }
                    },
                },
                {
                    "id": "use",
                    "type": "code",
                    "config": {"source": "result = upstream['summary']['total'] + 1"},
                },
            ],
            context={"region": "eu"},
        ),
    )

    run_id = await start(flowyard, "transform-basket", {"customer": "acme"})
    run = await finished_run(flowyard, run_id, eventually)

    assert run.status == SUCCEEDED, (run.error, status_names(run))
    summary = task(run, "summary")
    assert summary.type == "transform" and summary.status == run_pb2.TASK_STATUS_SUCCEEDED
    assert output(run, "summary") == {
        "skus": ["a", "c"],
        "total": 21,
        "customer": "ACME",
        "region": "eu",
        "size": "big",
        "version": 2,
    }
    assert output(run, "use") == 22


# --- query -----------------------------------------------------------------------------


def failed_orders_db(path: Path, failed: int, ok: int) -> Path:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, status TEXT)")
        db.executemany(
            "INSERT INTO orders (status) VALUES (?)",
            [("failed",)] * failed + [("ok",)] * ok,
        )
    return path


def sqlite_check(path: Path, warning: int, failure: int) -> dict[str, Any]:
    return {
        "id": "check",
        "type": "query",
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


async def test_query_over_the_warning_threshold_succeeds_with_a_warning(
    flowyard: RunningFlowyard, tmp_path: Path, eventually: Eventually
) -> None:
    db = failed_orders_db(tmp_path / "orders.db", failed=12, ok=30)
    await apply(flowyard, workflow("query-warn", [sqlite_check(db, warning=10, failure=20)]))

    run = await finished_run(flowyard, await start(flowyard, "query-warn"), eventually)

    assert run.status == SUCCEEDED, (run.error, status_names(run))
    check = task(run, "check")
    assert check.status == run_pb2.TASK_STATUS_SUCCEEDED
    assert output(run, "check") == {
        "value": 12,
        "warning_threshold": 10,
        "failure_threshold": 20,
        "comparison": "above",
        "level": "warning",
    }
    [warning] = check.warnings
    assert "12" in warning and "warning threshold 10" in warning
    assert list(run.warnings) == [f"check: {warning}"]


async def test_query_over_the_failure_threshold_fails_the_task(
    flowyard: RunningFlowyard, tmp_path: Path, eventually: Eventually
) -> None:
    db = failed_orders_db(tmp_path / "orders.db", failed=12, ok=30)
    await apply(flowyard, workflow("query-fail", [sqlite_check(db, warning=5, failure=11)]))

    run = await finished_run(flowyard, await start(flowyard, "query-fail"), eventually)

    assert run.status == FAILED
    check = task(run, "check")
    assert check.status == run_pb2.TASK_STATUS_FAILED
    assert check.error.code == "threshold.failure"
    assert "12" in check.error.message and "failure threshold 11" in check.error.message
    assert run.error.code == "threshold.failure" and run.failed_node_id == "check"
    # the value that crossed the threshold is on record with the attempt
    [attempt] = check.attempts
    seen = codec.value_to_json(attempt.output)
    assert isinstance(seen, dict) and seen["value"] == 12 and seen["level"] == "failure"


async def fill_orders(settings: Settings, collection: str) -> None:
    """7 failed orders worth 10, 20, ... 70 (280 in all) and 3 good ones."""
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(settings.mongo_url)
    try:
        await mongo[settings.mongo_db][collection].insert_many(
            [{"status": "failed", "amount": 10 * n} for n in range(1, 8)]
            + [{"status": "ok", "amount": 1} for _ in range(3)]
        )
    finally:
        await mongo.close()


def mongo_source(settings: Settings, collection: str, **query: Any) -> dict[str, Any]:
    return {
        "kind": "mongodb",
        "connection": settings.mongo_url,
        "database": settings.mongo_db,
        "collection": collection,
        **query,
    }


async def test_query_counts_the_documents_of_a_mongodb_collection(
    flowyard: RunningFlowyard, settings: Settings, eventually: Eventually
) -> None:
    await fill_orders(settings, "e2e_orders")
    count = {
        "id": "failed_count",
        "type": "query",
        "config": {
            "source": mongo_source(settings, "e2e_orders", filter={"status": "failed"}),
            "warning_threshold": 5,
            "failure_threshold": 10,
        },
    }
    await apply(flowyard, workflow("query-mongo-count", [count]))

    run = await finished_run(flowyard, await start(flowyard, "query-mongo-count"), eventually)

    assert run.status == SUCCEEDED, (run.error, status_names(run))
    assert output(run, "failed_count")["value"] == 7
    assert output(run, "failed_count")["level"] == "warning"
    [warning] = task(run, "failed_count").warnings
    assert "7" in warning and "warning threshold 5" in warning
    assert list(run.warnings) == [f"failed_count: {warning}"]


async def test_query_aggregates_a_mongodb_collection_with_a_pipeline(
    flowyard: RunningFlowyard, settings: Settings, eventually: Eventually
) -> None:
    await fill_orders(settings, "e2e_orders")
    pipeline = [
        {"$match": {"status": "failed"}},
        {"$group": {"_id": None, "total": {"$sum": "$amount"}}},
    ]
    amount = {
        "id": "failed_amount",
        "type": "query",
        "config": {
            "source": mongo_source(settings, "e2e_orders", pipeline=pipeline, field="total"),
            "warning_threshold": 500,
            "failure_threshold": 1000,
        },
    }
    # Registering must work although the pipeline's keys start with '$'.
    await apply(flowyard, workflow("query-mongo-sum", [amount]))

    run = await finished_run(flowyard, await start(flowyard, "query-mongo-sum"), eventually)

    assert run.status == SUCCEEDED, (run.error, status_names(run))
    assert output(run, "failed_amount")["value"] == 280
    assert output(run, "failed_amount")["level"] == "ok"
    assert not task(run, "failed_amount").warnings and not run.warnings


# --- run_workflow ----------------------------------------------------------------------


CHILD_SUM = workflow(
    "child-sum",
    [{"id": "add", "type": "code", "config": {"source": "result = trigger['a'] + trigger['b']"}}],
)
CHILD_FAIL = workflow(
    "child-fail",
    [
        {
            "id": "explode",
            "type": "code",
            "config": {"source": "raise ValueError(f'bad input {trigger}')"},
        }
    ],
)


def parent(child: str) -> dict[str, Any]:
    return workflow(
        f"parent-of-{child}",
        [
            {"id": "prep", "type": "code", "config": {"source": "result = {'a': trigger['x']}"}},
            {
                "id": "call",
                "type": "run_workflow",
                "config": {
                    "workflow": child,
                    "wait": True,
                    "input": {"a": "{{ upstream.prep.a }}", "b": "{{ context.b }}"},
                },
            },
            {
                "id": "after",
                "type": "code",
                "config": {"source": "result = upstream['call']['output']['add'] * 2"},
            },
        ],
        context={"b": 10},
    )


async def test_run_workflow_waits_for_the_child_and_takes_its_output(
    flowyard: RunningFlowyard, eventually: Eventually
) -> None:
    await apply(flowyard, CHILD_SUM)
    await apply(flowyard, parent("child-sum"))

    run_id = await start(flowyard, "parent-of-child-sum", {"x": 5})
    run = await finished_run(flowyard, run_id, eventually)

    assert run.status == SUCCEEDED, (run.error, status_names(run))
    call = task(run, "call")
    child_id = call.child_run_id
    assert child_id
    assert output(run, "call") == {
        "run_id": child_id,
        "status": "succeeded",
        "output": {"add": 15},
    }
    assert output(run, "after") == 30

    child = await get_run(flowyard, child_id)
    assert child.status == SUCCEEDED and child.workflow_name == "child-sum"
    assert child.trigger.kind == "workflow"
    assert child.parent_run_id == run_id and child.parent_node_id == "call"
    assert codec.value_to_json(child.trigger.data) == {"a": 5, "b": 10}
    # the parent task waited: it finished only after the child did
    assert call.finished_at.ToDatetime() >= child.finished_at.ToDatetime()
    assert call.started_at.ToDatetime() <= child.started_at.ToDatetime()


async def test_a_failing_child_run_fails_the_parent_task(
    flowyard: RunningFlowyard, eventually: Eventually
) -> None:
    await apply(flowyard, CHILD_FAIL)
    await apply(flowyard, parent("child-fail"))

    run_id = await start(flowyard, "parent-of-child-fail", {"x": 5})
    run = await finished_run(flowyard, run_id, eventually)

    assert run.status == FAILED
    call = task(run, "call")
    assert call.status == run_pb2.TASK_STATUS_FAILED
    assert call.error.code == "workflow.child_failed"
    assert call.child_run_id in call.error.message and "bad input" in call.error.message
    assert run.error.code == "workflow.child_failed" and run.failed_node_id == "call"
    assert task(run, "after").status == run_pb2.TASK_STATUS_PENDING

    child = await get_run(flowyard, call.child_run_id)
    assert child.status == FAILED and child.parent_run_id == run_id
    assert child.error.code == "code.exception"
    assert child.finished_at.ToDatetime() - call.finished_at.ToDatetime() <= timedelta(0)
