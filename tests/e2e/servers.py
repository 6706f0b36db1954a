"""Loopback stand-ins for the outside world the action nodes talk to, for end-to-end tests.

Each is a real server on 127.0.0.1 that records what it received:

* :class:`HttpServer` - an HTTP server in a thread; routes map a path to a reply;
* :class:`FakeSlack` - that server answering ``POST /chat.postMessage`` like Slack's Web API,
  checking the bot token;
* :class:`SmtpSink` - an aiosmtpd SMTP server keeping every message;
* :func:`refused_port` - a port that is bound but not listening, so connecting is refused.

:class:`Outside` bundles them and points a :class:`Settings` at them.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from flowyard.config import Settings, SlackSettings, SmtpSettings

Reply = tuple[int, dict[str, str], bytes]

SLACK_TOKEN = "xoxb-e2e-test-token"
SLACK_CHANNEL_ID = "C0E2ETEST"
SMTP_SENDER = "flowyard-e2e@example.test"


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def json_reply(value: object, status: int = 200) -> Reply:
    return status, {"Content-Type": "application/json"}, json.dumps(value).encode()


class HttpServer:
    """A threaded HTTP server on 127.0.0.1; ``routes`` maps a path (no query) to a reply."""

    def __init__(self) -> None:
        self.routes: dict[str, Callable[[Request], Reply]] = {}
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def route(self, path: str, reply: Callable[[Request], Reply]) -> None:
        self.routes[path] = reply

    def received(self, path: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.path.split("?", 1)[0] == path]

    def _record(self, request: Request) -> Reply:
        with self._lock:
            self.requests.append(request)
        route = self.routes.get(request.path.split("?", 1)[0])
        return route(request) if route else json_reply({"error": "no route"}, 404)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def _handler(server: HttpServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            request = Request(
                self.command,
                self.path,
                {k.lower(): v for k, v in self.headers.items()},
                self.rfile.read(length) if length else b"",
            )
            status, headers, body = server._record(request)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

    return Handler


class FakeSlack(HttpServer):
    """Slack's ``chat.postMessage``: ``ok`` only with the right bot token, like Slack."""

    def __init__(self, token: str = SLACK_TOKEN) -> None:
        super().__init__()
        self.token = token
        self.route("/chat.postMessage", self._post_message)

    @property
    def api_url(self) -> str:
        return self.url("")

    def messages(self) -> list[Request]:
        return self.received("/chat.postMessage")

    def _post_message(self, request: Request) -> Reply:
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return json_reply({"ok": False, "error": "invalid_auth"})
        payload = request.json()
        if not isinstance(payload, dict) or not payload.get("channel"):
            return json_reply({"ok": False, "error": "channel_not_found"})
        return json_reply({"ok": True, "channel": SLACK_CHANNEL_ID, "ts": f"{time.time():.6f}"})


@dataclass(frozen=True)
class Mail:
    sender: str
    recipients: list[str]
    message: EmailMessage


class SmtpSink:
    """An SMTP server (aiosmtpd, in its own thread) that accepts and keeps every message."""

    def __init__(self) -> None:
        self.messages: list[Mail] = []
        self.port = free_port()
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        message = email.message_from_bytes(content, policy=email.policy.default)
        self.messages.append(
            Mail(
                str(envelope.mail_from),
                [str(r) for r in envelope.rcpt_tos],
                message,
            )
        )
        return "250 Message accepted for delivery"

    def __enter__(self) -> Self:
        self._controller.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._controller.stop()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """A port that is bound (nobody else gets it) but not listening: connections are refused."""
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        yield int(bound.getsockname()[1])


@dataclass
class Outside:
    http: HttpServer
    slack: FakeSlack
    smtp: SmtpSink
    closed_port: int

    def configure(self, settings: Settings) -> Settings:
        """``settings`` pointed at these servers, with short timer/heartbeat/lease periods."""
        return replace(
            settings,
            smtp=SmtpSettings(host="127.0.0.1", port=self.smtp.port, sender=SMTP_SENDER),
            slack=SlackSettings(api_url=self.slack.api_url, bot_token=self.slack.token),
            timer_poll_seconds=0.2,
            heartbeat_seconds=0.5,
            task_lease_seconds=3,
        )


@contextlib.contextmanager
def outside_world() -> Iterator[Outside]:
    with (
        HttpServer() as http,
        FakeSlack() as slack,
        SmtpSink() as smtp,
        refused_port() as closed_port,
    ):
        yield Outside(http, slack, smtp, closed_port)
