"""The slack node: one message to a public or private channel via chat.postMessage.

The bot token is deployment configuration (:class:`SlackSettings`), never node config, so
it is not stored in definitions or run records. Only ``#channels`` are allowed: a workflow
messaging people directly is a decision for whoever runs Flowyard, not for each author.
Slack answers most failures with HTTP 200 and ``{"ok": false, "error": ...}``; that error
string is what the task error names, since it is what Slack's documentation lists.
"""

from __future__ import annotations

import asyncio
from typing import cast

import httpx
from flowyard.config import SlackSettings
from flowyard.domain.json import JsonObject, JsonValue
from flowyard.domain.node_config import config_problems

from flowyard_executor.nodes.outcome import NodeOutcome, failure, invalid_config

DEFAULT_TIMEOUT_SECONDS = 30.0


class SlackPoster:
    def __init__(self, settings: SlackSettings, client: httpx.AsyncClient) -> None:
        self._settings = settings
        self._client = client

    async def post(
        self, config: JsonObject, *, timeout_seconds: float | None = None
    ) -> NodeOutcome:
        """Post ``config`` (channel, text, optional blocks) to Slack."""
        channel = config.get("channel")
        if isinstance(channel, str) and not channel.startswith("#"):
            return failure(
                "slack.invalid_channel",
                f"channel {channel!r} must start with '#' (direct messages are not allowed)",
            )
        problems = config_problems("slack", config, rendered=True)
        if problems:
            return invalid_config(problems)
        if not self._settings.bot_token:
            return failure(
                "slack.not_configured",
                "no Slack bot token is configured (FLOWYARD_SLACK_BOT_TOKEN)",
            )
        payload: JsonObject = {"channel": channel, "text": config["text"]}
        if config.get("blocks") is not None:
            payload["blocks"] = config["blocks"]
        url = f"{self._settings.api_url.rstrip('/')}/chat.postMessage"
        limit = timeout_seconds or DEFAULT_TIMEOUT_SECONDS
        try:
            async with asyncio.timeout(limit):
                response = await self._client.post(
                    url,
                    json=payload,
                    headers={"Authorization": f"Bearer {self._settings.bot_token}"},
                    timeout=limit,
                )
        except (TimeoutError, httpx.TimeoutException):
            return failure("slack.timeout", f"Slack ({url}) did not answer within {limit:g} s")
        except httpx.TransportError as exc:
            return failure(
                "slack.connection", f"cannot reach Slack at {url}: {type(exc).__name__} {exc}"
            )
        return _outcome(response, str(channel))


def _outcome(response: httpx.Response, channel: str) -> NodeOutcome:
    if response.status_code == 429:
        retry_after = response.headers.get("retry-after", "")
        wait = f"Retry-After: {retry_after} s" if retry_after else "no Retry-After header"
        return failure("slack.rate_limited", f"Slack rate-limited the message ({wait})")
    try:
        answer = cast(JsonValue, response.json())
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        return failure(
            "slack.api_error",
            f"Slack answered HTTP {response.status_code} without a JSON object: "
            f"{response.text[:200]}",
        )
    if answer.get("ok") is not True:
        return failure(
            "slack.api_error",
            f"Slack refused the message to {channel}: {answer.get('error', 'unknown error')}"
            f" (HTTP {response.status_code})",
        )
    warning = answer.get("warning")
    return NodeOutcome(
        output={"channel": answer.get("channel") or channel, "ts": answer.get("ts")},
        warnings=(f"Slack warned: {warning}",) if isinstance(warning, str) and warning else (),
    )
