"""Local stand-ins for the outside systems the examples talk to, so `make run` needs no accounts.

This is a development aid, not part of Flowyard. The restock-check example sends an email,
posts to Slack and asks a supplier's HTTP API for stock; on a laptop there is no mail
server, Slack workspace or supplier, so this one process pretends to be all three, bound
to 127.0.0.1 only:

* an SMTP server (aiosmtpd) on FLOWYARD_DEV_SMTP_PORT (8025). It accepts every message and
  appends it to ``dev-mail.log`` as one JSON line: from, to, subject, body.
* an HTTP server on FLOWYARD_DEV_HTTP_PORT (8086) with
  - ``POST /slack/api/chat.postMessage``, in the shape of Slack's Web API: it needs
    ``Authorization: Bearer <token>`` (any non-empty token), a ``channel`` starting with
    '#' and a ``text`` (or ``blocks``); it answers HTTP 200 with ``{"ok": true, "channel",
    "ts", "message"}``, or ``{"ok": false, "error": ...}`` like Slack does (``not_authed``,
    ``channel_not_found``, ``no_text``, ``invalid_json``), and appends each message it
    accepts to ``dev-slack.log`` as a JSON line;
  - ``GET /supplier/stock/<sku>``, a demo supplier API: ``{"sku", "available",
    "unit_price"}``, where both numbers are derived from the SKU's bytes, so the same SKU
    always gives the same answer (``available`` = sum of the bytes % 200);
  - ``GET /health``: ``{"ok": true}``.

scripts/services.sh starts it (pid file ``dev-services.pid`` in the stack's state dir,
output in ``logs/dev-services.log``) and points the services at it by exporting
FLOWYARD_SMTP_HOST/PORT, FLOWYARD_SLACK_API_URL and FLOWYARD_SLACK_BOT_TOKEN, each only
when the user has not set it. Real deployments set FLOWYARD_SMTP_* and FLOWYARD_SLACK_*
to real servers (see libs/flowyard/src/flowyard/config.py) and never run this.

Usage: python scripts/stack/dev_services.py [--log-dir DIR]
(DIR defaults to $FLOWYARD_STATE_DIR/logs, as in scripts/stack/lib.sh.) SIGTERM or SIGINT
stops it cleanly.
"""

from __future__ import annotations

import argparse
import email
import email.policy
import json
import logging
import os
import re
import signal
import sys
import threading
import time
from datetime import UTC, datetime
from email.message import EmailMessage
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

HOST = "127.0.0.1"
MAX_BODY_BYTES = 1024 * 1024
SKU_PATH = re.compile(r"^/supplier/stock/([^/?#]+)$")

log = logging.getLogger("dev-services")


def default_log_dir() -> Path:
    """$FLOWYARD_STATE_DIR/logs, with the same defaults as scripts/stack/lib.sh."""
    state = os.environ.get("FLOWYARD_STATE_DIR")
    if not state:
        cache = os.environ.get("FLOWYARD_CACHE_DIR") or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "flowyard"
        )
        state = os.path.join(cache, "state")
    return Path(state) / "logs"


