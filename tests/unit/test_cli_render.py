"""The flowyard CLI: rendering runs and workflows, local validation, errors, exit codes.

No network: commands run through ``main([...])`` against an in-memory fake gateway.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from flowyard import codec
from flowyard.cli import main as cli
from flowyard.cli import render, rpc, workflows
from flowyard.domain.definition import parse_definition
from flowyard.domain.json import JsonValue
from flowyard.v1 import gateway_pb2, run_pb2, workflow_pb2
from google.protobuf import any_pb2, timestamp_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
STACK = 'Traceback (most recent call last):\n  File "<node charge>", line 3\nValueError: declined'
DECLINED = run_pb2.TaskError(
    code="code.exception", message="ValueError: card declined", stack_trace=STACK
)


def at(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(T0 + timedelta(seconds=seconds))
    return stamp


def make_task(
    node_id: str,
    status: run_pb2.TaskStatus.ValueType,
    *,
    kind: str = "code",
    start: float | None = None,
    end: float | None = None,
    data_in: JsonValue = None,
    data_out: JsonValue = None,
    error: run_pb2.TaskError | None = None,
    attempts: int = 0,
) -> run_pb2.Task:
    task = run_pb2.Task(node_id=node_id, name=node_id, type=kind, status=status, error=error)
    if start is not None:
        task.started_at.CopyFrom(at(start))
    if end is not None:
        task.finished_at.CopyFrom(at(end))  # no duration field: the renderer computes it
    if start is not None:
        task.input.CopyFrom(codec.json_to_value(data_in))
        task.output.CopyFrom(codec.json_to_value(data_out))
    for number in range(1, attempts + 1):
        task.attempts.add(number=number, status=status, started_at=at(start or 0))
    return task


def failed_run() -> run_pb2.Run:
    run = run_pb2.Run(
        run_id="run-1",
        workflow_name="checkout",
        workflow_type="payments",
        workflow_version=3,
        status=run_pb2.RUN_STATUS_FAILED,
        trigger=run_pb2.TriggerInfo(kind="api", started_by="alice", detail="gRPC StartRun"),
        created_at=at(0),
        started_at=at(0),
        finished_at=at(1.5),
        failed_node_id="charge",
        error=DECLINED,
    )
    run.duration.FromMilliseconds(1500)
    run.tasks.extend(
        [
            make_task("start", run_pb2.TASK_STATUS_SUCCEEDED, kind="trigger", start=0, end=0,
                      data_in={"order": 7}, data_out={"order": 7}, attempts=1),
            make_task("charge", run_pb2.TASK_STATUS_FAILED, start=0.25, end=1.5,
                      data_in={"order": 7, "amount": 12.5}, error=DECLINED, attempts=1),
            make_task("ship", run_pb2.TASK_STATUS_CANCELLED),
        ]
    )  # fmt: skip
    return run


# --- the run detail --------------------------------------------------------------------


def test_a_failed_run_shows_the_failing_task_its_error_and_stack_trace() -> None:
    text = render.render_run(failed_run(), tz=UTC)
    assert "checkout v3 (type payments)" in text
    assert "failed (at node charge: code.exception: ValueError: card declined)" in text
    assert "api, started by alice (gRPC StartRun)" in text
    assert "2026-03-01 12:00:00" in text
    assert "Duration: 1.50s" in text
    table = text.split("\n\n")[1].splitlines()
    assert table[0].split() == ["NODE", "TYPE", "STATUS", "STARTED", "DURATION", "ATTEMPTS"]
    rows = {line.split()[0]: line.split() for line in table[1:]}
    assert rows["charge"] == ["charge", "code", "failed", "12:00:00", "1.25s", "1"]
    assert rows["start"][2] == "succeeded"
    assert rows["ship"] == ["ship", "code", "cancelled", "-", "-", "0"]
    assert 'input:  {"amount":12.5,"order":7}' in text
    assert "error code: code.exception" in text
    assert "message:    ValueError: card declined" in text
    for line in STACK.splitlines():
        assert line in text
    # The run's error is the charge task's: shown once, under the task.
    assert text.count("stack trace:") == 1


def test_a_run_level_error_without_a_task_is_still_shown() -> None:
    run = failed_run()
    del run.tasks[:]
    run.error.stack_trace = "engine trace"
    text = render.render_run(run, tz=UTC)
    assert "(no tasks)" in text
    assert "run error (node charge):" in text
    assert "engine trace" in text


def test_long_values_are_cut_in_table_mode_only() -> None:
    run = failed_run()
    run.tasks[0].output.CopyFrom(codec.json_to_value({"blob": "x" * 1000}))
    line = next(x for x in render.render_run(run, tz=UTC).splitlines() if "output:" in x)
    assert len(line) < 300
    assert "chars; -o json shows all)" in line
    full = render.render_run(run, tz=UTC, value_limit=None)
    assert "x" * 1000 in full


def test_retries_and_a_running_task_show_attempts_and_time_so_far() -> None:
    run = failed_run()
    run.status = run_pb2.RUN_STATUS_RUNNING
    run.ClearField("finished_at")
    run.ClearField("duration")
    run.ClearField("error")
    charge = run.tasks[1]
    charge.status = run_pb2.TASK_STATUS_RUNNING
    charge.ClearField("finished_at")
    charge.attempts[0].status = run_pb2.TASK_STATUS_FAILED
    charge.attempts[0].error.CopyFrom(DECLINED)
    charge.attempts.add(number=2, status=run_pb2.TASK_STATUS_RUNNING, started_at=at(1))
    text = render.render_run(run, tz=UTC, now=T0 + timedelta(seconds=3))
    assert "Duration: 3.00s so far" in text
    row = next(line.split() for line in text.splitlines() if line.startswith("charge "))
    assert row[2:] == ["running", "12:00:00", "2.75s+", "2"]
    assert "last failed attempt (attempt 1):" in text
    assert "#1  failed" in text
    assert "code.exception: ValueError: card declined" in text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0.00s"), (1.234, "1.23s"), (59.9, "59.90s"), (125, "2m05s"), (3725, "1h02m05s")],
)
def test_durations_read_naturally(seconds: float, text: str) -> None:
    assert render.format_seconds(seconds) == text


# --- watching --------------------------------------------------------------------------


def test_watch_lines_name_each_task_status_change_with_its_duration() -> None:
    queued = failed_run()
    queued.status = run_pb2.RUN_STATUS_QUEUED
    for task in queued.tasks:
        task.status = run_pb2.TASK_STATUS_PENDING
        del task.attempts[:]
    assert render.changed_tasks(None, queued) == []
    final = failed_run()
    changed = render.changed_tasks(queued, final)
    assert [t.node_id for t in changed] == ["start", "charge", "ship"]
    assert render.changed_tasks(final, final) == []
    lines = [render.render_task_change(t, node_width=6, tz=UTC, now=T0) for t in changed]
    assert lines[0] == "12:00:00  start   succeeded     0.00s"
    assert lines[1].split()[:4] == ["12:00:01", "charge", "failed", "1.25s"]
    assert lines[1].endswith("code.exception: ValueError: card declined")
    assert lines[2].split()[2:] == ["cancelled", "-"]


def test_a_retry_shows_as_retrying_with_the_failed_attempt() -> None:
    task = make_task("charge", run_pb2.TASK_STATUS_PENDING, start=0, error=DECLINED, attempts=1)
    line = render.render_task_change(task, tz=UTC, now=T0 + timedelta(seconds=9))
    assert line.startswith("12:00:09  charge  retrying")
    assert "attempt 1 failed: code.exception: ValueError: card declined" in line


def test_run_results_and_exit_codes() -> None:
    run = failed_run()
    text = render.render_run_result(run)
    assert text.splitlines()[0] == "run run-1 failed in 1.50s"
    assert "failed task: charge" in text
    assert "ValueError: card declined" in text
    assert STACK.splitlines()[-1] in text
    assert render.watch_exit_code(run) == 1
    run.status = run_pb2.RUN_STATUS_SUCCEEDED
    run.duration.FromMilliseconds(1230)
    assert render.render_run_result(run) == "run run-1 succeeded in 1.23s"
    assert render.watch_exit_code(run) == 0
    run.status = run_pb2.RUN_STATUS_STOPPED
    assert render.watch_exit_code(run) == 1


# --- workflows -------------------------------------------------------------------------

DEFINITION: dict[str, Any] = {
    "name": "checkout",
    "type": "payments",
    "context": {"currency": "EUR"},
    "nodes": [
        {"id": "start", "type": "trigger"},
        {
            "id": "charge",
            "type": "code",
            "stage": "pay",
            "retry": {"max_attempts": 3},
            "config": {"source": "x = 1\nresult = {'x': x}\n"},
        },
    ],
    "edges": [{"from": "start", "to": "charge"}],
}


def stored(version: int = 2) -> workflow_pb2.Workflow:
    definition = codec.definition_to_proto(parse_definition(DEFINITION))
    return workflow_pb2.Workflow(
        workflow_id="wf-1",
        version=version,
        state=workflow_pb2.WORKFLOW_STATE_ACTIVE,
        definition=definition,
        created_at=at(0),
    )


def test_workflow_get_prints_a_document_that_applies_back_unchanged() -> None:
    workflow = stored()
    text = workflows.render_workflow_yaml(workflow, tz=UTC)
    assert text.startswith("# workflow checkout version 2 (active), id wf-1")
    assert "source: |" in text  # code stays readable
    again = codec.definition_to_proto(parse_definition(yaml.safe_load(text)))
    assert again == workflow.definition
    from_json = json.loads(workflows.render_workflow_json(workflow))
    assert codec.definition_to_proto(parse_definition(from_json)) == workflow.definition


def test_workflow_list_is_a_table() -> None:
    lines = workflows.render_workflows([stored(4)]).splitlines()
    assert lines[0].split() == ["NAME", "VERSION", "STATE", "TYPE", "TRIGGERS", "NEXT", "FIRE",
                                "LAST", "RUN"]  # fmt: skip
    assert lines[1].split() == ["checkout", "4", "active", "payments", "-", "-", "-"]


def test_workflow_list_shows_triggers_next_fire_time_and_last_run() -> None:
    workflow = stored(4)
    workflow.triggers.extend(["manual", "schedule '*/5 * * * *' Europe/Berlin", "webhook"])
    workflow.next_fire_at.FromDatetime(datetime(2026, 5, 1, 10, 5, tzinfo=UTC))
    workflow.last_run.run_id = "r-9"
    workflow.last_run.status = "succeeded"
    workflow.last_run.created_at.FromDatetime(datetime(2026, 5, 1, 10, 0, 2, tzinfo=UTC))
    row = workflows.render_workflows([workflow], tz=UTC).splitlines()[1]
    assert "manual, schedule '*/5 * * * *' Europe/Berlin, webhook" in row
    assert row.endswith("2026-05-01 10:05:00  succeeded 2026-05-01 10:00:02 r-9")


# --- commands against a fake gateway ---------------------------------------------------


class FakeGateway:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.snapshots: list[run_pb2.Run] = []
        self.error: grpc.RpcError | None = None
        self.workflows = self
        self.runs = self
        self.address = ""
        self.metadata: rpc.Metadata = ()

    def _record(self, name: str, request: Any) -> None:
        self.calls.append((name, request))
        if self.error is not None:
            raise self.error

    def ApplyWorkflow(
        self, request: gateway_pb2.ApplyWorkflowRequest, **_: Any
    ) -> gateway_pb2.ApplyWorkflowResponse:
        self._record("ApplyWorkflow", request)
        workflow = workflow_pb2.Workflow(version=5, definition=request.definition)
        return gateway_pb2.ApplyWorkflowResponse(workflow=workflow, created=True)

    def ListWorkflows(
        self, request: gateway_pb2.ListWorkflowsRequest, **_: Any
    ) -> gateway_pb2.ListWorkflowsResponse:
        self._record("ListWorkflows", request)
        return gateway_pb2.ListWorkflowsResponse()

    def StartRun(
        self, request: gateway_pb2.StartRunRequest, **_: Any
    ) -> gateway_pb2.StartRunResponse:
        self._record("StartRun", request)
        return gateway_pb2.StartRunResponse(run_id="run-1", created=True)

    def GetRun(self, request: gateway_pb2.GetRunRequest, **_: Any) -> run_pb2.Run:
        self._record("GetRun", request)
        return failed_run()

    def WatchRun(self, request: gateway_pb2.WatchRunRequest, **_: Any) -> Iterator[run_pb2.Run]:
        self._record("WatchRun", request)
        return iter(self.snapshots)


@pytest.fixture
def gateway(monkeypatch: pytest.MonkeyPatch) -> FakeGateway:
    fake = FakeGateway()
    monkeypatch.setenv("FLOWYARD_TOKEN", "secret")

    @contextmanager
    def connect(address: str, metadata: rpc.Metadata) -> Iterator[Any]:
        fake.calls.append(("connect", (address, metadata)))
        fake.address, fake.metadata = address, metadata
        yield fake

    monkeypatch.setattr(rpc, "connect", connect)
    return fake


def test_apply_names_every_problem_locally_and_exits_2(
    tmp_path: Path, gateway: FakeGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(
        "name: broken\n"
        "nodes:\n"
        "  - {id: start, type: trigger}\n"
        "  - {id: a, type: code, config: {source: 'result = 1'}}\n"
        "  - {id: b, type: code, config: {source: 'result = 2'}}\n"
        "  - {id: warp, type: teleport}\n"
        "edges:\n"
        "  - {from: start, to: a}\n"
        "  - {from: a, to: b}\n"
        "  - {from: b, to: a}\n"
    )
    assert cli.main(["workflow", "apply", "-f", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: node 'warp': unknown node type 'teleport'" in err
    assert f"{path}: edges: the graph has a cycle through a -> b -> a" in err
    assert "nothing was applied" in err
    assert not [c for c in gateway.calls if c[0] == "ApplyWorkflow"]


def test_apply_sends_valid_files_with_the_token(
    tmp_path: Path, gateway: FakeGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "checkout.yaml"
    path.write_text(yaml.safe_dump(DEFINITION))
    assert cli.main(["workflow", "apply", "-f", str(path), "--server", "gw:1"]) == 0
    assert capsys.readouterr().out == "applied checkout version 5\n"
    assert gateway.calls[0] == ("connect", ("gw:1", (("authorization", "Bearer secret"),)))
    sent = gateway.calls[1][1].definition
    assert sent == codec.definition_to_proto(parse_definition(DEFINITION))


def test_run_start_watch_streams_changes_and_fails_with_the_error(
    gateway: FakeGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    running = failed_run()
    running.status = run_pb2.RUN_STATUS_RUNNING
    running.tasks[1].status = run_pb2.TASK_STATUS_RUNNING
    running.tasks[2].status = run_pb2.TASK_STATUS_PENDING
    gateway.snapshots = [running, failed_run()]
    code = cli.main(["run", "start", "checkout", "--input", '{"order": 7}', "--watch"])
    assert code == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "run-1"
    request = gateway.calls[1][1]
    assert codec.value_to_json(request.input) == {"order": 7}
    statuses = [line.split()[1:3] for line in out[1:5]]
    assert statuses == [
        ["start", "succeeded"],
        ["charge", "running"],
        ["charge", "failed"],
        ["ship", "cancelled"],
    ]
    assert "run run-1 failed in 1.50s" in out
    assert any(STACK.splitlines()[-1] in line for line in out)


def test_run_get_json_and_bad_input(
    gateway: FakeGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["run", "get", "run-1", "-o", "json"]) == 0
    assert '"failedNodeId": "charge"' in capsys.readouterr().out
    assert cli.main(["run", "start", "checkout", "--input", "{nope"]) == 2
    assert "--input is not valid JSON" in capsys.readouterr().err


# --- gRPC errors -----------------------------------------------------------------------


class FakeCallError(grpc.RpcError, grpc.Call):
    def __init__(
        self, code: grpc.StatusCode, details: str, status: status_pb2.Status | None = None
    ) -> None:
        self._code, self._details = code, details
        self._trailing: tuple[tuple[str, bytes], ...] = ()
        if status is not None:
            self._trailing = (("grpc-status-details-bin", status.SerializeToString()),)

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> Any:
        return self._trailing

    def initial_metadata(self) -> Any:
        return ()

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float:
        return 0.0

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: Any) -> bool:
        return False


def test_not_found_is_one_line_and_exits_1(
    gateway: FakeGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    gateway.error = FakeCallError(grpc.StatusCode.NOT_FOUND, "run 'x' not found")
    assert cli.main(["run", "get", "x"]) == 1
    assert capsys.readouterr().err == "error: NOT_FOUND: run 'x' not found\n"


def test_invalid_argument_lists_every_field_violation() -> None:
    message = "invalid workflow definition: node 'a': bad; edges: the graph has a cycle"
    request = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field="node 'a'", description="bad"),
            error_details_pb2.BadRequest.FieldViolation(
                field="edges", description="the graph has a cycle"
            ),
        ]
    )
    packed = any_pb2.Any()
    packed.Pack(request)
    status = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=message, details=[packed])
    error = FakeCallError(grpc.StatusCode.INVALID_ARGUMENT, message, status)
    code, text = rpc.describe_rpc_error(error, "gw:1")
    assert code == 1
    assert text.splitlines() == [
        "error: INVALID_ARGUMENT: invalid workflow definition",
        "  node 'a': bad",
        "  edges: the graph has a cycle",
    ]


def test_an_unreachable_gateway_names_the_address_and_exits_3(
    gateway: FakeGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    gateway.error = FakeCallError(grpc.StatusCode.UNAVAILABLE, "failed to connect to all")
    assert cli.main(["--server", "10.9.9.9:7", "workflow", "list"]) == 3
    assert "cannot reach the Flowyard gateway at 10.9.9.9:7" in capsys.readouterr().err
    # UNAVAILABLE sent by the gateway itself (Kafka down) is a server error, not exit 3.
    status = status_pb2.Status(code=code_pb2.UNAVAILABLE, message="kafka down")
    served = FakeCallError(grpc.StatusCode.UNAVAILABLE, "kafka down", status)
    assert rpc.describe_rpc_error(served, "gw:1") == (1, "error: UNAVAILABLE: kafka down")


def test_address_and_token_come_from_flag_then_environment() -> None:
    assert rpc.server_address(None, {}) == "127.0.0.1:50051"
    assert rpc.server_address(None, {"FLOWYARD_GRPC_ADDR": "gw:9"}) == "gw:9"
    assert rpc.server_address("cli:1", {"FLOWYARD_GRPC_ADDR": "gw:9"}) == "cli:1"
    assert rpc.call_metadata({}) == ()
    assert rpc.call_metadata({"FLOWYARD_TOKEN": "t"}) == (("authorization", "Bearer t"),)


# --- workflow states, clones and dry runs ------------------------------------------------


def test_a_dry_run_says_so_instead_of_a_version() -> None:
    run = failed_run()
    run.test = True
    run.workflow_version = 0
    header = render.render_run(run, tz=UTC).splitlines()[1]
    assert header == "Workflow: checkout [dry run] (type payments)"
    assert "v0" not in render.render_run(run, tz=UTC)


class LifecycleGateway(FakeGateway):
    def SetWorkflowState(
        self, request: gateway_pb2.SetWorkflowStateRequest, **_: Any
    ) -> workflow_pb2.Workflow:
        self._record("SetWorkflowState", request)
        definition = workflow_pb2.WorkflowDefinition(name=request.name)
        return workflow_pb2.Workflow(version=2, state=request.state, definition=definition)

    def CloneWorkflow(
        self, request: gateway_pb2.CloneWorkflowRequest, **_: Any
    ) -> workflow_pb2.Workflow:
        self._record("CloneWorkflow", request)
        definition = workflow_pb2.WorkflowDefinition(name=request.new_name)
        return workflow_pb2.Workflow(
            version=1, state=workflow_pb2.WORKFLOW_STATE_DRAFT, definition=definition
        )

    def DryRunWorkflow(
        self, request: gateway_pb2.DryRunWorkflowRequest, **_: Any
    ) -> gateway_pb2.StartRunResponse:
        self._record("DryRunWorkflow", request)
        return gateway_pb2.StartRunResponse(run_id="run-1", created=True)


@pytest.fixture
def lifecycle(monkeypatch: pytest.MonkeyPatch) -> LifecycleGateway:
    fake = LifecycleGateway()

    @contextmanager
    def connect(address: str, metadata: rpc.Metadata) -> Iterator[Any]:
        yield fake

    monkeypatch.setattr(rpc, "connect", connect)
    return fake


def test_pause_and_activate_set_the_state(
    lifecycle: LifecycleGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["workflow", "pause", "checkout"]) == 0
    assert cli.main(["workflow", "activate", "checkout"]) == 0
    sent = [(r.name, r.state) for name, r in lifecycle.calls if name == "SetWorkflowState"]
    assert sent == [
        ("checkout", workflow_pb2.WORKFLOW_STATE_PAUSED),
        ("checkout", workflow_pb2.WORKFLOW_STATE_ACTIVE),
    ]
    assert capsys.readouterr().out.splitlines() == [
        "checkout is paused (version 2)",
        "checkout is active (version 2)",
    ]


def test_clone_names_the_draft_and_how_to_activate_it(
    lifecycle: LifecycleGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["workflow", "clone", "checkout", "checkout-v2"]) == 0
    request = lifecycle.calls[0][1]
    assert (request.source, request.new_name) == ("checkout", "checkout-v2")
    captured = capsys.readouterr()
    assert captured.out == "cloned checkout as checkout-v2 version 1 (draft)\n"
    assert "flowyard workflow activate checkout-v2" in captured.err


def test_a_refused_state_change_is_one_line_and_exits_1(
    lifecycle: LifecycleGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    message = "workflow 'checkout' is paused; activate it to start runs"
    lifecycle.error = FakeCallError(grpc.StatusCode.FAILED_PRECONDITION, message)
    assert cli.main(["workflow", "pause", "checkout"]) == 1
    assert capsys.readouterr().err == f"error: FAILED_PRECONDITION: {message}\n"


def test_workflow_test_sends_the_file_and_input_and_follows_the_run(
    tmp_path: Path, lifecycle: LifecycleGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "checkout.yaml"
    path.write_text(yaml.safe_dump(DEFINITION))
    sample = tmp_path / "sample.yaml"
    sample.write_text("order: 7\n")
    run = failed_run()
    run.test = True
    lifecycle.snapshots = [run]

    code = cli.main(["workflow", "test", str(path), "--input", f"@{sample}", "--watch"])

    assert code == 1  # the run failed
    request = lifecycle.calls[0][1]
    assert request.definition == codec.definition_to_proto(parse_definition(DEFINITION))
    assert codec.value_to_json(request.input) == {"order": 7}
    out = capsys.readouterr().out
    assert out.startswith("run-1\n")
    assert "Workflow: checkout [dry run] (type payments)" in out
    assert [name for name, _ in lifecycle.calls] == ["DryRunWorkflow", "WatchRun"]


def test_workflow_test_checks_the_file_and_input_before_sending(
    tmp_path: Path, lifecycle: LifecycleGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: broken\nnodes:\n  - {id: warp, type: teleport}\nedges: []\n")
    assert cli.main(["workflow", "test", str(broken)]) == 2
    assert "node 'warp': unknown node type 'teleport'" in capsys.readouterr().err
    path = tmp_path / "checkout.yaml"
    path.write_text(yaml.safe_dump(DEFINITION))
    assert cli.main(["workflow", "test", str(path), "--input", "{nope"]) == 2
    assert "--input: not valid JSON" in capsys.readouterr().err
    assert cli.main(["workflow", "test", str(path), "--input", "@missing.json"]) == 2
    assert "--input: missing.json: cannot read" in capsys.readouterr().err
    assert not lifecycle.calls
    assert cli.main(["workflow", "test", str(path), "--input", '{"order": 1}']) == 0
    assert capsys.readouterr().out == "run-1\n"
    assert codec.value_to_json(lifecycle.calls[0][1].input) == {"order": 1}


def test_run_detail_shows_when_a_delay_resumes_its_child_runs_and_warnings() -> None:
    pause = make_task("pause", run_pb2.TASK_STATUS_WAITING, kind="wait", start=1)
    pause.due_at.CopyFrom(at(60))
    child = make_task("reorder", run_pb2.TASK_STATUS_RUNNING, kind="run_workflow", start=2)
    child.child_run_id = "c0ffee"
    check = make_task("stock", run_pb2.TASK_STATUS_SUCCEEDED, kind="query", start=0, end=1)
    check.warnings.append("query value 12 is above the warning threshold 10")
    run = run_pb2.Run(
        run_id="r1",
        workflow_name="restock",
        workflow_version=2,
        status=run_pb2.RUN_STATUS_WAITING,
        tasks=[check, pause, child],
        warnings=["stock: query value 12 is above the warning threshold 10"],
        parent_run_id="p1",
        parent_node_id="call",
    )

    text = render.render_run(run, tz=UTC, now=T0 + timedelta(seconds=5))

    assert "resumes at 2026-03-01 12:01:00" in text
    assert "child run: c0ffee" in text
    assert "Warning:" in text and "stock: query value 12" in text
    assert "  warning: query value 12 is above the warning threshold 10" in text
    assert "Started by run:" in text and "p1 (node call)" in text
