"""The email node: one message through the configured SMTP server.

The server is deployment configuration (:class:`SmtpSettings`), not node config, so a
workflow can choose recipients and words but never relay through a server of its own.
A connection problem (``email.connection``) is told apart from the server refusing the
message (``email.delivery``): the first is worth retrying, the second usually is not. A
server that stops answering mid-way is ``email.timeout``: the message may or may not be out.
Recipients refused while others were accepted do not fail the task; they are warnings.
"""

from __future__ import annotations

import asyncio
from email.message import EmailMessage
from email.utils import make_msgid

import aiosmtplib
from flowyard.config import SmtpSettings
from flowyard.domain.json import JsonObject, JsonValue
from flowyard.domain.node_config import config_problems

from flowyard_executor.nodes.outcome import NodeOutcome, failure, invalid_config

DEFAULT_TIMEOUT_SECONDS = 60.0


def _addresses(value: JsonValue) -> list[str]:
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    return [str(item) for item in items] if isinstance(items, list) else []


class EmailSender:
    def __init__(self, settings: SmtpSettings) -> None:
        self._settings = settings

    def _message(self, config: JsonObject, to: list[str], cc: list[str]) -> EmailMessage:
        message = EmailMessage()
        domain = self._settings.sender.rpartition("@")[2] or "localhost"
        message["Message-ID"] = make_msgid(domain=domain)
        message["From"] = self._settings.sender
        message["To"] = ", ".join(to)
        if cc:
            message["Cc"] = ", ".join(cc)
        message["Subject"] = str(config["subject"])
        message.set_content(str(config["body"]))
        html = config.get("html")
        if isinstance(html, str):
            message.add_alternative(html, subtype="html")
        return message

    async def send(
        self, config: JsonObject, *, timeout_seconds: float | None = None
    ) -> NodeOutcome:
        """Send the message ``config`` describes (to, cc, subject, body, html)."""
        problems = config_problems("email", config, rendered=True)
        if problems:
            return invalid_config(problems)
        to, cc = _addresses(config.get("to")), _addresses(config.get("cc"))
        try:
            message = self._message(config, to, cc)
        except ValueError as exc:
            return invalid_config([f"cannot build the message: {exc}"])
        settings = self._settings
        server = f"{settings.host}:{settings.port}"
        recipients = to + [a for a in cc if a not in to]
        limit = timeout_seconds or DEFAULT_TIMEOUT_SECONDS
        try:
            # aiosmtplib's timeout bounds each step; the node's timeout bounds them all
            async with asyncio.timeout(limit):
                refused, _reply = await aiosmtplib.send(
                    message,
                    sender=settings.sender,
                    recipients=recipients,
                    hostname=settings.host,
                    port=settings.port,
                    username=settings.username or None,
                    password=settings.password or None,
                    start_tls=settings.starttls,
                    timeout=limit,
                )
        except aiosmtplib.SMTPConnectError as exc:
            return failure("email.connection", f"cannot connect to the SMTP server {server}: {exc}")
        except aiosmtplib.SMTPRecipientsRefused as exc:
            refusals = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in exc.recipients)
            return failure("email.delivery", f"{server} refused every recipient: {refusals}")
        except aiosmtplib.SMTPResponseException as exc:
            return failure(
                "email.delivery", f"{server} refused the message: {exc.code} {exc.message}"
            )
        except TimeoutError:  # aiosmtplib.SMTPTimeoutError is one too
            return failure("email.timeout", f"{server} did not take the message within {limit:g} s")
        except (aiosmtplib.SMTPException, OSError) as exc:
            return failure(
                "email.connection", f"the connection to {server} failed: {type(exc).__name__} {exc}"
            )
        accepted: list[JsonValue] = [a for a in recipients if a not in refused]
        warnings = tuple(
            f"{server} refused {address}: {reply.code} {reply.message}"
            for address, reply in refused.items()
        )
        return NodeOutcome(
            output={"accepted": accepted, "message_id": str(message["Message-ID"])},
            warnings=warnings,
        )
