"""``flowyard run stop|retry|restart|rerun|skip|resume|replay|compare|resolutions|resolve``
against an in-memory gateway, and the audit trail in ``run get``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from flowyard import codec
from flowyard.cli import main as cli
from flowyard.cli import render, rpc
from flowyard.v1 import gateway_pb2, run_pb2
from google.protobuf import timestamp_pb2

from tests.unit.test_cli_render import FakeCallError


class FakeControl:
    """RunControlService, RunService.WatchRun: records requests, answers canned replies."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.control = self
        self.runs = self
        self.metadata: rpc.Metadata = ()
        self.refuse: grpc.RpcError | None = None

    def _accept(self, method: str, request: Any) -> gateway_pb2.CommandAccepted:
        self.calls.append((method, request))
        if self.refuse is not None:
            raise self.refuse
        return gateway_pb2.CommandAccepted(run_id=request.run_id, command_id=request.request_id)

    def StopRun(self, request: Any, **_: Any) -> Any:
        return self._accept("StopRun", request)

    def RetryTask(self, request: Any, **_: Any) -> Any:
        return self._accept("RetryTask", request)

    def RestartRun(self, request: Any, **_: Any) -> Any:
        return self._accept("RestartRun", request)

    def RerunFrom(self, request: Any, **_: Any) -> Any:
        return self._accept("RerunFrom", request)

    def SkipTask(self, request: Any, **_: Any) -> Any:
        return self._accept("SkipTask", request)

    def ResumeRun(self, request: Any, **_: Any) -> Any:
        return self._accept("ResumeRun", request)

    def ApplyResolution(self, request: Any, **_: Any) -> Any:
        return self._accept("ApplyResolution", request)

    def ReplayRun(self, request: Any, **_: Any) -> gateway_pb2.StartRunResponse:
        self.calls.append(("ReplayRun", request))
        return gateway_pb2.StartRunResponse(run_id="replay-1", created=True)

    def WatchRun(self, request: Any, **_: Any) -> Iterator[run_pb2.Run]:
        self.calls.append(("WatchRun", request))
        return iter([run_pb2.Run(run_id=request.run_id, status=run_pb2.RUN_STATUS_SUCCEEDED)])

    def CompareRuns(self, request: Any, **_: Any) -> gateway_pb2.CompareRunsResponse:
        self.calls.append(("CompareRuns", request))
        return gateway_pb2.CompareRunsResponse(
            status=run_pb2.RUN_STATUS_SUCCEEDED,
            other_status=run_pb2.RUN_STATUS_FAILED,
            tasks=[
                gateway_pb2.TaskComparison(
                    node_id="fetch",
                    status=run_pb2.TASK_STATUS_SUCCEEDED,
                    other_status=run_pb2.TASK_STATUS_SUCCEEDED,
                    duration_seconds=0.5,
                    other_duration_seconds=0.75,
                    output=codec.json_to_value({"n": 1}),
                    other_output=codec.json_to_value({"n": 1}),
                ),
                gateway_pb2.TaskComparison(
                    node_id="total",
                    status=run_pb2.TASK_STATUS_SUCCEEDED,
                    other_status=run_pb2.TASK_STATUS_FAILED,
                    duration_seconds=1.0,
                    other_duration_seconds=2.0,
                    output_differs=True,
                    output=codec.json_to_value(4),
                    other_output=codec.json_to_value(None),
                ),
                gateway_pb2.TaskComparison(node_id="new", other_status=run_pb2.TASK_STATUS_PENDING),
            ],
        )

    def ListResolutions(self, request: Any, **_: Any) -> gateway_pb2.ListResolutionsResponse:
        self.calls.append(("ListResolutions", request))
        return gateway_pb2.ListResolutionsResponse(
            resolutions=[
                gateway_pb2.Resolution(
                    kind="override_parameter",
                    node_id="check",
                    explanation="raise the threshold for this run only, then retry the check",
                    error_class="threshold",
                    parameters=["warning_threshold", "failure_threshold"],
                ),
                gateway_pb2.Resolution(
                    kind="skip_task",
                    node_id="check",
                    explanation="skip it",
                    error_class="threshold",
                ),
            ]
        )


@pytest.fixture
def gateway(monkeypatch: pytest.MonkeyPatch) -> FakeControl:
    fake = FakeControl()

    @contextmanager
    def connect(*_: Any, **__: Any) -> Iterator[Any]:
        yield fake

    monkeypatch.setattr(rpc, "connect", connect)
    return fake


def only(gateway: FakeControl, method: str) -> Any:
    [request] = [r for m, r in gateway.calls if m == method]
    return request


def test_stop_sends_cleanup_comment_and_a_fresh_request_id(
    gateway: FakeControl, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["run", "stop", "r1", "--cleanup", "--comment", "wrong input"]) == 0
    assert cli.main(["run", "stop", "r1"]) == 0
    first, second = [r for m, r in gateway.calls if m == "StopRun"]
    assert first.run_id == "r1" and first.cleanup and first.comment == "wrong input"
    assert not second.cleanup
    assert first.request_id and second.request_id and first.request_id != second.request_id
    out, err = capsys.readouterr()
    assert f"stop with cleanup: accepted for run r1 (command {first.request_id})" in out
    assert "flowyard run get r1 --watch" in err


