"""Hostile gRPC input against the running gateway (hypothesis, bounded in time).

Every method of every flowyard.v1 service the gateway serves (found through reflection
and the generated descriptors, so methods added later are fuzzed without a change here)
gets random and malformed requests as raw bytes: messages with random field values built
from the method's request descriptor, the same bytes damaged, plain random bytes. Each
call must end with a status that is the caller's fault (INVALID_ARGUMENT, NOT_FOUND,
FAILED_PRECONDITION, ...), never INTERNAL or UNKNOWN (a bug) nor UNAVAILABLE (the gateway
or its stores gave way); afterwards the gateway still serves and what was stored before
is unchanged, and a normal run still completes.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from flowyard import codec
from flowyard.domain.json import MAX_DEPTH
from flowyard.v1 import auth_pb2, gateway_pb2, run_pb2
from flowyard_api_gateway.__main__ import MAX_MESSAGE_BYTES
from google.protobuf.descriptor import MethodDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from hypothesis import Phase, given, settings

from tests.e2e.conftest import RunningFlowyard
from tests.e2e.test_run_end_to_end import apply, finished_run
from tests.fuzzing import FUZZ, flowyard_files, payloads

pytestmark = [
    pytest.mark.e2e,
    # Strategies built from whole descriptors have long reprs; and the services, running on
    # the test's loop while hypothesis generates in a worker thread, use `random` (jitter).
    pytest.mark.filterwarnings("ignore:Generating overly large repr"),
    pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies"),
]

Eventually = Callable[..., Awaitable[Any]]

# Examples per method: with ~50 methods, 25 take about 15 s here (FLOWYARD_FUZZ_EXAMPLES
# raises it for a longer search).
EXAMPLES_PER_METHOD = int(os.environ.get("FLOWYARD_FUZZ_EXAMPLES", "25"))
CALL_SECONDS = 10.0
STREAM_SECONDS = 2.0  # a stream may rightly go on (a live run): read it this long
MAX_STREAM_ITEMS = 20

# The server gave way or has a bug, whatever the input was.
NEVER = {
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DATA_LOSS,
    grpc.StatusCode.CANCELLED,
}


def guard_workflow(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "type": "fuzz",
        "context": {"factor": 3},
        "nodes": [
            {"id": "start", "type": "trigger"},
            {"id": "triple", "type": "code", "config": {"source": "result = trigger['n'] * 3"}},
        ],
        "edges": [{"from": "start", "to": "triple"}],
    }


@dataclass(frozen=True)
class Outcome:
    code: grpc.StatusCode
    details: str


def method_path(method: MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


async def call(channel: grpc.aio.Channel, method: MethodDescriptor, payload: bytes) -> Outcome:
    """One call with ``payload`` as the raw request bytes; the status it ended with."""
    path = method_path(method)
    try:
        if method.client_streaming:
            requests = iter([payload, payload])
            if method.server_streaming:
                await _drain(channel.stream_stream(path)(requests, timeout=STREAM_SECONDS))
            else:
                await channel.stream_unary(path)(requests, timeout=CALL_SECONDS)
        elif method.server_streaming:
            await _drain(channel.unary_stream(path)(payload, timeout=STREAM_SECONDS))
        else:
            await channel.unary_unary(path)(payload, timeout=CALL_SECONDS)
    except grpc.aio.AioRpcError as exc:
        return Outcome(exc.code(), exc.details() or "")
    return Outcome(grpc.StatusCode.OK, "")


async def _drain(stream: Any) -> None:
    count = 0
    try:
        async for _item in stream:
            count += 1
            if count >= MAX_STREAM_ITEMS:
                stream.cancel()
                return
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
            raise  # still going when we stopped reading: fine, it was not refused


def acceptable(method: MethodDescriptor, outcome: Outcome) -> bool:
    if outcome.code in NEVER:
        return False
    # A unary call that does not answer within 10 s hangs on its input.
    return not (outcome.code == grpc.StatusCode.DEADLINE_EXCEEDED and not method.server_streaming)


async def served_services(channel: grpc.aio.Channel) -> set[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    async for response in stub.ServerReflectionInfo(iter([request])):
        return {service.name for service in response.list_services_response.service}
    raise AssertionError("reflection answered nothing")


async def fuzzed_methods(channel: grpc.aio.Channel) -> list[MethodDescriptor]:
    served = {name for name in await served_services(channel) if name.startswith("flowyard.v1.")}
    known = {
        service.full_name: service
        for file in flowyard_files()
        for service in file.services_by_name.values()
    }
    assert served, "the gateway serves no flowyard.v1 service"
    assert served <= set(known), f"served without a generated descriptor: {served - set(known)}"
    return [method for name in sorted(served) for method in known[name].methods]


def fuzz_method(
    loop: asyncio.AbstractEventLoop,
    channel: grpc.aio.Channel,
    method: MethodDescriptor,
    hints: list[str],
    failures: list[str],
) -> int:
    """Hypothesis examples for one method (run in a worker thread; the calls run on the
    test's loop, where the gateway serves). Returns how many calls were made."""
    calls = 0
    codes: dict[str, int] = {}

    @settings(FUZZ, max_examples=EXAMPLES_PER_METHOD, phases=[Phase.explicit, Phase.generate])
    @given(payload=payloads(method.input_type, hints))
    def check(payload: bytes) -> None:
        nonlocal calls
        calls += 1
        future = asyncio.run_coroutine_threadsafe(call(channel, method, payload), loop)
        outcome = future.result(timeout=CALL_SECONDS + 5)
        codes[outcome.code.name] = codes.get(outcome.code.name, 0) + 1
        if not acceptable(method, outcome):
            failures.append(
                f"{method_path(method)} -> {outcome.code.name}: {outcome.details[:300]} "
                f"(request bytes {payload[:120].hex()}{'...' if len(payload) > 120 else ''})"
            )

    check()
    print(f"  {method_path(method)}: {dict(sorted(codes.items()))}")
    return calls


async def test_random_and_malformed_requests_get_a_clear_status_and_change_nothing(
    flowyard: RunningFlowyard, eventually: Eventually
) -> None:
    # Stored before the fuzzing: a workflow whose name the fuzzer never sees.
    guard_name = f"fuzz-guard-{uuid.uuid4().hex}"
    await apply(flowyard, guard_workflow(guard_name))
    guard_before = await flowyard.workflows.GetWorkflow(
        gateway_pb2.GetWorkflowRequest(name=guard_name)
    )
    # A workflow and a run the fuzzer does know, so requests also get past "not found".
    await apply(flowyard, guard_workflow("fuzz-target"))
    started = await flowyard.runs.StartRun(
        gateway_pb2.StartRunRequest(workflow="fuzz-target", input=codec.json_to_value({"n": 1}))
    )
    await finished_run(flowyard, started.run_id, eventually)
    # Not the admin's own name: RevokeToken would rightly revoke the fuzzer's token.
    hints = ["fuzz-target", started.run_id, "start", "triple", "fuzz"]

    methods = await fuzzed_methods(flowyard.channel)
    loop = asyncio.get_running_loop()
    failures: list[str] = []
    began = time.monotonic()
    calls = 0
    for method in methods:
        calls += await asyncio.to_thread(
            fuzz_method, loop, flowyard.channel, method, hints, failures
        )
        # Still the admin after each method (else the rest would only test authentication).
        who = await flowyard.tokens.WhoAmI(auth_pb2.WhoAmIRequest())
        assert who.name == flowyard.principal, f"after {method_path(method)}: {who}"
    elapsed = time.monotonic() - began
    print(f"fuzzed {len(methods)} methods with {calls} calls in {elapsed:.1f} s")
    assert not failures, "\n".join(failures)

    # The gateway still serves, and what was stored before is as it was.
    health = health_pb2_grpc.HealthStub(flowyard.channel)
    status = await health.Check(health_pb2.HealthCheckRequest())
    assert status.status == health_pb2.HealthCheckResponse.SERVING
    guard_after = await flowyard.workflows.GetWorkflow(
        gateway_pb2.GetWorkflowRequest(name=guard_name)
    )
    assert guard_after == guard_before
    # And a normal run still goes through gateway, scheduler and executor.
    run = await flowyard.runs.StartRun(
        gateway_pb2.StartRunRequest(workflow=guard_name, input=codec.json_to_value({"n": 14}))
    )
    finished = await finished_run(flowyard, run.run_id, eventually)
    assert finished.status == run_pb2.RUN_STATUS_SUCCEEDED
    assert codec.value_to_json(finished.tasks[-1].output) == 42


async def test_without_a_token_nothing_is_parsed_and_every_method_is_unauthenticated(
    flowyard: RunningFlowyard,
) -> None:
    methods = await fuzzed_methods(flowyard.channel)
    async with grpc.aio.insecure_channel(flowyard.address) as anonymous:
        for method in methods:
            outcome = await call(anonymous, method, b"\xff\xfe not a protobuf message")
            assert outcome.code == grpc.StatusCode.UNAUTHENTICATED, (method_path(method), outcome)


async def test_malformed_bytes_are_invalid_argument_naming_the_message_type(
    flowyard: RunningFlowyard,
) -> None:
    path = "/flowyard.v1.WorkflowService/GetWorkflow"
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await flowyard.channel.unary_unary(path)(b"\x0a\x05ab", timeout=CALL_SECONDS)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "flowyard.v1.GetWorkflowRequest" in (refused.value.details() or "")


async def test_data_a_run_cannot_carry_is_invalid_argument(flowyard: RunningFlowyard) -> None:
    """A hand-made Value can hold NaN or an infinity, or nest deeper than the services can
    pass on (json.MAX_DEPTH); the gateway refuses it rather than a run failing later."""
    await apply(flowyard, guard_workflow("nan-target"))
    deep: Any = 1
    for _ in range(MAX_DEPTH + 1):
        deep = {"a": deep}
    for data, says in ((float("nan"), "not JSON"), (float("inf"), "not JSON"), (deep, "deeper")):
        request = gateway_pb2.StartRunRequest(workflow="nan-target")
        request.input.struct_value.update({"n": data})
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await flowyard.runs.StartRun(request, timeout=CALL_SECONDS)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert says in (refused.value.details() or "")


async def test_an_output_the_services_cannot_pass_on_fails_its_task_and_the_run_ends(
    flowyard: RunningFlowyard, eventually: Eventually
) -> None:
    source = f"result = 1\nfor _ in range({MAX_DEPTH + 5}):\n    result = {{'a': result}}"
    await apply(
        flowyard,
        {
            "name": "too-deep",
            "nodes": [
                {"id": "start", "type": "trigger"},
                {"id": "deep", "type": "code", "config": {"source": source}},
                {"id": "after", "type": "code", "config": {"source": "result = 1"}},
            ],
            "edges": [{"from": "start", "to": "deep"}, {"from": "deep", "to": "after"}],
        },
    )
    started = await flowyard.runs.StartRun(gateway_pb2.StartRunRequest(workflow="too-deep"))
    run = await finished_run(flowyard, started.run_id, eventually)
    assert run.status == run_pb2.RUN_STATUS_FAILED
    assert run.error.code == "task.output_not_json"
    assert "nested deeper" in run.error.message


async def test_messages_over_the_size_limit_are_refused_and_the_gateway_goes_on(
    flowyard: RunningFlowyard,
) -> None:
    apply_path = "/flowyard.v1.WorkflowService/ApplyWorkflow"
    # A well-formed request just over the limit: a huge description.
    request = gateway_pb2.ApplyWorkflowRequest()
    request.definition.name = "too-big"
    request.definition.description = "x" * MAX_MESSAGE_BYTES
    oversized = request.SerializeToString()
    assert len(oversized) > MAX_MESSAGE_BYTES
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await flowyard.channel.unary_unary(apply_path)(oversized, timeout=CALL_SECONDS)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # Just under the limit it is read, and refused for what it says (not a valid workflow).
    request.definition.description = "x" * (MAX_MESSAGE_BYTES - 1024)
    with pytest.raises(grpc.aio.AioRpcError) as invalid:
        await flowyard.workflows.ApplyWorkflow(request, timeout=CALL_SECONDS)
    assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # The gateway goes on serving.
    listed = await flowyard.workflows.ListWorkflows(gateway_pb2.ListWorkflowsRequest())
    assert all(w.definition.name != "too-big" for w in listed.workflows)
