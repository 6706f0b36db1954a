"""Tokens and roles at the gateway, on the real stack: every role boundary of every method,
calls without or with bad tokens, revocation taking effect on the next call, the open
health and reflection services, and the caller recorded as who started or decided."""

from __future__ import annotations

import asyncio
import importlib
import os
import pkgutil
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import flowyard.v1
import grpc
import pytest
from flowyard import codec
from flowyard.adapters.tokens import TokenStore
from flowyard.config import Settings
from flowyard.domain.access import Role, token_hash
from flowyard.domain.definition import parse_definition
from flowyard.metrics import ServiceMetrics
from flowyard.v1 import auth_pb2, gateway_pb2, gateway_pb2_grpc, run_pb2
from flowyard_api_gateway.__main__ import Gateway
from flowyard_api_gateway.auth import AuthInterceptor, TokenAuthenticator
from flowyard_api_gateway.roles import METHOD_ROLES
from google.protobuf import descriptor, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import CollectorRegistry

from tests.e2e.conftest import Client, RunningFlowyard
from tests.e2e.test_run_end_to_end import apply, finished_run, task

pytestmark = pytest.mark.e2e

Eventually = Callable[..., Awaitable[Any]]
BIN = Path(sys.executable).parent

SIGN_OFF = {
    "name": "sign-off",
    "nodes": [
        {"id": "start", "type": "trigger"},
        {"id": "approve", "type": "approval", "config": {"approvers": ["dana"]}},
        {"id": "done", "type": "code", "config": {"source": "result = 'done'"}},
    ],
    "edges": [{"from": "start", "to": "approve"}, {"from": "approve", "to": "done"}],
}


def flowyard_methods() -> Iterator[tuple[str, descriptor.MethodDescriptor]]:
    """("/flowyard.v1.Service/Method", descriptor) for every service in every flowyard.v1
    proto module, found by importing them all (a new .proto is picked up by itself)."""
    for info in pkgutil.iter_modules(flowyard.v1.__path__):
        if not info.name.endswith("_pb2"):
            continue
        module = importlib.import_module(f"flowyard.v1.{info.name}")
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                yield f"/{service.full_name}/{method.name}", method


async def invoke(
    channel: grpc.aio.Channel, path: str, method: descriptor.MethodDescriptor
) -> tuple[grpc.StatusCode, str]:
    """Call ``path`` with an empty request; the status it ends with and its details."""
    request_type = message_factory.GetMessageClass(method.input_type)
    response_type = message_factory.GetMessageClass(method.output_type)
    kwargs: Any = {
        "request_serializer": request_type.SerializeToString,
        "response_deserializer": response_type.FromString,
    }
    request = request_type()
    try:
        if method.client_streaming:
            multi: Any = (
                channel.stream_stream(path, **kwargs)
                if method.server_streaming
                else channel.stream_unary(path, **kwargs)
            )
            call = multi(iter([request]), timeout=5)
        elif method.server_streaming:
            call = channel.unary_stream(path, **kwargs)(request, timeout=5)
        else:
            await channel.unary_unary(path, **kwargs)(request, timeout=5)
            return grpc.StatusCode.OK, ""
        if method.server_streaming:
            async for _ in call:
                break
            call.cancel()
        else:
            await call
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


