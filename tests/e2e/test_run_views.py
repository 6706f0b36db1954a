"""Views of one run through the gateway: detail without skipped tasks or warnings (R5),
its graph as DOT and Mermaid (R6), and its task logs, filtered, searched and tailed (H3)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from flowyard import codec
from flowyard.v1 import gateway_pb2, history_pb2, history_pb2_grpc, run_pb2

from tests.e2e.conftest import RunningFlowyard
from tests.e2e.test_run_end_to_end import apply, finished_run

pytestmark = pytest.mark.e2e

Eventually = Callable[..., Awaitable[Any]]

LOUD = """
import logging, sys
print("hello from yes")
print("second line", trigger["n"])
logging.info("just so you know")
logging.warning("disk almost full")
print("raw stderr", file=sys.stderr)
result = {"ok": True}
"""


def branching(db: Path) -> dict[str, Any]:
    return {
        "name": "branching",
        "type": "ops",
        "nodes": [
            {"id": "start", "type": "trigger"},
            {
                "id": "check",
                "type": "query",
                "config": {
                    "source": {"kind": "sqlite", "path": str(db), "sql": "SELECT 5"},
                    "warning_threshold": 1,
                    "failure_threshold": 100,
                },
            },
            {"id": "decide", "type": "condition", "config": {"expression": "trigger.go"}},
            {"id": "yes", "name": "Say yes", "type": "code", "config": {"source": LOUD}},
            {"id": "no-way", "type": "code", "config": {"source": "result = 1"}},
        ],
        "edges": [
            {"from": "start", "to": "check"},
            {"from": "check", "to": "decide"},
            {"from": "decide", "to": "yes", "when": True},
            {"from": "decide", "to": "no-way", "when": False},
        ],
    }


async def branching_run(flowyard: RunningFlowyard, tmp_path: Path, eventually: Eventually) -> str:
    db = tmp_path / "empty.db"
    sqlite3.connect(db).close()
    await apply(flowyard, branching(db))
    started = await flowyard.runs.StartRun(
        gateway_pb2.StartRunRequest(
            workflow="branching", input=codec.json_to_value({"go": True, "n": 7})
        )
    )
    run = await finished_run(flowyard, started.run_id, eventually)
    assert run.status == run_pb2.RUN_STATUS_SUCCEEDED, run
    return started.run_id


def stub(flowyard: RunningFlowyard) -> history_pb2_grpc.HistoryServiceStub:
    return history_pb2_grpc.HistoryServiceStub(flowyard.channel)


async def test_run_detail_can_hide_skipped_tasks_and_warnings(
    flowyard: RunningFlowyard, tmp_path: Path, eventually: Eventually
) -> None:
    run_id = await branching_run(flowyard, tmp_path, eventually)
    full = await flowyard.runs.GetRun(gateway_pb2.GetRunRequest(run_id=run_id))
    assert "no-way" in [t.node_id for t in full.tasks]
    assert full.warnings and any(t.warnings for t in full.tasks)

    lean = await flowyard.runs.GetRun(
        gateway_pb2.GetRunRequest(run_id=run_id, hide_skipped=True, hide_warnings=True)
    )
    assert [t.node_id for t in lean.tasks] == [
        t.node_id for t in full.tasks if t.status != run_pb2.TASK_STATUS_SKIPPED
    ]
    assert "no-way" not in [t.node_id for t in lean.tasks]
    assert not lean.warnings
    assert not any(t.warnings for t in lean.tasks)
    assert not any(a.warnings for t in lean.tasks for a in t.attempts)

    only_skipped_hidden = await flowyard.runs.GetRun(
        gateway_pb2.GetRunRequest(run_id=run_id, hide_skipped=True)
    )
    assert only_skipped_hidden.warnings == full.warnings


async def test_run_graph_as_dot_and_mermaid_coloured_by_state(
    flowyard: RunningFlowyard, tmp_path: Path, eventually: Eventually
) -> None:
    run_id = await branching_run(flowyard, tmp_path, eventually)
    history = stub(flowyard)

    dot = await history.GetRunGraph(history_pb2.GetRunGraphRequest(run_id=run_id))
    assert dot.format == history_pb2.GRAPH_FORMAT_DOT
    text = dot.text
    assert text.startswith("digraph run {") and text.rstrip().endswith("}")
    assert '"yes" [label="Say yes\\ncode · succeeded", fillcolor="#43a047"' in text
    assert '"no-way" [label="no-way\\ncode · skipped", fillcolor="#e0e0e0"' in text
    assert '"decide" -> "no-way" [label="false", style=dashed];' in text
    assert '"decide" -> "yes" [label="true"];' in text

    mermaid = await history.GetRunGraph(
        history_pb2.GetRunGraphRequest(run_id=run_id, format=history_pb2.GRAPH_FORMAT_MERMAID)
    )
    lines = mermaid.text.splitlines()
    assert "flowchart LR" in lines
    assert '  n3["Say yes<br/>code · succeeded"]:::succeeded' in lines
    assert '  n4["no-way<br/>code · skipped"]:::skipped' in lines
    assert "  n2 -.->|false| n4" in lines
    assert "  classDef skipped fill:#e0e0e0,color:#616161,stroke:#424242" in lines

    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await history.GetRunGraph(history_pb2.GetRunGraphRequest(run_id="nope"))
    assert missing.value.code() is grpc.StatusCode.NOT_FOUND


def texts(response: history_pb2.GetLogsResponse) -> list[str]:
    return [line.text for line in response.lines]


async def test_logs_are_stored_per_attempt_and_filtered(
    flowyard: RunningFlowyard, tmp_path: Path, eventually: Eventually
) -> None:
    run_id = await branching_run(flowyard, tmp_path, eventually)
    history = stub(flowyard)

    everything = await history.GetLogs(history_pb2.GetLogsRequest(run_id=run_id))
    assert texts(everything) == [
        "hello from yes",
        "second line 7",
        "INFO just so you know",
        "WARNING disk almost full",
        "raw stderr",
    ]
    first = everything.lines[0]
    assert (first.node_id, first.attempt, first.seq, first.stream) == ("yes", 1, 0, "stdout")
    assert first.HasField("time")
    assert [line.level for line in everything.lines] == ["", "", "INFO", "WARNING", ""]
    assert [line.seq for line in everything.lines] == [0, 1, 2, 3, 4]

    output = await history.GetLogs(
        history_pb2.GetLogsRequest(run_id=run_id, filter=history_pb2.LOG_FILTER_OUTPUT)
    )
    assert texts(output) == ["hello from yes", "second line 7"]
    errors = await history.GetLogs(
        history_pb2.GetLogsRequest(run_id=run_id, filter=history_pb2.LOG_FILTER_ERRORS)
    )
    assert texts(errors) == ["WARNING disk almost full", "raw stderr"]
    grep = await history.GetLogs(history_pb2.GetLogsRequest(run_id=run_id, grep="SECOND"))
    assert texts(grep) == ["second line 7"]
    other_task = await history.GetLogs(history_pb2.GetLogsRequest(run_id=run_id, task="check"))
    assert texts(other_task) == []

    # A run that has ended: the tail sends what is stored and closes.
    tail = [
        line.text async for line in history.TailLogs(history_pb2.TailLogsRequest(run_id=run_id))
    ]
    assert tail == texts(everything)


async def test_a_failed_attempt_logs_its_error_and_retries_are_kept_apart(
    flowyard: RunningFlowyard, eventually: Eventually
) -> None:
    await apply(
        flowyard,
        {
            "name": "flaky",
            "nodes": [
                {"id": "start", "type": "trigger"},
                {
                    "id": "boom",
                    "type": "code",
                    "retry": {"max_attempts": 2, "initial_backoff_seconds": 0.1},
                    "config": {"source": "print('trying')\nraise ValueError('no luck')"},
                },
            ],
            "edges": [{"from": "start", "to": "boom"}],
        },
    )
    started = await flowyard.runs.StartRun(gateway_pb2.StartRunRequest(workflow="flaky"))
    await finished_run(flowyard, started.run_id, eventually)
    history = stub(flowyard)
    lines = (await history.GetLogs(history_pb2.GetLogsRequest(run_id=started.run_id))).lines
    assert [(line.attempt, line.text) for line in lines] == [
        (1, "trying"),
        (1, "task failed: code.exception: ValueError: no luck"),
        (2, "trying"),
        (2, "task failed: code.exception: ValueError: no luck"),
    ]
    second = await history.GetLogs(
        history_pb2.GetLogsRequest(
            run_id=started.run_id, attempt=2, filter=history_pb2.LOG_FILTER_ERRORS
        )
    )
    assert [(line.level, line.stream) for line in second.lines] == [("ERROR", "stderr")]


async def test_tail_follows_a_running_run_until_it_ends(
    flowyard: RunningFlowyard, eventually: Eventually
) -> None:
    await apply(
        flowyard,
        {
            "name": "slow-talker",
            "nodes": [
                {"id": "start", "type": "trigger"},
                {"id": "one", "type": "code", "config": {"source": "print('first')"}},
                {"id": "pause", "type": "wait", "config": {"seconds": 2}},
                {"id": "two", "type": "code", "config": {"source": "print('second')"}},
            ],
            "edges": [
                {"from": "start", "to": "one"},
                {"from": "one", "to": "pause"},
                {"from": "pause", "to": "two"},
            ],
        },
    )
    started = await flowyard.runs.StartRun(gateway_pb2.StartRunRequest(workflow="slow-talker"))
    history = stub(flowyard)
    received: list[tuple[str, float]] = []
    loop = asyncio.get_running_loop()
    begun = loop.time()
    async for line in history.TailLogs(history_pb2.TailLogsRequest(run_id=started.run_id)):
        received.append((line.text, loop.time() - begun))
    assert [text for text, _ in received] == ["first", "second"]
    # The first line came while the run was still waiting, not at its end.
    assert received[1][1] - received[0][1] >= 1.5
    run = await flowyard.runs.GetRun(gateway_pb2.GetRunRequest(run_id=started.run_id))
    assert run.status == run_pb2.RUN_STATUS_SUCCEEDED