def port_from_env(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip() or str(default)
    try:
        port = int(raw)
    except ValueError:
        raise SystemExit(f"{name} must be a port number, got {raw!r}") from None
    if not 0 < port < 65536:
        raise SystemExit(f"{name} must be between 1 and 65535, got {port}")
    return port


class JsonLines:
    """Appends one JSON object per line to a file; safe to call from several threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps({"received_at": datetime.now(UTC).isoformat(), **record})
        with self._lock, self.path.open("a", encoding="utf-8") as file:
            file.write(line + "\n")


# --- SMTP --------------------------------------------------------------------------------


class MailHandler:
    """aiosmtpd handler: every message is accepted and written to the mail log."""

    def __init__(self, mailbox: JsonLines) -> None:
        self._mailbox = mailbox

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content or b""
        if isinstance(raw, str):
            raw = raw.encode("utf-8", errors="replace")
        message = email.message_from_bytes(raw, policy=email.policy.default)
        body = ""
        if isinstance(message, EmailMessage):  # always, with policy.default
            part = message.get_body(preferencelist=("plain", "html"))
            body = part.get_content() if isinstance(part, EmailMessage) else ""
        body = body.replace("\r\n", "\n")
        record = {
            "from": envelope.mail_from,
            "to": list(envelope.rcpt_tos),
            "subject": str(message.get("Subject", "")),
            "body": body,
        }
        self._mailbox.append(record)
        log.info("mail from %s to %s: %s", record["from"], record["to"], record["subject"])
        return "250 Message accepted for delivery"


# --- HTTP: Slack and the supplier ----------------------------------------------------------


def stock_of(sku: str) -> dict[str, Any]:
    """The demo supplier's answer for ``sku``: the same SKU always gives the same numbers."""
    total = sum(sku.encode("utf-8"))
    return {
        "sku": sku,
        "available": total % 200,
        "unit_price": round(2.5 + (total % 37) * 0.75, 2),
        "currency": "EUR",
    }


class DevHandler(BaseHTTPRequestHandler):
    server_version = "flowyard-dev-services/1"
    protocol_version = "HTTP/1.1"
    slack_log: JsonLines  # set on the subclass built by make_http_server

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)

    def _send_json(self, payload: dict[str, Any], status: int = HTTPStatus.OK) -> None:
        data = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _not_found(self) -> None:
        self._send_json({"error": f"no such endpoint: {self.command} {self.path}"}, 404)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/health":
            self._send_json({"ok": True})
            return
        match = SKU_PATH.match(path)
        if match is None:
            self._not_found()
            return
        self._send_json(stock_of(unquote(match.group(1))))

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self._send_json({"ok": False, "error": "request_too_large"}, 413)
            self.close_connection = True
            return
        raw = self.rfile.read(length) if length else b""
        if self.path.split("?", 1)[0] != "/slack/api/chat.postMessage":
            self._not_found()
            return
        self._post_message(raw)

    def _post_message(self, raw: bytes) -> None:
        # Like Slack: HTTP 200 with ok=false for every API-level problem.
        scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            self._send_json({"ok": False, "error": "not_authed"})
            return
        content_type = (self.headers.get("Content-Type") or "").split(";", 1)[0].strip()
        try:
            if content_type == "application/x-www-form-urlencoded":
                form = parse_qs(raw.decode("utf-8"))
                payload: Any = {key: values[-1] for key, values in form.items()}
            else:
                payload = json.loads(raw or b"{}")
        except (UnicodeDecodeError, ValueError):
            self._send_json({"ok": False, "error": "invalid_json"})
            return
        if not isinstance(payload, dict):
            self._send_json({"ok": False, "error": "invalid_json"})
            return
        channel, text, blocks = payload.get("channel"), payload.get("text"), payload.get("blocks")
        if not isinstance(channel, str) or not channel.startswith("#"):
            self._send_json({"ok": False, "error": "channel_not_found"})
            return
        if not text and not blocks:
            self._send_json({"ok": False, "error": "no_text"})
            return
        ts = f"{time.time():.6f}"
        self.slack_log.append({"channel": channel, "text": text, "blocks": blocks, "ts": ts})
        log.info("slack message to %s: %s", channel, text)
        message = {"type": "message", "text": text, "ts": ts, "bot_id": "BLOCALDEV"}
        self._send_json({"ok": True, "channel": channel, "ts": ts, "message": message})


def make_http_server(port: int, slack_log: JsonLines) -> ThreadingHTTPServer:
    handler = type("BoundDevHandler", (DevHandler,), {"slack_log": slack_log})
    server = ThreadingHTTPServer((HOST, port), handler)
    server.daemon_threads = True
    return server


# --- main --------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--log-dir", type=Path, default=None, help="where the mail and Slack logs go"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd logs every command
    log_dir: Path = args.log_dir or default_log_dir()
    log_dir.mkdir(parents=True, exist_ok=True)
    smtp_port = port_from_env("FLOWYARD_DEV_SMTP_PORT", 8025)
    http_port = port_from_env("FLOWYARD_DEV_HTTP_PORT", 8086)
    mailbox, slack_log = JsonLines(log_dir / "dev-mail.log"), JsonLines(log_dir / "dev-slack.log")

    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    smtp = Controller(MailHandler(mailbox), hostname=HOST, port=smtp_port)
    try:
        smtp.start()
    except Exception as exc:  # aiosmtpd wraps bind errors in its own types
        log.error("cannot start the SMTP server on %s:%s: %s", HOST, smtp_port, exc)
        return 1
    try:
        try:
            http = make_http_server(http_port, slack_log)
        except OSError as exc:
            log.error("cannot start the HTTP server on %s:%s: %s", HOST, http_port, exc)
            return 1
        worker = threading.Thread(target=http.serve_forever, name="http", daemon=True)
        worker.start()
        log.info(
            "SMTP on %s:%s (mail log %s); HTTP on %s:%s (Slack API at /slack/api, "
            "supplier at /supplier/stock/<sku>; Slack log %s)",
            HOST, smtp_port, mailbox.path, HOST, http_port, slack_log.path,
        )  # fmt: skip
        while not stop.wait(0.5):
            pass
        http.shutdown()
        http.server_close()
    finally:
        smtp.stop()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
