"""The pure parts of history: log classification, CSV rows, analytics arithmetic, graph
text, detail trimming and the CLI's rendering and argument parsing."""

from __future__ import annotations

import argparse
import csv
import io
from datetime import UTC, datetime, timedelta

import pytest
from flowyard import codec
from flowyard.cli import history as cli
from flowyard.domain.definition import parse_definition
from flowyard.domain.run import RunStatus, TaskStatus
from flowyard.history import analytics, graph
from flowyard.history.csv_export import COLUMNS, CsvWriter
from flowyard.history.detail import trim_run_view
from flowyard.history.logs import LogFilter, LogRecord, level_of
from flowyard.v1 import history_pb2, run_pb2

from tests.history_seed import Seed, make_run, seed_docs

NOW = datetime(2025, 12, 3, 10, 0, tzinfo=UTC)


def record(stream: str, text: str) -> LogRecord:
    return LogRecord("r", "n", 1, 0, NOW, stream, level_of(stream, text), text)


def test_log_levels_and_filters() -> None:
    assert level_of("stderr", "WARNING disk") == "WARNING"
    assert level_of("stdout", "WARNING disk") == ""
    assert level_of("stderr", "Traceback (most recent call last):") == ""
    info, warn, raw, out = (
        record("stderr", "INFO ok"),
        record("stderr", "ERROR bad"),
        record("stderr", "boom"),
        record("stdout", "hello"),
    )
    assert [r.matches(LogFilter.ERRORS) for r in (info, warn, raw, out)] == [
        False,
        True,
        True,
        False,
    ]
    assert [r.matches(LogFilter.OUTPUT) for r in (info, warn, raw, out)] == [
        False,
        False,
        False,
        True,
    ]
    assert out.matches(LogFilter.ALL, "HELL") and not out.matches(LogFilter.ALL, "bye")
    assert warn.render() == "2025-12-03T10:00:00.000Z n#1 stderr ERROR ERROR bad"


def test_csv_rows_are_quoted_and_defused() -> None:
    docs = seed_docs(
        [
            Seed("a,b", NOW, RunStatus.FAILED, duration=timedelta(milliseconds=1500)),
            Seed("@sum(1)", NOW, RunStatus.RUNNING, duration=None),
        ]
    )
    writer = CsvWriter()
    rows = list(csv.reader(io.StringIO((writer.header() + writer.rows(docs)).decode())))
    assert tuple(rows[0]) == COLUMNS
    first, second = (dict(zip(COLUMNS, r, strict=True)) for r in rows[1:])
    assert first["workflow"] == "a,b" and first["duration_seconds"] == "1.500"
    assert first["error_code"] == "code.exception" and first["status"] == "failed"
    assert first["created_at"] == "2025-12-03T10:00:00.000Z"
    assert second["workflow"] == "'@sum(1)" and second["duration_seconds"] == ""


def test_percentile_is_nearest_rank() -> None:
    assert analytics.percentile([], 0.95) == 0.0
    assert analytics.percentile([3.0], 0.95) == 3.0
    values = [float(v) for v in range(1, 21)]
    assert analytics.percentile(values, 0.95) == 19.0
    assert analytics.percentile(values, 0.5) == 10.0


def test_tally_success_rate_ignores_stopped_runs() -> None:
    tally = analytics.Tally()
    for status in ("succeeded", "succeeded", "failed", "stopped"):
        tally.add(status, 1.0)
    assert tally.runs == 4 and tally.success_rate == pytest.approx(2 / 3)


DEFINITION = parse_definition(
    {
        "name": "say-hi",
        "nodes": [
            {"id": "start", "type": "trigger"},
            {"id": "if", "type": "condition", "config": {"expression": "trigger.x"}},
            {"id": "yes-1", "type": "code", "name": '<"Yes">', "config": {"source": "x"}},
            {"id": "no", "type": "code", "config": {"source": "x"}},
        ],
        "edges": [
            {"from": "start", "to": "if"},
            {"from": "if", "to": "yes-1", "when": True},
            {"from": "if", "to": "no", "when": False},
        ],
    }
)


def _run() -> object:
    return make_run(
        Seed(
            "say-hi",
            NOW,
            RunStatus.RUNNING,
            duration=None,
            steps=(
                ("start", TaskStatus.SUCCEEDED, 0.1),
                ("if", TaskStatus.SUCCEEDED, 0.1),
                ("yes-1", TaskStatus.RUNNING, 1.0),
                ("no", TaskStatus.SKIPPED, 0.0),
            ),
            run_id="r1",
        )
    )


