"""The http node: one request, its response as the task's output.

The caller's node timeout is a wall-clock limit on the whole exchange (httpx's own
timeouts only bound each connect or read), and the body is read in chunks up to
:data:`MAX_RESPONSE_BYTES` so a huge or endless response cannot exhaust the executor.
Errors name the host and port: "connection refused" alone does not say which of a
workflow's services was down.
"""

from __future__ import annotations

import asyncio
from typing import cast

import httpx
from flowyard.domain.json import JsonObject, JsonValue
from flowyard.domain.json import loads as strict_json
from flowyard.domain.node_config import config_problems
from flowyard.domain.run import TaskError

from flowyard_executor.nodes.outcome import NodeOutcome, failure, invalid_config

MAX_RESPONSE_BYTES = 1024 * 1024
STATUS_BODY_CHARS = 500


class _TooLarge(Exception):
    pass


def effective_timeout(*limits: object) -> float | None:
    """The smallest positive limit given, or None when there is none."""
    found = [
        float(limit)
        for limit in limits
        if isinstance(limit, int | float) and not isinstance(limit, bool) and limit > 0
    ]
    return min(found) if found else None


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


async def _read_capped(response: httpx.Response, limit: int) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _TooLarge(f"the response declares {declared} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise _TooLarge(f"the response exceeded {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _address(url: httpx.URL) -> str:
    port = url.port or (443 if url.scheme == "https" else 80)
    return f"{url.host}:{port}"


async def run_http(
    config: JsonObject,
    client: httpx.AsyncClient,
    timeout_seconds: float | None,
    *,
    max_response_bytes: int = MAX_RESPONSE_BYTES,
) -> NodeOutcome:
    """Send the request ``config`` describes; see the module docstring for the rules."""
    problems = config_problems("http", config, rendered=True)
    if problems:
        return invalid_config(problems)
    method = str(config.get("method") or "GET").upper()
    limit = effective_timeout(config.get("timeout_seconds"), timeout_seconds)
    try:
        request = client.build_request(
            method,
            str(config["url"]),
            headers=cast("dict[str, str] | None", config.get("headers")),
            params=cast("dict[str, str] | None", config.get("query")),
            json=config.get("json"),
            content=cast("str | None", config.get("body")),
            timeout=httpx.Timeout(limit) if limit is not None else httpx.USE_CLIENT_DEFAULT,
        )
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        return invalid_config([f"cannot build the request: {exc}"])
    target = f"{method} {request.url}"
    try:
        async with asyncio.timeout(limit):
            response = await client.send(request, stream=True)
            try:
                raw = await _read_capped(response, max_response_bytes)
            finally:
                await response.aclose()
    except (TimeoutError, httpx.TimeoutException):
        within = f"within {limit:g} s" if limit is not None else "within the client's timeout"
        return failure("http.timeout", f"{target} did not complete {within}")
    except httpx.UnsupportedProtocol as exc:
        return invalid_config([f"cannot send {target}: {exc}"])
    except httpx.ConnectError as exc:
        return failure(
            "http.connection", f"cannot connect to {_address(request.url)}: {exc or 'refused'}"
        )
    except httpx.TransportError as exc:
        return failure(
            "http.connection",
            f"the connection to {_address(request.url)} failed: {type(exc).__name__} {exc}",
        )
    except _TooLarge as exc:
        return failure(
            "http.response_too_large",
            f"{target}: {exc}; at most {max_response_bytes} bytes are kept",
        )
    return _outcome(config, target, response, raw)


def _outcome(config: JsonObject, target: str, response: httpx.Response, raw: bytes) -> NodeOutcome:
    text = raw.decode(response.charset_encoding or "utf-8", errors="replace")
    warnings: tuple[str, ...] = ()
    body: JsonValue = text
    if raw and _is_json(response.headers.get("content-type", "")):
        try:
            body = strict_json(text)  # NaN, Infinity and 1e999 are not JSON either
        except ValueError as exc:
            warnings = (f"the response says it is JSON but is not ({exc}); kept as text",)
    output: JsonValue = {
        "status": response.status_code,
        "headers": dict(response.headers.items()),
        "body": body,
    }
    expected = config.get("expected_status")
    status = response.status_code
    succeeded = status in expected if isinstance(expected, list) else 200 <= status < 400
    if succeeded:
        return NodeOutcome(output=output, warnings=warnings)
    wanted = ", ".join(str(s) for s in expected) if isinstance(expected, list) else "a 2xx or 3xx"
    message = f"{target} answered {status} (expected {wanted}): {text[:STATUS_BODY_CHARS]}"
    return NodeOutcome(output, TaskError("http.status", message), warnings)
