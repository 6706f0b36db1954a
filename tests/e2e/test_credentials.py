"""Credentials on the real stack: admins store them encrypted, a node that names one gets its
value for that task only, no record keeps it (outputs, errors, logs, every stored document),
rotation reaches the next run, and a missing credential fails the task saying which."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.fernet import Fernet
from flowyard import codec
from flowyard.client_auth import bearer_channel
from flowyard.config import Settings
from flowyard.domain.access import Role
from flowyard.metrics import ServiceMetrics
from flowyard.v1 import credentials_pb2, credentials_pb2_grpc, gateway_pb2, run_pb2
from flowyard_api_gateway.__main__ import Gateway
from google.protobuf import json_format
from prometheus_client import CollectorRegistry
from pymongo import AsyncMongoClient

from tests.e2e.conftest import RunningFlowyard, admin_token
from tests.e2e.servers import Outside, Reply, Request, json_reply
from tests.e2e.test_run_end_to_end import apply, finished_run, task

pytestmark = pytest.mark.e2e

Eventually = Callable[..., Awaitable[Any]]
KEY = Fernet.generate_key().decode()
SECRET = "sk-live-7f3a9c1e-not-for-logs"
ROTATED = "sk-live-rotated-0b5d2e8a"


@pytest.fixture
def settings(settings: Settings, outside: Outside) -> Settings:
    return replace(outside.configure(settings), credentials_key=KEY)


def credentials(flowyard: RunningFlowyard) -> credentials_pb2_grpc.CredentialServiceStub:
    return credentials_pb2_grpc.CredentialServiceStub(flowyard.channel)


def echo(request: Request) -> Reply:
    """The supplier answers with what it was sent, as careless APIs do."""
    return json_reply({"key_seen": request.headers.get("x-api-key"), "path": request.path})


def workflow(api: str) -> dict[str, Any]:
    return {
        "name": "uses-secrets",
        "nodes": [
            {"id": "start", "type": "trigger"},
            {
                "id": "call",
                "type": "http",
                "config": {
                    "url": api + "/stock?key={{ credentials.supplier_key }}",
                    "headers": {"X-Api-Key": "{{ credentials['supplier_key'] }}"},
                },
            },
            {
                "id": "script",
                "type": "code",
                "config": {
                    "credentials": ["supplier_key"],
                    "source": (
                        "key = inputs['credentials']['supplier_key']\n"
                        "print('using', key)\n"
                        "result = {'key': key, 'seen': upstream['call']['body']['key_seen']}"
                    ),
                },
            },
            {
                "id": "plain",
                "type": "code",
                "config": {"source": "result = sorted(inputs)"},
            },
        ],
        "edges": [
            {"from": "start", "to": "call"},
            {"from": "call", "to": "script"},
            {"from": "script", "to": "plain"},
        ],
    }


async def run_once(flowyard: RunningFlowyard, eventually: Eventually) -> run_pb2.Run:
    started = await flowyard.runs.StartRun(gateway_pb2.StartRunRequest(workflow="uses-secrets"))
    return await finished_run(flowyard, started.run_id, eventually)


async def every_stored_document(settings: Settings) -> str:
    """Every document of every collection of the test's database, as text."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(settings.mongo_url, tz_aware=True)
    try:
        db = client[settings.mongo_db]
        dump = []
        for name in await db.list_collection_names():
            dump += [repr(doc) async for doc in db[name].find({})]
        return "\n".join(dump)
    finally:
        await client.close()


