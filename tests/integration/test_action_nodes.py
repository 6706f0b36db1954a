"""The action node handlers against real servers on 127.0.0.1: an HTTP server in a thread
(for http, slack and the query's http source), aiosmtpd for email, a SQLite file and the
stack's MongoDB-compatible server for the query node."""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import json
import socket
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from aiosmtpd.controller import Controller
from flowyard.config import Settings, SlackSettings, SmtpSettings
from flowyard.domain.json import JsonObject
from flowyard_executor.nodes import (
    EmailSender,
    NodeOutcome,
    QueryChecker,
    SlackPoster,
    run_http,
)
from pymongo import AsyncMongoClient

pytestmark = pytest.mark.integration

Reply = tuple[int, dict[str, str], bytes]


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class LoopbackServer:
    """A real HTTP server: ``routes`` maps a path (without query) to a reply function."""

    routes: dict[str, Callable[[Seen], Reply]] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    port: int = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def json(self, path: str, value: object, status: int = 200, **headers: str) -> None:
        body = json.dumps(value).encode()
        reply = (status, {"Content-Type": "application/json", **headers}, body)
        self.routes[path] = lambda _seen: reply


def _handler(loopback: LoopbackServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            seen = Seen(
                self.command,
                self.path,
                {k.lower(): v for k, v in self.headers.items()},
                self.rfile.read(length),
            )
            loopback.seen.append(seen)
            route = loopback.routes.get(self.path.split("?", 1)[0])
            status, headers, body = route(seen) if route else (404, {}, b"no route")
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            if "X-Close-Delimited" not in headers:  # else the body ends when the socket closes
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            # the timeout and size-cap tests hang up before reading everything
            with contextlib.suppress(ConnectionError):
                self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_DELETE = _handle

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    loopback = LoopbackServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(loopback))
    httpd.daemon_threads = True
    loopback.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield loopback
    loopback.release.set()
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as value:
        yield value


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def error_code(outcome: NodeOutcome) -> str | None:
    return outcome.error.code if outcome.error else None


# --- http ---------------------------------------------------------------------------


async def test_http_success_parses_json_and_sends_what_the_config_says(
    server: LoopbackServer, client: httpx.AsyncClient
) -> None:
    server.json("/orders", {"id": 7, "items": [1, 2]}, status=201, **{"X-Request-Id": "r1"})
    outcome = await run_http(
        {
            "url": server.url("/orders"),
            "method": "post",
            "headers": {"X-Token": "t"},
            "query": {"dry": "yes"},
            "json": {"sku": "a"},
        },
        client,
        5,
    )
    assert outcome.error is None
    output = cast(JsonObject, outcome.output)
    assert output["status"] == 201
    assert output["body"] == {"id": 7, "items": [1, 2]}
    headers = cast(JsonObject, output["headers"])
    assert headers["x-request-id"] == "r1"
    assert all(name == name.lower() for name in headers)
    (seen,) = server.seen
    assert (seen.method, seen.path) == ("POST", "/orders?dry=yes")
    assert seen.headers["x-token"] == "t"
    assert json.loads(seen.body) == {"sku": "a"}


async def test_http_text_body_and_expected_status(
    server: LoopbackServer, client: httpx.AsyncClient
) -> None:
    server.routes["/text"] = lambda _s: (404, {"Content-Type": "text/plain"}, b"gone")
    outcome = await run_http({"url": server.url("/text"), "expected_status": [404]}, client, None)
    assert outcome.error is None
    assert cast(JsonObject, outcome.output)["body"] == "gone"


async def test_http_unexpected_status_fails_with_the_response_kept(
    server: LoopbackServer, client: httpx.AsyncClient
) -> None:
    server.routes["/boom"] = lambda _s: (503, {"Content-Type": "text/plain"}, b"x" * 2000)
    outcome = await run_http({"url": server.url("/boom")}, client, 5)
    assert outcome.error is not None
    assert outcome.error.code == "http.status"
    assert "503" in outcome.error.message
    assert "x" * 500 in outcome.error.message
    assert "x" * 501 not in outcome.error.message
    assert cast(JsonObject, outcome.output)["status"] == 503


