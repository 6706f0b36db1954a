"""Hostile webhook requests (hypothesis, bounded): random JSON (keys MongoDB refuses, deep
nesting, huge numbers), bytes that are not JSON and odd idempotency keys, correctly signed,
so they get past the signature check. Each gets 202 or 400 with an error body, never a
5xx; the runs the accepted ones start finish; the gateway goes on. (The 1 MiB body limit,
401 and 404 are in test_triggers.py.)
"""

from __future__ import annotations

import json
import socket
import string
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
from flowyard.config import Settings
from flowyard.v1 import gateway_pb2, run_pb2
from flowyard_api_gateway.webhooks import IDEMPOTENCY_HEADER, SIGNATURE_HEADER, sign
from hypothesis import strategies as st

from tests.e2e.conftest import RunningFlowyard
from tests.e2e.test_run_end_to_end import apply, finished_run
from tests.fuzzing import draw, json_values

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies"),
]

Eventually = Callable[..., Awaitable[Any]]

REQUESTS = 80


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return replace(settings, http_addr=f"127.0.0.1:{free_port()}")


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        yield session


def deep(levels: int) -> bytes:
    return b'{"a":' * levels + b"1" + b"}" * levels


def bodies() -> st.SearchStrategy[bytes]:
    as_json = json_values(["$where", "a.b", "\x00", "_id"]).map(lambda v: json.dumps(v).encode())
    return st.one_of(
        as_json,
        as_json,
        st.binary(max_size=200),
        st.integers(1, 3000).map(deep),
        st.sampled_from([b"1e999999", b"-0", b'"\\ud800"', b"[" * 5000, b"{}" * 2, b"NaN"]),
    )


KEYS = st.one_of(
    st.just(""), st.text(alphabet=string.ascii_letters + string.digits + "-_.:", max_size=300)
)


async def test_signed_hostile_webhook_bodies_get_202_or_400_never_a_server_error(
    flowyard: RunningFlowyard,
    settings: Settings,
    http: aiohttp.ClientSession,
    eventually: Eventually,
) -> None:
    await apply(
        flowyard,
        {
            "name": "hook",
            "nodes": [
                {"id": "start", "type": "trigger", "config": {"webhook": True}},
                {"id": "see", "type": "code", "config": {"source": "result = repr(trigger)[:50]"}},
            ],
            "edges": [{"from": "start", "to": "see"}],
        },
    )
    secret = (
        await flowyard.workflows.GetWebhookSecret(gateway_pb2.WebhookSecretRequest(name="hook"))
    ).secret
    url = f"http://{settings.http_addr}/webhooks/hook"
    failures: list[str] = []
    started: list[str] = []
    for body, key in draw(st.tuples(bodies(), KEYS), REQUESTS):
        headers = {SIGNATURE_HEADER: sign(secret, body), IDEMPOTENCY_HEADER: key}
        async with http.post(url, data=body, headers=headers) as response:
            status = response.status
            text = await response.text()
        try:
            answer = json.loads(text)
        except ValueError:
            answer = {}
        if status == 202 and "run_id" in answer:
            started.append(answer["run_id"])
        elif status != 400 or not answer.get("error"):
            failures.append(f"{status} {text[:200]!r} for body {body[:80]!r} key {key[:40]!r}")
    assert not failures, "\n".join(failures)
    assert started, "no request was accepted: the fuzzing never got past validation"

    # The runs the accepted requests started all finish, and a new one still does.
    for run_id in dict.fromkeys(started):
        run = await finished_run(flowyard, run_id, eventually)
        assert run.status == run_pb2.RUN_STATUS_SUCCEEDED, run
    body = b'{"order": 21}'
    headers = {SIGNATURE_HEADER: sign(secret, body)}
    async with http.post(url, data=body, headers=headers) as response:
        assert response.status == 202
        run_id = (await response.json())["run_id"]
    assert (await finished_run(flowyard, run_id, eventually)).status == (
        run_pb2.RUN_STATUS_SUCCEEDED
    )