@pytest.mark.parametrize(
    ("argv", "method", "fields"),
    [
        (["retry", "r1", "fetch"], "RetryTask", {"node_id": "fetch"}),
        (["restart", "r1"], "RestartRun", {}),
        (
            ["rerun", "r1", "b", "--comment", "again"],
            "RerunFrom",
            {"node_id": "b", "comment": "again"},
        ),
        (["resume", "r1", "--request-id", "mine"], "ResumeRun", {"request_id": "mine"}),
        (["skip", "r1", "lookup"], "SkipTask", {"node_id": "lookup"}),
    ],
)
def test_each_command_sends_its_request(
    gateway: FakeControl, argv: list[str], method: str, fields: dict[str, str]
) -> None:
    assert cli.main(["run", *argv]) == 0
    request = only(gateway, method)
    assert request.run_id == "r1" and request.request_id
    for name, value in fields.items():
        assert getattr(request, name) == value


def test_skip_takes_the_output_downstream_sees(gateway: FakeControl) -> None:
    assert cli.main(["run", "skip", "r1", "lookup", "--output", '{"region": "eu"}']) == 0
    request = only(gateway, "SkipTask")
    assert request.HasField("output")
    assert codec.value_to_json(request.output) == {"region": "eu"}


def test_bad_json_is_a_usage_error(
    gateway: FakeControl, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["run", "skip", "r1", "lookup", "--output", "{nope"]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert not gateway.calls


def test_a_refused_command_exits_1_naming_the_state(
    gateway: FakeControl, capsys: pytest.CaptureFixture[str]
) -> None:
    gateway.refuse = FakeCallError(
        grpc.StatusCode.FAILED_PRECONDITION, "run r1 is succeeded; only a failed run can restart"
    )
    assert cli.main(["run", "restart", "r1"]) == 1
    err = capsys.readouterr().err
    assert "FAILED_PRECONDITION" in err and "succeeded" in err


def test_replay_prints_the_new_run_and_can_watch_it(
    gateway: FakeControl, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["run", "replay", "r1", "--input", '{"n": 5}', "--watch"]) == 0
    request = only(gateway, "ReplayRun")
    assert request.run_id == "r1" and codec.value_to_json(request.input) == {"n": 5}
    assert only(gateway, "WatchRun").run_id == "replay-1"
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "replay-1"
    assert "run replay-1 succeeded" in out


def test_replay_without_input_keeps_the_original_data(gateway: FakeControl) -> None:
    assert cli.main(["run", "replay", "r1"]) == 0
    assert not only(gateway, "ReplayRun").HasField("input")
    assert not [m for m, _ in gateway.calls if m == "WatchRun"]


def test_compare_shows_a_row_per_task_and_the_outputs_that_differ(
    gateway: FakeControl, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["run", "compare", "a1", "b2"]) == 0
    out = capsys.readouterr().out
    assert "A: a1 (succeeded)" in out and "B: b2 (failed)" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    assert rows["NODE"][:3] == ["NODE", "STATUS", "A"]
    assert rows["fetch"] == ["fetch", "succeeded", "same", "0.50s", "0.75s", "same"]
    assert rows["total"] == ["total", "succeeded", "failed", "1.00s", "2.00s", "differs"]
    assert rows["new"] == ["new", "-", "pending", "-", "-", "same"]
    assert "total:\n  A: 4\n  B: null" in out


def test_resolutions_are_listed_with_how_to_apply_them(
    gateway: FakeControl, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["run", "resolutions", "r1"]) == 0
    out = capsys.readouterr().out
    assert "override_parameter" in out and "threshold" in out
    assert "(--set warning_threshold|failure_threshold=...)" in out
    assert "flowyard run resolve r1 KIND" in out


def test_resolve_sends_the_overrides_as_typed_values(gateway: FakeControl) -> None:
    argv = ["run", "resolve", "r1", "override_parameter", "--node", "check"]
    argv += ["--set", "failure_threshold=50", "--set", "note=raised", "--comment", "ok today"]
    assert cli.main(argv) == 0
    request = only(gateway, "ApplyResolution")
    assert (request.kind, request.node_id, request.comment) == (
        "override_parameter",
        "check",
        "ok today",
    )
    assert codec.struct_to_json(request.parameters) == {"failure_threshold": 50, "note": "raised"}


def test_resolve_needs_key_value_settings(
    gateway: FakeControl, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["run", "resolve", "r1", "override_parameter", "--set", "oops"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    assert not gateway.calls


def stamp(text: str) -> timestamp_pb2.Timestamp:
    value = timestamp_pb2.Timestamp()
    value.FromDatetime(datetime.fromisoformat(text).replace(tzinfo=UTC))
    return value


def test_run_get_shows_the_audit_trail_and_what_a_replay_replays() -> None:
    run = run_pb2.Run(
        run_id="r2",
        workflow_name="stock",
        workflow_version=2,
        status=run_pb2.RUN_STATUS_SUCCEEDED,
        trigger=run_pb2.TriggerInfo(kind="replay", detail="r1", started_by="dana"),
        replay_of="r1",
        audit=[
            run_pb2.AuditEntry(
                at=stamp("2026-03-01T12:00:00"),
                actor="dana",
                action="retry_task",
                node_id="check",
                comment="12 is fine today",
                detail="override failure_threshold=50",
            ),
            run_pb2.AuditEntry(at=stamp("2026-03-01T12:05:00"), actor="lee", action="stop"),
        ],
    )
    text = render.render_run(run, tz=UTC)
    assert "Replay of:" in text and "r1" in text.split("Replay of:")[1].splitlines()[0]
    audit = text.split("Audit:\n")[1].split("\n\n")[0].splitlines()
    assert audit == [
        "  2026-03-01 12:00:00  dana  retry_task check (override failure_threshold=50): "
        '"12 is fine today"',
        "  2026-03-01 12:05:00  lee  stop",
    ]
    assert "Audit:" not in render.render_run(run_pb2.Run(run_id="x"), tz=UTC)
