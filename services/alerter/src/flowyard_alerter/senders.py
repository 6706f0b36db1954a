"""Delivering one alert to one recipient: email over SMTP, Slack via ``chat.postMessage``.

Each attempt ends in a :class:`Outcome`: delivered, or an error that is either worth
retrying (the server is unreachable, slow, busy: connection errors, timeouts, SMTP 4xx,
HTTP 429/5xx, Slack ``ratelimited``) or permanent (SMTP 5xx, Slack ``ok: false`` with any
other error such as ``channel_not_found`` or ``invalid_auth``): retrying those only
delays the dead letter.

The Message-ID of an alert email is derived from the alert's dedup key, so the rare
duplicate a crash between "sent" and "recorded" can cause is recognisable as one.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any, cast

import aiosmtplib
import httpx
from flowyard.config import SmtpSettings


@dataclass(frozen=True)
class Outcome:
    delivered: bool
    error: str = ""
    permanent: bool = False

    @classmethod
    def ok(cls) -> Outcome:
        return cls(True)

    @classmethod
    def retry(cls, error: str) -> Outcome:
        return cls(False, error, permanent=False)

    @classmethod
    def refuse(cls, error: str) -> Outcome:
        return cls(False, error, permanent=True)


@dataclass(frozen=True)
class SlackTarget:
    api_url: str
    bot_token: str
    workspace: str = ""


def message_id(alert_id: str, sender: str) -> str:
    domain = sender.rpartition("@")[2] or "localhost"
    digest = hashlib.sha256(alert_id.encode()).hexdigest()[:32]
    return f"<alert.{digest}@{domain}>"


def email_message(
    settings: SmtpSettings, alert_id: str, to: str, subject: str, body: str
) -> EmailMessage:
    message = EmailMessage()
    message["Message-ID"] = message_id(alert_id, settings.sender)
    message["From"] = settings.sender
    message["To"] = to
    message["Subject"] = subject
    message["X-Flowyard-Alert"] = alert_id
    message.set_content(body)
    return message


async def send_email(
    settings: SmtpSettings,
    alert_id: str,
    to: str,
    subject: str,
    body: str,
    *,
    limit_seconds: float,
) -> Outcome:
    server = f"{settings.host}:{settings.port}"
    try:
        message = email_message(settings, alert_id, to, subject, body)
    except ValueError as exc:
        return Outcome.refuse(f"cannot build the message: {exc}")
    try:
        async with asyncio.timeout(limit_seconds):
            refused, _reply = await aiosmtplib.send(
                message,
                sender=settings.sender,
                recipients=[to],
                hostname=settings.host,
                port=settings.port,
                username=settings.username or None,
                password=settings.password or None,
                start_tls=settings.starttls,
                timeout=limit_seconds,
            )
    except aiosmtplib.SMTPRecipientsRefused as exc:
        return _smtp_refusal(server, exc.recipients[0].code if exc.recipients else 550, str(exc))
    except aiosmtplib.SMTPResponseException as exc:
        return _smtp_refusal(server, exc.code, exc.message)
    except TimeoutError:
        return Outcome.retry(
            f"SMTP server {server} did not take the message within {limit_seconds:g} s"
        )
    except (aiosmtplib.SMTPException, OSError) as exc:
        return Outcome.retry(f"cannot deliver through SMTP server {server}: {exc}")
    if refused:
        reply = next(iter(refused.values()))
        return _smtp_refusal(server, reply.code, reply.message)
    return Outcome.ok()


def _smtp_refusal(server: str, code: int, message: str) -> Outcome:
    text = f"SMTP server {server} refused the message: {code} {message}".strip()
    return Outcome.retry(text) if 400 <= code < 500 else Outcome.refuse(text)


# Slack errors (``ok: false``) that are worth another try; every other one is permanent.
_SLACK_TRANSIENT = frozenset(
    {"ratelimited", "service_unavailable", "internal_error", "fatal_error", "request_timeout"}
)


async def post_slack(
    client: httpx.AsyncClient,
    target: SlackTarget,
    channel: str,
    text: str,
    *,
    limit_seconds: float,
) -> Outcome:
    if not target.bot_token:
        return Outcome.refuse(
            "no Slack bot token is configured (flowyard alert slack --token-stdin, "
            "or FLOWYARD_SLACK_BOT_TOKEN)"
        )
    url = f"{target.api_url.rstrip('/')}/chat.postMessage"
    payload = {"channel": channel, "text": text, "unfurl_links": False, "mrkdwn": True}
    try:
        async with asyncio.timeout(limit_seconds):
            response = await client.post(
                url,
                json=payload,
                headers={"Authorization": f"Bearer {target.bot_token}"},
                timeout=limit_seconds,
            )
    except (TimeoutError, httpx.TimeoutException):
        return Outcome.retry(f"Slack ({url}) did not answer within {limit_seconds:g} s")
    except httpx.TransportError as exc:
        return Outcome.retry(f"cannot reach Slack at {url}: {type(exc).__name__} {exc}")
    if response.status_code == 429:
        after = response.headers.get("retry-after", "")
        return Outcome.retry(
            "Slack rate-limited the message" + (f" (Retry-After: {after} s)" if after else "")
        )
    if response.status_code >= 500:
        return Outcome.retry(f"Slack answered HTTP {response.status_code}")
    try:
        answer = cast(Any, response.json())
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        return Outcome.retry(
            f"Slack answered HTTP {response.status_code} without a JSON object: "
            f"{response.text[:200]}"
        )
    if answer.get("ok") is not True:
        error = str(answer.get("error", "unknown error"))
        text = f"Slack refused the message to {channel}: {error}"
        return Outcome.retry(text) if error in _SLACK_TRANSIENT else Outcome.refuse(text)
    return Outcome.ok()