async def test_http_unreachable_host_names_host_and_port(client: httpx.AsyncClient) -> None:
    port = closed_port()
    outcome = await run_http({"url": f"http://127.0.0.1:{port}/x"}, client, 5)
    assert outcome.error is not None
    assert outcome.error.code == "http.connection"
    assert f"127.0.0.1:{port}" in outcome.error.message
    assert outcome.output is None


async def test_http_timeout_the_smaller_limit_wins(
    server: LoopbackServer, client: httpx.AsyncClient
) -> None:
    def slow(_seen: Seen) -> Reply:
        server.release.wait(10)
        return 200, {}, b"late"

    server.routes["/slow"] = slow
    outcome = await run_http({"url": server.url("/slow"), "timeout_seconds": 0.3}, client, 60)
    assert error_code(outcome) == "http.timeout"
    outcome = await run_http({"url": server.url("/slow")}, client, 0.3)
    assert error_code(outcome) == "http.timeout"
    assert outcome.error is not None
    assert "0.3 s" in outcome.error.message


async def test_http_response_too_large(server: LoopbackServer, client: httpx.AsyncClient) -> None:
    big = b"y" * 5000
    server.routes["/declared"] = lambda _s: (200, {}, big)
    server.routes["/undeclared"] = lambda _s: (200, {"X-Close-Delimited": "1"}, big)
    for path in ("/declared", "/undeclared"):
        outcome = await run_http({"url": server.url(path)}, client, 5, max_response_bytes=1000)
        assert error_code(outcome) == "http.response_too_large", path
    outcome = await run_http({"url": server.url("/declared")}, client, 5)
    assert outcome.error is None


async def test_http_invalid_rendered_config(client: httpx.AsyncClient) -> None:
    outcome = await run_http({"url": "{{ trigger.url }}"}, client, 5)
    assert error_code(outcome) == "node.invalid"


# --- email --------------------------------------------------------------------------


class Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[list[str], EmailMessage]] = []

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if address.startswith("nobody@"):
            return "550 5.1.1 no such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        if message["Subject"] == "stall":
            await asyncio.sleep(5)  # the server hangs mid-conversation
        self.messages.append((list(envelope.rcpt_tos), message))
        return "250 Message accepted for delivery"


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, SmtpSettings]]:
    inbox = Inbox()
    port = closed_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port, ready_timeout=10)
    controller.start()
    yield inbox, SmtpSettings(host="127.0.0.1", port=port, sender="flowyard@example.com")
    controller.stop()


async def test_email_is_delivered(smtp: tuple[Inbox, SmtpSettings]) -> None:
    inbox, settings = smtp
    outcome = await EmailSender(settings).send(
        {
            "to": ["ops@example.com", "nobody@example.com"],
            "cc": "lead@example.com",
            "subject": "Nightly load failed",
            "body": "Step extract failed.",
            "html": "<p>Step <b>extract</b> failed.</p>",
        },
        timeout_seconds=10,
    )
    assert outcome.error is None
    output = cast(JsonObject, outcome.output)
    assert output["accepted"] == ["ops@example.com", "lead@example.com"]
    assert outcome.warnings and "nobody@example.com" in outcome.warnings[0]
    ((recipients, message),) = inbox.messages
    assert recipients == ["ops@example.com", "lead@example.com"]
    assert message["Subject"] == "Nightly load failed"
    assert message["From"] == "flowyard@example.com"
    assert message["Cc"] == "lead@example.com"
    assert message["Message-ID"] == output["message_id"]
    plain = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert plain is not None and plain.get_content().strip() == "Step extract failed."
    assert html is not None and "<b>extract</b>" in html.get_content()


async def test_email_every_recipient_refused_is_a_delivery_error(
    smtp: tuple[Inbox, SmtpSettings],
) -> None:
    _inbox, settings = smtp
    config: JsonObject = {"to": "nobody@example.com", "subject": "s", "body": "b"}
    outcome = await EmailSender(settings).send(config, timeout_seconds=10)
    assert outcome.error is not None
    assert outcome.error.code == "email.delivery"
    assert "no such user here" in outcome.error.message