def test_dot_escapes_and_colours() -> None:
    text = graph.to_dot(_run(), DEFINITION)  # type: ignore[arg-type]
    assert 'label="say-hi run r1 (running)";' in text
    assert '"yes-1" [label="<\\"Yes\\">\\ncode · running", fillcolor="#1e88e5"' in text
    assert '"if" -> "no" [label="false", style=dashed];' in text


def test_mermaid_uses_safe_ids_and_escapes_labels() -> None:
    text = graph.to_mermaid(_run(), DEFINITION)  # type: ignore[arg-type]
    assert '  n2["&lt;&quot;Yes&quot;&gt;<br/>code · running"]:::running' in text.splitlines()
    assert "  n1 -->|true| n2" in text.splitlines()
    assert "classDef running fill:#1e88e5" in text
    assert "classDef failed" not in text  # only the states in use


def test_trim_run_view() -> None:
    view = run_pb2.Run(
        warnings=["a: slow"],
        tasks=[
            run_pb2.Task(node_id="a", status=run_pb2.TASK_STATUS_SUCCEEDED, warnings=["slow"],
                         attempts=[run_pb2.Attempt(number=1, warnings=["slow"])]),
            run_pb2.Task(node_id="b", status=run_pb2.TASK_STATUS_SKIPPED),
        ],
    )  # fmt: skip
    assert trim_run_view(view) is view
    lean = trim_run_view(view, hide_skipped=True, hide_warnings=True)
    assert [t.node_id for t in lean.tasks] == ["a"]
    assert not lean.warnings and not lean.tasks[0].warnings
    assert not lean.tasks[0].attempts[0].warnings
    assert len(view.tasks) == 2 and view.warnings  # the original is untouched


def _args(**given: object) -> argparse.Namespace:
    fields = dict.fromkeys(
        ("status", "workflow", "version", "type", "trigger", "started_by", "since", "until",
         "search"),
    )  # fmt: skip
    fields.update(given)
    return argparse.Namespace(**fields)


def test_cli_filter_arguments() -> None:
    built = cli.run_filter(
        _args(status=["failed,stopped", "queued"], since="7d", until="2025-12-03", search="dec")
    )
    assert list(built.statuses) == [
        run_pb2.RUN_STATUS_FAILED, run_pb2.RUN_STATUS_STOPPED, run_pb2.RUN_STATUS_QUEUED,
    ]  # fmt: skip
    assert built.range == history_pb2.DATE_RANGE_LAST_7D
    assert built.until.ToDatetime(tzinfo=UTC) == datetime(2025, 12, 3, tzinfo=UTC)
    custom = cli.run_filter(_args(since="2025-12-01T08:00+01:00"))
    assert custom.since.ToDatetime(tzinfo=UTC) == datetime(2025, 12, 1, 7, tzinfo=UTC)
    with pytest.raises(cli.HistoryUsageError, match="--status"):
        cli.run_filter(_args(status=["sleepy"]))
    with pytest.raises(cli.HistoryUsageError, match="--since"):
        cli.run_filter(_args(since="last week"))


def test_cli_renders_a_run_list_and_analytics() -> None:
    run = history_pb2.RunSummary(
        run_id="r1",
        workflow_name="billing",
        workflow_version=2,
        status=run_pb2.RUN_STATUS_FAILED,
        trigger_kind="api",
        started_by="alice",
        created_at=codec.time_to_proto(NOW),
    )
    run.duration.FromSeconds(75)
    text = cli.render_run_list([run], "CUR", tz=UTC)
    assert "r1" in text and "billing" in text and "failed" in text and "1m15s" in text
    assert "2025-12-03 10:00:00" in text and text.endswith("more: --cursor CUR")
    assert cli.render_run_list([], "") == "no runs match"
    result = history_pb2.Analytics(
        runs=3,
        workflows=[history_pb2.WorkflowAnalytics(workflow="billing", runs=3, succeeded=2,
                                                 failed=1, success_rate=2 / 3)],
        queue=history_pb2.QueueDepth(consumer_lag=-1, dispatched_not_started=4),
    )  # fmt: skip
    rendered = cli.render_analytics(result, tz=UTC)
    assert "3 runs from the start" in rendered and "66.7%" in rendered
    assert "4 tasks dispatched, not started" in rendered and "lag unknown" in rendered