async def test_admins_manage_credentials_and_no_call_returns_a_value(
    flowyard: RunningFlowyard,
) -> None:
    store = credentials(flowyard)
    made = await store.SetCredential(
        credentials_pb2.SetCredentialRequest(
            name="supplier_key", value=SECRET, description="supplier API"
        )
    )
    assert made.created and made.credential.version == 1
    assert made.credential.created_by == flowyard.principal
    again = await store.SetCredential(
        credentials_pb2.SetCredentialRequest(name="supplier_key", value=SECRET)
    )
    assert not again.created and again.credential.version == 2
    assert again.credential.description == "supplier API"
    rotated = await store.RotateCredential(
        credentials_pb2.RotateCredentialRequest(name="supplier_key", value=ROTATED)
    )
    assert rotated.version == 3

    listed = await store.ListCredentials(credentials_pb2.ListCredentialsRequest())
    assert [c.name for c in listed.credentials] == ["supplier_key"]
    for response in (made, again, rotated, listed):
        wire = response.SerializeToString()
        assert SECRET.encode() not in wire and ROTATED.encode() not in wire
    stored = await every_stored_document(flowyard.settings)
    assert "supplier_key" in stored and SECRET not in stored and ROTATED not in stored

    for request, field in (
        (credentials_pb2.SetCredentialRequest(name="bad-name", value="x"), "name"),
        (credentials_pb2.SetCredentialRequest(name="ok"), "value"),
        (credentials_pb2.SetCredentialRequest(name="ok", value="x" * (64 * 1024 + 1)), "value"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await store.SetCredential(request)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (bad.value.details() or "").startswith(f"{field}:")
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await store.RotateCredential(
            credentials_pb2.RotateCredentialRequest(name="nope", value="v")
        )
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND

    await store.DeleteCredential(credentials_pb2.DeleteCredentialRequest(name="supplier_key"))
    listed = await store.ListCredentials(credentials_pb2.ListCredentialsRequest())
    assert list(listed.credentials) == []
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await store.DeleteCredential(credentials_pb2.DeleteCredentialRequest(name="supplier_key"))
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND


async def test_only_admins_touch_credentials(flowyard: RunningFlowyard) -> None:
    operator = await flowyard.client_as("olga", Role.OPERATOR)
    store = credentials_pb2_grpc.CredentialServiceStub(operator.channel)
    for call in (
        store.ListCredentials(credentials_pb2.ListCredentialsRequest()),
        store.SetCredential(credentials_pb2.SetCredentialRequest(name="k", value="v")),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await call
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "admin role required for /flowyard.v1.CredentialService/" in (
            denied.value.details() or ""
        )


async def test_a_task_gets_its_credential_and_no_record_keeps_it(
    flowyard: RunningFlowyard, outside: Outside, eventually: Eventually
) -> None:
    outside.http.route("/stock", echo)
    await credentials(flowyard).SetCredential(
        credentials_pb2.SetCredentialRequest(name="supplier_key", value=SECRET)
    )
    await apply(flowyard, workflow(outside.http.url()))

    run = await run_once(flowyard, eventually)

    assert run.status == run_pb2.RUN_STATUS_SUCCEEDED, json_format.MessageToJson(run)
    [sent] = outside.http.received("/stock")
    assert sent.headers["x-api-key"] == SECRET and SECRET in sent.path
    call = codec.value_to_json(task(run, "call").output)
    assert isinstance(call, dict)
    assert call["body"]["key_seen"] == "[credential supplier_key]"
    assert SECRET not in json.dumps(call)
    script = codec.value_to_json(task(run, "script").output)
    assert script == {"key": "[credential supplier_key]", "seen": "[credential supplier_key]"}
    # Only the task that names a credential gets it.
    assert codec.value_to_json(task(run, "plain").output) == [
        "context",
        "node_context",
        "trigger",
        "upstream",
    ]

    assert SECRET not in json_format.MessageToJson(run)
    stored = await every_stored_document(flowyard.settings)
    assert "[credential supplier_key]" in stored  # the redacted outputs and log lines
    assert SECRET not in stored


async def test_a_rotated_credential_is_used_by_the_next_run(
    flowyard: RunningFlowyard, outside: Outside, eventually: Eventually
) -> None:
    outside.http.route("/stock", echo)
    store = credentials(flowyard)
    await store.SetCredential(
        credentials_pb2.SetCredentialRequest(name="supplier_key", value=SECRET)
    )
    await apply(flowyard, workflow(outside.http.url()))
    first = await run_once(flowyard, eventually)
    assert first.status == run_pb2.RUN_STATUS_SUCCEEDED

    await store.RotateCredential(
        credentials_pb2.RotateCredentialRequest(name="supplier_key", value=ROTATED)
    )
    second = await run_once(flowyard, eventually)

    assert second.status == run_pb2.RUN_STATUS_SUCCEEDED
    assert [r.headers["x-api-key"] for r in outside.http.received("/stock")] == [SECRET, ROTATED]
    assert ROTATED not in json_format.MessageToJson(second)


async def test_a_missing_credential_fails_the_task_naming_it(
    flowyard: RunningFlowyard, outside: Outside, eventually: Eventually
) -> None:
    outside.http.route("/stock", echo)
    await apply(flowyard, workflow(outside.http.url()))

    run = await run_once(flowyard, eventually)

    assert run.status == run_pb2.RUN_STATUS_FAILED
    failed = task(run, "call")
    assert failed.error.code == "credential.not_found"
    assert failed.error.message == "no credential named supplier_key"
    assert outside.http.received("/stock") == []


@pytest.fixture
async def keyless_gateway(settings: Settings) -> AsyncIterator[grpc.aio.Channel]:
    keyless = replace(settings, credentials_key="")
    async with Gateway(keyless, ServiceMetrics(CollectorRegistry(), "api-gateway")) as gateway:
        channel = bearer_channel(gateway.address, await admin_token(keyless, "keyless-admin"))
        try:
            yield channel
        finally:
            await channel.close()


async def test_without_the_key_the_gateway_stores_no_credential(
    keyless_gateway: grpc.aio.Channel,
) -> None:
    store = credentials_pb2_grpc.CredentialServiceStub(keyless_gateway)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await store.SetCredential(credentials_pb2.SetCredentialRequest(name="k", value="v"))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "FLOWYARD_CREDENTIALS_KEY is not set" in (refused.value.details() or "")
    listed = await store.ListCredentials(credentials_pb2.ListCredentialsRequest())
    assert list(listed.credentials) == []


async def cli(
    flowyard: RunningFlowyard, *argv: str, stdin: str = "", **env: str
) -> tuple[int, str, str]:
    assert flowyard.admin is not None
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "flowyard"),
        *argv,
        env={
            **os.environ,
            "FLOWYARD_GRPC_ADDR": flowyard.address,
            "FLOWYARD_TOKEN": flowyard.admin.token,
            **env,
        },
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin.encode()), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_the_cli_sets_rotates_lists_and_deletes_without_showing_values(
    flowyard: RunningFlowyard,
) -> None:
    code, out, err = await cli(
        flowyard, "credential", "set", "smtp_password", "--description", "mail", stdin=SECRET + "\n"
    )
    assert code == 0, err
    assert out.startswith("created credential smtp_password (version 1, ")
    code, out, err = await cli(
        flowyard,
        "credential",
        "rotate",
        "smtp_password",
        "--from-env",
        "NEW_VALUE",
        NEW_VALUE=ROTATED,
    )
    assert code == 0, err
    assert "rotated credential smtp_password (version 2, " in out
    code, out, err = await cli(flowyard, "credential", "list")
    assert code == 0, err
    assert out.splitlines()[0].split() == ["NAME", "VERSION", "UPDATED", "BY", "DESCRIPTION"]
    assert out.splitlines()[1].split()[:2] == ["smtp_password", "2"]
    assert out.splitlines()[1].endswith("mail")
    code, out, err = await cli(flowyard, "credential", "set", "x", "--from-env", "UNSET_VAR_X")
    assert code == 2 and "$UNSET_VAR_X is not set" in err
    code, out, err = await cli(flowyard, "credential", "delete", "smtp_password")
    assert code == 0 and out.strip() == "deleted credential smtp_password"
    code, out, err = await cli(flowyard, "credential", "delete", "smtp_password")
    assert code == 1 and "NOT_FOUND" in err