async def test_email_server_that_stops_answering(smtp: tuple[Inbox, SmtpSettings]) -> None:
    inbox, settings = smtp
    config: JsonObject = {"to": "ops@example.com", "subject": "stall", "body": "b"}
    outcome = await EmailSender(settings).send(config, timeout_seconds=0.3)
    assert error_code(outcome) == "email.timeout"
    assert inbox.messages == []


async def test_email_connection_refused() -> None:
    settings = SmtpSettings(host="127.0.0.1", port=closed_port())
    config: JsonObject = {"to": "ops@example.com", "subject": "s", "body": "b"}
    outcome = await EmailSender(settings).send(config, timeout_seconds=5)
    assert outcome.error is not None
    assert outcome.error.code == "email.connection"
    assert f"127.0.0.1:{settings.port}" in outcome.error.message


# --- slack --------------------------------------------------------------------------


def slack(server: LoopbackServer, client: httpx.AsyncClient, token: str = "xoxb-t") -> SlackPoster:
    return SlackPoster(SlackSettings(api_url=server.url("/api"), bot_token=token), client)


async def test_slack_posts_to_a_channel(server: LoopbackServer, client: httpx.AsyncClient) -> None:
    server.json("/api/chat.postMessage", {"ok": True, "channel": "C024BE91L", "ts": "1.2"})
    blocks: JsonObject = {"type": "section", "text": {"type": "mrkdwn", "text": "*hi*"}}
    outcome = await slack(server, client).post(
        {"channel": "#ops", "text": "hi", "blocks": [blocks]}
    )
    assert outcome.error is None
    assert outcome.output == {"channel": "C024BE91L", "ts": "1.2"}
    (seen,) = server.seen
    assert seen.method == "POST"
    assert seen.headers["authorization"] == "Bearer xoxb-t"
    assert json.loads(seen.body) == {"channel": "#ops", "text": "hi", "blocks": [blocks]}


async def test_slack_api_error_and_rate_limit(
    server: LoopbackServer, client: httpx.AsyncClient
) -> None:
    server.json("/api/chat.postMessage", {"ok": False, "error": "channel_not_found"})
    outcome = await slack(server, client).post({"channel": "#nope", "text": "hi"})
    assert outcome.error is not None
    assert outcome.error.code == "slack.api_error"
    assert "channel_not_found" in outcome.error.message
    server.json("/api/chat.postMessage", {"ok": False}, status=429, **{"Retry-After": "30"})
    outcome = await slack(server, client).post({"channel": "#ops", "text": "hi"})
    assert outcome.error is not None
    assert outcome.error.code == "slack.rate_limited"
    assert "Retry-After: 30 s" in outcome.error.message


async def test_slack_refuses_direct_messages_and_needs_a_token(
    server: LoopbackServer, client: httpx.AsyncClient
) -> None:
    outcome = await slack(server, client).post({"channel": "@alice", "text": "hi"})
    assert error_code(outcome) == "slack.invalid_channel"
    outcome = await slack(server, client, token="").post({"channel": "#ops", "text": "hi"})
    assert error_code(outcome) == "slack.not_configured"
    assert server.seen == []


# --- query --------------------------------------------------------------------------


async def check(
    source: dict[str, Any], client: httpx.AsyncClient, **thresholds: Any
) -> NodeOutcome:
    config: dict[str, Any] = {"source": source, **thresholds}
    return await QueryChecker(server_selection_ms=500).check(config, client)


async def assert_levels(source: dict[str, Any], value: int, client: httpx.AsyncClient) -> None:
    """The source reads ``value``: thresholds around it give ok, warning and failure."""
    ok = await check(source, client, warning_threshold=value, failure_threshold=value + 5)
    assert ok.error is None and ok.warnings == ()
    assert cast(JsonObject, ok.output)["level"] == "ok"
    assert cast(JsonObject, ok.output)["value"] == value

    warning = await check(source, client, warning_threshold=value - 2)
    assert warning.error is None
    assert warning.warnings == (f"query value {value} is above the warning threshold {value - 2}",)
    assert cast(JsonObject, warning.output)["level"] == "warning"

    failure = await check(source, client, warning_threshold=value - 2, failure_threshold=value - 1)
    assert failure.error is not None
    assert failure.error.code == "threshold.failure"
    assert failure.error.message == (
        f"query value {value} is above the failure threshold {value - 1}"
    )
    assert cast(JsonObject, failure.output)["level"] == "failure"

    below = await check(source, client, comparison="below", failure_threshold=value + 1)
    assert error_code(below) == "threshold.failure"