async def refused(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


# --- the role table --------------------------------------------------------------------


async def test_every_role_boundary_of_every_method(flowyard: RunningFlowyard) -> None:
    """Each role calls each method the gateway serves (with an empty request): refused with
    PERMISSION_DENIED naming the role needed exactly when its role is below the table's,
    else let through to the servicer (which may well find the empty request invalid)."""
    clients = {role: await flowyard.client_as(f"matrix-{role.label}", role) for role in Role}
    async with grpc.aio.insecure_channel(flowyard.address) as channel:
        served = {s for s in await served_services(channel) if s.startswith("flowyard.")}
    methods = [
        (path, method)
        for path, method in flowyard_methods()
        if method.containing_service.full_name in served and path in METHOD_ROLES
    ]
    assert len(methods) >= 14
    wrong: list[str] = []
    for path, method in methods:
        needed = METHOD_ROLES[path]
        for role, client in clients.items():
            code, details = await invoke(client.channel, path, method)
            if (code == grpc.StatusCode.PERMISSION_DENIED) != (role < needed):
                wrong.append(f"{path} as {role.label}: {code.name} {details}")
            elif role < needed and details != (
                f"{needed.label} role required for {path}; you are {role.label}"
            ):
                wrong.append(f"{path} as {role.label}: {details}")
            if code == grpc.StatusCode.UNAUTHENTICATED:
                wrong.append(f"{path} as {role.label}: UNAUTHENTICATED")
    assert not wrong


async def test_viewer_reads_runs_but_cannot_start_them(flowyard: RunningFlowyard) -> None:
    await apply(flowyard, SIGN_OFF)
    started = await flowyard.runs.StartRun(gateway_pb2.StartRunRequest(workflow="sign-off"))
    viewer = await flowyard.client_as("vera", Role.VIEWER)

    run = await viewer.runs.GetRun(gateway_pb2.GetRunRequest(run_id=started.run_id))
    assert run.run_id == started.run_id
    listed = await viewer.workflows.ListWorkflows(gateway_pb2.ListWorkflowsRequest())
    assert [w.definition.name for w in listed.workflows] == ["sign-off"]
    async for snapshot in viewer.runs.WatchRun(gateway_pb2.WatchRunRequest(run_id=started.run_id)):
        assert snapshot.run_id == started.run_id
        break

    denied = await refused(viewer.runs.StartRun(gateway_pb2.StartRunRequest(workflow="sign-off")))
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
    assert denied.details() == (
        "operator role required for /flowyard.v1.RunService/StartRun; you are viewer"
    )
    denied = await refused(
        viewer.runs.DecideApproval(
            gateway_pb2.DecideApprovalRequest(run_id=started.run_id, node_id="approve")
        )
    )
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_operator_acts_on_runs_as_itself_but_cannot_change_definitions_or_tokens(
    flowyard: RunningFlowyard, eventually: Eventually
) -> None:
    await apply(flowyard, SIGN_OFF)
    dana = await flowyard.client_as("dana", Role.OPERATOR)

    # The identity fields of the request are ignored: the token says who calls.
    started = await dana.runs.StartRun(
        gateway_pb2.StartRunRequest(workflow="sign-off", started_by="someone-else")
    )

    async def waiting() -> None:
        run = await dana.runs.GetRun(gateway_pb2.GetRunRequest(run_id=started.run_id))
        assert task(run, "approve").status == run_pb2.TASK_STATUS_WAITING

    await eventually(waiting, within=30)
    await dana.runs.DecideApproval(
        gateway_pb2.DecideApprovalRequest(
            run_id=started.run_id, node_id="approve", approved=True, decided_by="mallory"
        )
    )
    run = await finished_run(flowyard, started.run_id, eventually)
    assert run.status == run_pb2.RUN_STATUS_SUCCEEDED
    assert run.trigger.started_by == "dana"
    decision = codec.value_to_json(task(run, "approve").output)
    assert isinstance(decision, dict) and decision["decided_by"] == "dana"

    denied = await refused(
        dana.workflows.ApplyWorkflow(gateway_pb2.ApplyWorkflowRequest(definition=run_definition()))
    )
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
    assert denied.details() == (
        "admin role required for /flowyard.v1.WorkflowService/ApplyWorkflow; you are operator"
    )
    denied = await refused(
        dana.tokens.IssueToken(auth_pb2.IssueTokenRequest(name="eve", role=auth_pb2.ROLE_ADMIN))
    )
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "admin role required" in (denied.details() or "")


def run_definition() -> Any:
    return codec.definition_to_proto(parse_definition({**SIGN_OFF, "name": "sign-off-2"}))


async def test_an_approver_list_names_principals(
    flowyard: RunningFlowyard, eventually: Eventually
) -> None:
    """An operator not in the approvers list cannot decide, whatever name it sends."""
    await apply(flowyard, SIGN_OFF)
    started = await flowyard.runs.StartRun(gateway_pb2.StartRunRequest(workflow="sign-off"))
    mallory = await flowyard.client_as("mallory", Role.OPERATOR)

    async def waiting() -> None:
        run = await mallory.runs.GetRun(gateway_pb2.GetRunRequest(run_id=started.run_id))
        assert task(run, "approve").status == run_pb2.TASK_STATUS_WAITING

    await eventually(waiting, within=30)
    denied = await refused(
        mallory.runs.DecideApproval(
            gateway_pb2.DecideApprovalRequest(
                run_id=started.run_id, node_id="approve", approved=True, decided_by="dana"
            )
        )
    )
    assert denied.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "may be decided only by dana" in (denied.details() or "")


async def test_admin_applies_workflows_and_manages_tokens(flowyard: RunningFlowyard) -> None:
    admin = await flowyard.client_as("ada", Role.ADMIN)
    await admin.workflows.ApplyWorkflow(
        gateway_pb2.ApplyWorkflowRequest(definition=run_definition())
    )
    started = await admin.runs.StartRun(gateway_pb2.StartRunRequest(workflow="sign-off-2"))
    assert started.created

    issued = await admin.tokens.IssueToken(
        auth_pb2.IssueTokenRequest(name="otto", role=auth_pb2.ROLE_OPERATOR)
    )
    assert issued.token.startswith("fyt_") and len(issued.token) > 40
    assert issued.info.name == "otto" and issued.info.role == auth_pb2.ROLE_OPERATOR
    assert issued.info.created_by == "ada" and not issued.info.HasField("revoked_at")
    listed = await admin.tokens.ListTokens(auth_pb2.ListTokensRequest())
    assert {(t.name, t.role) for t in listed.tokens} >= {
        ("ada", auth_pb2.ROLE_ADMIN),
        ("otto", auth_pb2.ROLE_OPERATOR),
        (flowyard.principal, auth_pb2.ROLE_ADMIN),
    }
    revoked = await admin.tokens.RevokeToken(
        auth_pb2.RevokeTokenRequest(token_id_or_name=issued.info.token_id)
    )
    assert [t.token_id for t in revoked.revoked] == [issued.info.token_id]
    assert revoked.revoked[0].revoked_by == "ada"


# --- authentication --------------------------------------------------------------------


async def test_a_call_without_a_token_is_unauthenticated_and_counted(
    flowyard: RunningFlowyard,
) -> None:
    async with grpc.aio.insecure_channel(flowyard.address) as channel:
        for path in (
            "/flowyard.v1.RunService/GetRun",
            "/flowyard.v1.WorkflowService/ListWorkflows",
            "/flowyard.v1.RunService/WatchRun",
            "/flowyard.v1.TokenService/WhoAmI",
        ):
            method = dict(flowyard_methods())[path]
            code, _ = await invoke(channel, path, method)
            assert code == grpc.StatusCode.UNAUTHENTICATED, path
        stub_error = await refused(
            gateway_pb2_grpc.RunServiceStub(channel).GetRun(gateway_pb2.GetRunRequest(run_id="x"))
        )
    assert "missing bearer token" in (stub_error.details() or "")
    registry = flowyard.metrics["api-gateway"].registry
    counted = registry.get_sample_value(
        "flowyard_grpc_requests_total", {"method": "GetRun", "code": "UNAUTHENTICATED"}
    )
    assert counted == 2


async def test_unknown_and_malformed_tokens_are_unauthenticated(
    flowyard: RunningFlowyard,
) -> None:
    unknown = flowyard.client("fyt_" + "x" * 43)
    error = await refused(unknown.tokens.WhoAmI(auth_pb2.WhoAmIRequest()))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == "unknown bearer token"

    # The stored hash is no token: sending it gets nowhere.
    async with TokenStore.connect(flowyard.settings.mongo_url, flowyard.settings.mongo_db) as ts:
        doc = await ts.tokens.find_one({"name": flowyard.principal})
    assert doc is not None
    error = await refused(flowyard.client(doc["_id"]).tokens.WhoAmI(auth_pb2.WhoAmIRequest()))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED

    for header in (f"Basic {flowyard.admin.token}", "Bearer", flowyard.admin.token):  # type: ignore[union-attr]
        error = await refused(
            flowyard.tokens.WhoAmI(auth_pb2.WhoAmIRequest(), metadata=(("authorization", header),))
        )
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED, header
        assert "must be 'Bearer <token>'" in (error.details() or "")


async def test_whoami_names_the_principal_and_role(flowyard: RunningFlowyard) -> None:
    viewer = await flowyard.client_as("vic", Role.VIEWER)
    me = await viewer.tokens.WhoAmI(auth_pb2.WhoAmIRequest())
    assert me.name == "vic" and me.role == auth_pb2.ROLE_VIEWER and me.token_id
    admin = await flowyard.tokens.WhoAmI(auth_pb2.WhoAmIRequest())
    assert admin.name == flowyard.principal and admin.role == auth_pb2.ROLE_ADMIN


async def test_issue_token_checks_the_name_and_role(flowyard: RunningFlowyard) -> None:
    for request, field in (
        (auth_pb2.IssueTokenRequest(name="", role=auth_pb2.ROLE_VIEWER), "name"),
        (auth_pb2.IssueTokenRequest(name="-dash", role=auth_pb2.ROLE_VIEWER), "name"),
        (auth_pb2.IssueTokenRequest(name="a b", role=auth_pb2.ROLE_VIEWER), "name"),
        (auth_pb2.IssueTokenRequest(name="ok"), "role"),
    ):
        error = await refused(flowyard.tokens.IssueToken(request))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (error.details() or "").startswith(f"{field}:")
    error = await refused(flowyard.tokens.RevokeToken(auth_pb2.RevokeTokenRequest()))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    error = await refused(
        flowyard.tokens.RevokeToken(auth_pb2.RevokeTokenRequest(token_id_or_name="nobody"))
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_tokens_are_stored_hashed_and_never_listed(flowyard: RunningFlowyard) -> None:
    issued = await flowyard.tokens.IssueToken(
        auth_pb2.IssueTokenRequest(name="hash-check", role=auth_pb2.ROLE_VIEWER)
    )
    async with TokenStore.connect(flowyard.settings.mongo_url, flowyard.settings.mongo_db) as ts:
        doc = await ts.tokens.find_one({"token_id": issued.info.token_id})
    assert doc is not None
    assert doc["_id"] == token_hash(issued.token)
    assert issued.token not in repr(doc)
    listed = await flowyard.tokens.ListTokens(auth_pb2.ListTokensRequest(include_revoked=True))
    wire = listed.SerializeToString()
    assert issued.token.encode() not in wire and token_hash(issued.token).encode() not in wire


# --- revocation ------------------------------------------------------------------------


async def test_a_revoked_token_is_refused_on_the_very_next_call(
    flowyard: RunningFlowyard,
) -> None:
    viewer = await flowyard.client_as("rita", Role.VIEWER)
    me = await viewer.tokens.WhoAmI(auth_pb2.WhoAmIRequest())  # now in the gateway's cache
    await viewer.workflows.ListWorkflows(gateway_pb2.ListWorkflowsRequest())

    revoked = await flowyard.tokens.RevokeToken(
        auth_pb2.RevokeTokenRequest(token_id_or_name=me.token_id)
    )
    assert [t.token_id for t in revoked.revoked] == [me.token_id]

    error = await refused(viewer.workflows.ListWorkflows(gateway_pb2.ListWorkflowsRequest()))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == f"token {me.token_id} of rita was revoked"
    listed = await flowyard.tokens.ListTokens(auth_pb2.ListTokensRequest())
    assert me.token_id not in {t.token_id for t in listed.tokens}
    everything = await flowyard.tokens.ListTokens(auth_pb2.ListTokensRequest(include_revoked=True))
    (record,) = [t for t in everything.tokens if t.token_id == me.token_id]
    assert record.HasField("revoked_at") and record.revoked_by == flowyard.principal
    again = await flowyard.tokens.RevokeToken(
        auth_pb2.RevokeTokenRequest(token_id_or_name=me.token_id)
    )
    assert list(again.revoked) == []


async def test_revoking_a_name_revokes_every_token_of_that_principal(
    flowyard: RunningFlowyard,
) -> None:
    first = await flowyard.client_as("sam", Role.OPERATOR)
    second = await flowyard.client_as("sam", Role.VIEWER)
    other = await flowyard.client_as("samantha", Role.VIEWER)
    for client in (first, second, other):
        await client.tokens.WhoAmI(auth_pb2.WhoAmIRequest())

    revoked = await flowyard.tokens.RevokeToken(auth_pb2.RevokeTokenRequest(token_id_or_name="sam"))

    assert sorted(t.role for t in revoked.revoked) == [auth_pb2.ROLE_VIEWER, auth_pb2.ROLE_OPERATOR]
    for client in (first, second):
        error = await refused(client.tokens.WhoAmI(auth_pb2.WhoAmIRequest()))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert (await other.tokens.WhoAmI(auth_pb2.WhoAmIRequest())).name == "samantha"


@pytest.fixture
async def second_gateway(settings: Settings) -> AsyncIterator[str]:
    """Another gateway instance on the same database (as with several replicas)."""
    async with Gateway(settings, ServiceMetrics(CollectorRegistry(), "api-gateway")) as gateway:
        yield gateway.address


async def test_a_revocation_reaches_other_gateways_within_a_second(
    flowyard: RunningFlowyard, second_gateway: str
) -> None:
    issued = await flowyard.tokens.IssueToken(
        auth_pb2.IssueTokenRequest(name="roamer", role=auth_pb2.ROLE_VIEWER)
    )
    elsewhere = Client.connect(second_gateway, issued.token)
    try:
        await elsewhere.tokens.WhoAmI(auth_pb2.WhoAmIRequest())  # cached over there
        await flowyard.tokens.RevokeToken(auth_pb2.RevokeTokenRequest(token_id_or_name="roamer"))
        revoked_at = time.monotonic()
        while True:
            try:
                await elsewhere.tokens.WhoAmI(auth_pb2.WhoAmIRequest())
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                break
            assert time.monotonic() - revoked_at < 1.5, "still accepted after the cache TTL"
            await asyncio.sleep(0.05)
        assert code == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await elsewhere.channel.close()


# --- open services and the table's completeness ----------------------------------------


async def test_health_and_reflection_need_no_token(flowyard: RunningFlowyard) -> None:
    async with grpc.aio.insecure_channel(flowyard.address) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="flowyard.v1.TokenService")
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        names = await served_services(channel)
    assert {"flowyard.v1.TokenService", "flowyard.v1.RunService", "grpc.health.v1.Health"} <= set(
        names
    )


async def served_services(channel: grpc.aio.Channel) -> list[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    async for response in call:
        return [s.name for s in response.list_services_response.service]
    raise AssertionError("no reflection answer")


async def test_every_method_the_gateway_serves_is_in_the_role_table(
    flowyard: RunningFlowyard,
) -> None:
    known = dict(flowyard_methods())
    async with grpc.aio.insecure_channel(flowyard.address) as channel:
        served = [s for s in await served_services(channel) if s.startswith("flowyard.")]
    assert served
    missing = []
    for service in served:
        paths = [p for p in known if p.startswith(f"/{service}/")]
        assert paths, f"{service} is served but no flowyard.v1 proto module defines it"
        missing += [p for p in paths if p not in METHOD_ROLES]
    assert not missing, f"add these to roles.METHOD_ROLES: {missing}"


async def test_a_method_missing_from_the_role_table_is_refused_to_everyone(
    settings: Settings,
) -> None:
    async def handle(request: bytes, context: Any) -> bytes:
        return request

    async with TokenStore.connect(settings.mongo_url, settings.mongo_db) as tokens:
        _record, token = await tokens.issue("root", Role.ADMIN, created_by="test")
        server = grpc.aio.server(interceptors=[AuthInterceptor(TokenAuthenticator(tokens))])
        server.add_generic_rpc_handlers(
            [
                grpc.method_handlers_generic_handler(
                    "flowyard.v1.Unlisted", {"Do": grpc.unary_unary_rpc_method_handler(handle)}
                )
            ]
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                error = await refused(
                    channel.unary_unary("/flowyard.v1.Unlisted/Do")(
                        b"", metadata=(("authorization", f"Bearer {token}"),)
                    )
                )
        finally:
            await server.stop(grace=None)
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "/flowyard.v1.Unlisted/Do has no role" in (error.details() or "")


# --- bootstrap and CLI -----------------------------------------------------------------


async def run_command(*argv: str, env: dict[str, str]) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *argv,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def command_env(flowyard: RunningFlowyard, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("FLOWYARD_TOKEN", "FLOWYARD_CONFIG", "FLOWYARD_GRPC_ADDR")
    }
    return {
        **env,
        "FLOWYARD_MONGO_URL": flowyard.settings.mongo_url,
        "FLOWYARD_MONGO_DB": flowyard.settings.mongo_db,
        "FLOWYARD_GRPC_ADDR": flowyard.address,
        "XDG_CONFIG_HOME": str(tmp_path / "no-config"),
        **extra,
    }


async def test_the_bootstrap_command_issues_a_working_admin_token(
    flowyard: RunningFlowyard, tmp_path: Path
) -> None:
    env = command_env(flowyard, tmp_path)
    code, out, err = await run_command(
        str(BIN / "flowyard-api-gateway"),
        "issue-token",
        "--name",
        "local-admin",
        "--role",
        "admin",
        env=env,
    )
    assert code == 0, err
    token = out.strip()
    assert token.startswith("fyt_") and "\n" not in token
    assert "shown only this once" in err
    me = await flowyard.client(token).tokens.WhoAmI(auth_pb2.WhoAmIRequest())
    assert me.name == "local-admin" and me.role == auth_pb2.ROLE_ADMIN

    code, _, err = await run_command(
        str(BIN / "flowyard-api-gateway"), "issue-token", "--name", "-x", "--role", "admin", env=env
    )
    assert code == 2 and "--name" in err


async def test_the_cli_manages_tokens_and_explains_refusals(
    flowyard: RunningFlowyard, tmp_path: Path
) -> None:
    cli = str(BIN / "flowyard")
    assert flowyard.admin is not None
    admin_env = command_env(flowyard, tmp_path, FLOWYARD_TOKEN=flowyard.admin.token)

    code, out, err = await run_command(
        cli, "token", "issue", "val", "--role", "viewer", env=admin_env
    )
    assert code == 0, err
    viewer_token = out.strip()
    assert "issued a viewer token for val" in err

    # The token from a config file, when $FLOWYARD_TOKEN is not set.
    config = tmp_path / "flowyard.toml"
    config.write_text(f'token = "{viewer_token}"\nserver = "{flowyard.address}"\n')
    config.chmod(0o600)
    viewer_env = command_env(flowyard, tmp_path, FLOWYARD_CONFIG=str(config))
    del viewer_env["FLOWYARD_GRPC_ADDR"]
    code, out, err = await run_command(cli, "whoami", env=viewer_env)
    assert code == 0, err
    assert out.startswith("val (viewer, token ") and not err

    code, out, err = await run_command(cli, "token", "list", env=viewer_env)
    assert code == 1
    assert "error: PERMISSION_DENIED: admin role required for /flowyard.v1.TokenService/" in err
    assert "you are viewer" in err and "flowyard token issue" in err

    code, out, err = await run_command(cli, "token", "list", env=admin_env)
    assert code == 0, err
    assert out.splitlines()[0].split() == [
        "ID",
        "NAME",
        "ROLE",
        "CREATED",
        "CREATED",
        "BY",
        "REVOKED",
    ]
    assert any(line.split()[1:3] == ["val", "viewer"] for line in out.splitlines()[1:])
    assert viewer_token not in out

    code, out, err = await run_command(cli, "token", "revoke", "val", env=admin_env)
    assert code == 0, err
    assert out.startswith("revoked token ") and "of val (viewer)" in out

    code, out, err = await run_command(cli, "whoami", env=viewer_env)
    assert code == 1
    assert "error: UNAUTHENTICATED: token " in err and "was revoked" in err
    assert "FLOWYARD_TOKEN" in err

    code, out, err = await run_command(cli, "workflow", "list", env=command_env(flowyard, tmp_path))
    assert code == 1 and "UNAUTHENTICATED: missing bearer token" in err

    config.chmod(0o644)
    code, out, err = await run_command(cli, "workflow", "list", env=viewer_env)
    assert "others may read it" in err

    broken = tmp_path / "broken.toml"
    broken.write_text("token = \n")
    code, out, err = await run_command(
        cli, "whoami", env=command_env(flowyard, tmp_path, FLOWYARD_CONFIG=str(broken))
    )
    assert code == 2 and "not valid TOML" in err