@pytest.fixture
def sqlite_file(tmp_path: Path) -> str:
    path = tmp_path / "events.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE events (level TEXT)")
        db.executemany("INSERT INTO events VALUES (?)", [("error",)] * 12 + [("info",)] * 3)
    return str(path)


async def test_query_sqlite_levels(sqlite_file: str, client: httpx.AsyncClient) -> None:
    source: dict[str, Any] = {
        "kind": "sqlite",
        "path": sqlite_file,
        "sql": "SELECT count(*) FROM events WHERE level = 'error'",
    }
    await assert_levels(source, 12, client)


async def test_query_sqlite_stays_read_only(sqlite_file: str, client: httpx.AsyncClient) -> None:
    sneaky = "WITH x AS (SELECT 1) DELETE FROM events"
    outcome = await check({"kind": "sqlite", "path": sqlite_file, "sql": sneaky}, client)
    assert error_code(outcome) == "query.error"
    delete = {"kind": "sqlite", "path": sqlite_file, "sql": "DELETE FROM events"}
    assert error_code(await check(delete, client)) == "node.invalid"
    with sqlite3.connect(sqlite_file) as db:
        assert db.execute("SELECT count(*) FROM events").fetchone() == (15,)
    text = {"kind": "sqlite", "path": sqlite_file, "sql": "SELECT level FROM events"}
    assert error_code(await check(text, client)) == "query.not_a_number"
    missing = {"kind": "sqlite", "path": sqlite_file + ".missing", "sql": "SELECT 1"}
    assert error_code(await check(missing, client)) == "query.connection"


async def test_query_http_levels(server: LoopbackServer, client: httpx.AsyncClient) -> None:
    server.json("/stats", {"data": {"count": 9, "name": "x"}})
    source: dict[str, Any] = {
        "kind": "http",
        "url": server.url("/stats"),
        "value_path": "data.count",
    }
    await assert_levels(source, 9, client)
    named = {**source, "value_path": "data.name"}
    assert error_code(await check(named, client)) == "query.not_a_number"
    down = {**source, "url": f"http://127.0.0.1:{closed_port()}/stats"}
    assert error_code(await check(down, client)) == "query.connection"


async def test_query_mongodb_levels(settings: Settings, client: httpx.AsyncClient) -> None:
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(settings.mongo_url)
    try:
        orders = mongo[settings.mongo_db]["orders"]
        await orders.insert_many(
            [{"status": "failed"} for _ in range(7)] + [{"status": "ok"} for _ in range(4)]
        )
        base: dict[str, Any] = {
            "kind": "mongodb",
            "connection": settings.mongo_url,
            "database": settings.mongo_db,
            "collection": "orders",
        }
        await assert_levels({**base, "filter": {"status": "failed"}}, 7, client)
        pipeline: dict[str, Any] = {
            **base,
            "pipeline": [{"$match": {"status": "ok"}}, {"$count": "n"}],
            "field": "n",
        }
        await assert_levels(pipeline, 4, client)
        nothing = {
            **base,
            "pipeline": [{"$match": {"status": "none"}}, {"$count": "n"}],
            "field": "n",
        }
        empty = await check(nothing, client)
        assert empty.error is None and cast(JsonObject, empty.output)["value"] == 0
        wrong_field = {**pipeline, "field": "missing"}
        assert error_code(await check(wrong_field, client)) == "query.not_a_number"
    finally:
        await mongo.drop_database(settings.mongo_db)
        await mongo.close()
    unreachable = {
        "kind": "mongodb",
        "connection": f"mongodb://127.0.0.1:{closed_port()}",
        "database": "d",
        "collection": "c",
    }
    outcome = await check(unreachable, client)
    assert error_code(outcome) == "query.connection"
