"""CSV export (H4), analytics against known seeded runs (H5), retention purge and storage
counts (H7), and the CLI commands for history, graphs, logs, export, analytics and purge."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flowyard import codec
from flowyard.adapters.history import HistoryStore, LogChunk
from flowyard.adapters.mongo import MongoStore
from flowyard.domain.definition import parse_definition
from flowyard.domain.run import Attempt, RunStatus, TaskStatus
from flowyard.history.logs import LogRecord
from flowyard.v1 import gateway_pb2, history_pb2, history_pb2_grpc, run_pb2

from tests.e2e.conftest import RunningFlowyard
from tests.history_seed import Seed, make_run, seed_docs

pytestmark = pytest.mark.e2e

Eventually = Callable[..., Awaitable[Any]]
NOW = datetime.now(UTC).replace(microsecond=0)
DAY = timedelta(days=1)


def stub(flowyard: RunningFlowyard) -> history_pb2_grpc.HistoryServiceStub:
    return history_pb2_grpc.HistoryServiceStub(flowyard.channel)


async def store_of(flowyard: RunningFlowyard) -> MongoStore:
    store = MongoStore(flowyard.settings.mongo_url, flowyard.settings.mongo_db)
    return await store.__aenter__()


# --- CSV export ----------------------------------------------------------------------------


async def test_export_streams_every_matching_run_as_csv_in_chunks(
    flowyard: RunningFlowyard,
) -> None:
    store = await store_of(flowyard)
    try:
        seeds = [
            Seed(
                "bulk",
                NOW - timedelta(seconds=i),
                RunStatus.FAILED if i % 10 == 0 else RunStatus.SUCCEEDED,
            )
            for i in range(2500)
        ]
        seeds.append(Seed("=cmd|' /C calc'!A0", NOW, RunStatus.FAILED))
        await store.runs.insert_many(seed_docs(seeds), ordered=False)
    finally:
        await store.__aexit__(None, None, None)
    history = stub(flowyard)

    chunks = [
        chunk
        async for chunk in history.ExportRuns(
            history_pb2.ExportRunsRequest(filter=history_pb2.RunFilter(workflow="bulk"))
        )
    ]
    # A header chunk, then the rows in chunks of at most 2000 runs (never all at once).
    assert chunks[0].rows == 0
    assert [c.rows for c in chunks[1:]] == [2000, 500]
    rows = list(csv.reader(io.StringIO(b"".join(c.data for c in chunks).decode())))
    header, body = rows[0], rows[1:]
    assert header[:5] == ["run_id", "workflow", "workflow_type", "version", "status"]
    assert len(body) == 2500 and len({r[0] for r in body}) == 2500
    created = [r[header.index("created_at")] for r in body]
    assert created == sorted(created, reverse=True)
    assert body[0][header.index("duration_seconds")] == "10.000"

    failed = [
        chunk
        async for chunk in history.ExportRuns(
            history_pb2.ExportRunsRequest(
                filter=history_pb2.RunFilter(statuses=[run_pb2.RUN_STATUS_FAILED])
            )
        )
    ]
    failed_rows = list(csv.reader(io.StringIO(b"".join(c.data for c in failed).decode())))[1:]
    assert len(failed_rows) == 251
    # A name that a spreadsheet would run as a formula is defused.
    assert "'=cmd|' /C calc'!A0" in [r[1] for r in failed_rows]
    assert {r[header.index("error_code")] for r in failed_rows} == {"code.exception"}


# --- analytics -------------------------------------------------------------------------------


def _analytics_seeds() -> list[Seed]:
    day1 = (NOW - 3 * DAY).replace(hour=9, minute=0, second=0)
    day2 = (NOW - 2 * DAY).replace(hour=9, minute=0, second=0)
    ok = TaskStatus.SUCCEEDED
    seeds = [
        # "etl" (type data): 4 runs on day 1 (3 ok, 1 failed), 1 on day 2 (ok).
        *(
            Seed(
                "etl",
                day1 + timedelta(minutes=i),
                RunStatus.SUCCEEDED,
                workflow_type="data",
                duration=timedelta(seconds=10 * (i + 1)),
                steps=(("extract", ok, 2.0 * (i + 1)), ("load", ok, 1.0)),
            )
            for i in range(3)
        ),
        Seed(
            "etl",
            day1 + timedelta(minutes=5),
            RunStatus.FAILED,
            workflow_type="data",
            duration=timedelta(seconds=40),
            steps=(("extract", TaskStatus.FAILED, 8.0),),
        ),
        Seed(
            "etl",
            day2,
            RunStatus.SUCCEEDED,
            workflow_type="data",
            duration=timedelta(seconds=50),
            steps=(("extract", ok, 10.0), ("load", ok, 1.0)),
        ),
        # "mail" (type comms): 2 runs on day 2, both ok, 1 s each.
        *(
            Seed(
                "mail",
                day2 + timedelta(minutes=i),
                RunStatus.SUCCEEDED,
                workflow_type="comms",
                duration=timedelta(seconds=1),
                steps=(("send", ok, 0.5),),
            )
            for i in range(2)
        ),
        # Too old for the default 30 days.
        Seed("etl", NOW - 40 * DAY, RunStatus.FAILED, workflow_type="data"),
        # Active runs: one queued; one running with a dispatched-not-started task and a
        # running one.
        Seed("etl", NOW, RunStatus.QUEUED, workflow_type="data", duration=None, steps=()),
        Seed(
            "etl",
            NOW,
            RunStatus.RUNNING,
            workflow_type="data",
            duration=None,
            steps=(("extract", TaskStatus.RUNNING, 1.0), ("load", TaskStatus.PENDING, 1.0)),
        ),
    ]
    return seeds


async def test_analytics_figures_match_the_seeded_runs(flowyard: RunningFlowyard) -> None:
    seeds = _analytics_seeds()
    docs = seed_docs(seeds)
    # The running run's "load" task was dispatched (attempt 1) but has not started.
    running = docs[-1]
    running["tasks"][1]["attempt"] = 1
    store = await store_of(flowyard)
    try:
        await store.runs.insert_many(docs)
    finally:
        await store.__aexit__(None, None, None)

    result = await stub(flowyard).GetAnalytics(history_pb2.GetAnalyticsRequest())
    assert result.runs == 9  # all but the 40-day-old run
    etl, mail = result.workflows
    assert (etl.workflow, etl.workflow_type, etl.runs, etl.succeeded, etl.failed) == (
        "etl",
        "data",
        7,
        4,
        1,
    )
    assert etl.success_rate == pytest.approx(0.8)
    # Finished etl runs took 10, 20, 30, 40, 50 s.
    assert etl.duration.count == 5
    assert etl.duration.avg_seconds == pytest.approx(30.0)
    assert etl.duration.p95_seconds == pytest.approx(50.0)
    assert etl.duration.max_seconds == pytest.approx(50.0)
    assert (mail.runs, mail.success_rate, mail.duration.avg_seconds) == (2, 1.0, 1.0)

    steps = {(s.workflow, s.node_id): s for s in result.steps}
    extract = steps[("etl", "extract")]
    # 2, 4, 6, 8 (failed), 10 s
    assert extract.duration.count == 5 and extract.failed == 1
    assert extract.duration.avg_seconds == pytest.approx(6.0)
    assert extract.duration.p95_seconds == pytest.approx(10.0)
    assert steps[("etl", "load")].duration.avg_seconds == pytest.approx(1.0)
    assert [(s.workflow, s.node_id) for s in result.slowest_steps] == [
        ("etl", "extract"),
        ("etl", "load"),
        ("mail", "send"),
    ]

    types = {t.workflow_type: t for t in result.types}
    assert types["data"].success_rate == pytest.approx(0.8)
    assert types["comms"].runs == 2

    days = {d.day: d for d in result.days}
    day1 = (NOW - 3 * DAY).date().isoformat()
    day2 = (NOW - 2 * DAY).date().isoformat()
    assert (days[day1].runs, days[day1].succeeded, days[day1].failed) == (4, 3, 1)
    assert days[day1].avg_seconds == pytest.approx(25.0)  # trend: 10, 20, 30, 40
    assert (days[day2].runs, days[day2].success_rate) == (3, 1.0)
    assert days[day2].avg_seconds == pytest.approx(52 / 3)

    assert result.queue.queued_runs == 1
    assert result.queue.dispatched_not_started == 1
    assert result.queue.running_tasks == 1

    only_mail = await stub(flowyard).GetAnalytics(
        history_pb2.GetAnalyticsRequest(filter=history_pb2.RunFilter(workflow_type="comms"))
    )
    assert [w.workflow for w in only_mail.workflows] == ["mail"]


# --- retention -------------------------------------------------------------------------------


async def test_purge_deletes_expired_runs_with_their_attempts_and_logs(
    flowyard: RunningFlowyard,
) -> None:
    definition = parse_definition(
        {
            "name": "keeper",
            "retention_days": 7,
            "nodes": [
                {"id": "start", "type": "trigger"},
                {"id": "fetch", "type": "code", "config": {"source": "result = 1"}},
            ],
            "edges": [{"from": "start", "to": "fetch"}],
        }
    )
    applied = await flowyard.workflows.ApplyWorkflow(
        gateway_pb2.ApplyWorkflowRequest(definition=codec.definition_to_proto(definition))
    )
    assert applied.workflow.definition.retention_days == 7
    workflow_id = applied.workflow.workflow_id

    old = [Seed("keeper", NOW - (8 + i) * DAY) for i in range(7)]
    recent = [Seed("keeper", NOW - i * DAY) for i in range(3)]
    still_running = Seed("keeper", NOW - 30 * DAY, RunStatus.RUNNING, duration=None)
    forever = [Seed("no-retention", NOW - 400 * DAY)]
    runs = [make_run(s) for s in [*old, *recent, still_running, *forever]]
    store = await store_of(flowyard)
    history = HistoryStore(store)
    try:
        for run in runs:
            await store.insert_run(run)
            await store.save_attempt(
                Attempt(run.run_id, "fetch", 1, TaskStatus.SUCCEEDED, started_at=run.created_at)
            )
            line = LogRecord(run.run_id, "fetch", 1, 0, run.created_at, "stdout", "", "hi")
            await history.append_logs(
                LogChunk(
                    run.run_id,
                    workflow_id if run.workflow_name == "keeper" else run.workflow_id,
                    "fetch",
                    1,
                    0,
                    [line, line],
                )
            )
    finally:
        await store.__aexit__(None, None, None)
    service = stub(flowyard)

    counts = await service.GetStorageCounts(history_pb2.GetStorageCountsRequest())
    keeper = next(w for w in counts.workflows if w.workflow == "keeper")
    assert (keeper.runs, keeper.log_lines, keeper.retention_days) == (11, 22, 7)
    assert keeper.oldest_run.ToDatetime(tzinfo=UTC) == NOW - 30 * DAY

    dry = await service.PurgeRuns(history_pb2.PurgeRunsRequest(dry_run=True))
    assert dry.dry_run and dry.runs == 7

    purged = await service.PurgeRuns(history_pb2.PurgeRunsRequest(batch_size=3))
    (entry,) = purged.workflows
    assert (entry.workflow, entry.runs, entry.attempts, entry.log_chunks) == ("keeper", 7, 7, 7)

    left = await service.ListRuns(
        history_pb2.ListRunsRequest(filter=history_pb2.RunFilter(workflow="keeper"))
    )
    assert {r.run_id for r in left.runs} == {r.run_id for r in runs[7:11]}
    store = await store_of(flowyard)
    try:
        gone = [r.run_id for r in runs[:7]]
        assert await store.attempts.count_documents({"run_id": {"$in": gone}}) == 0
        assert await store.runs.database["logs"].count_documents({"run_id": {"$in": gone}}) == 0
        assert await store.attempts.count_documents({}) == 5
    finally:
        await store.__aexit__(None, None, None)
    again = await service.PurgeRuns(history_pb2.PurgeRunsRequest())
    assert again.runs == 0


# --- the CLI ---------------------------------------------------------------------------------


async def cli(flowyard: RunningFlowyard, tmp_path: Path, *argv: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FLOWYARD_TOKEN", "FLOWYARD_CONFIG")}
    env.update(
        FLOWYARD_GRPC_ADDR=flowyard.address,
        XDG_CONFIG_HOME=str(tmp_path / "no-config"),
    )
    if flowyard.admin is not None:
        env["FLOWYARD_TOKEN"] = flowyard.admin.token
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "flowyard.cli",
        *argv,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_cli_lists_exports_graphs_logs_analyses_and_purges(
    flowyard: RunningFlowyard, tmp_path: Path, eventually: Eventually
) -> None:
    from tests.e2e.test_run_end_to_end import CHAIN, apply, finished_run

    await apply(flowyard, CHAIN)
    started = await flowyard.runs.StartRun(
        gateway_pb2.StartRunRequest(workflow="price-check", input=codec.json_to_value({"price": 7}))
    )
    await finished_run(flowyard, started.run_id, eventually)
    run_id = started.run_id

    code, out, err = await cli(
        flowyard,
        tmp_path,
        "run",
        "list",
        "--status",
        "succeeded,failed",
        "--workflow",
        "price-check",
        "--since",
        "24h",
        "--search",
        "price",
        "--sort",
        "duration",
    )
    assert code == 0, err
    assert run_id in out and "succeeded" in out and "price-check" in out

    code, out, err = await cli(flowyard, tmp_path, "run", "list", "--status", "sleepy")
    assert code == 2 and "--status" in err

    target = tmp_path / "runs.csv"
    code, _, err = await cli(flowyard, tmp_path, "run", "export", "--csv", "-o", str(target))
    assert code == 0, err
    assert "exported 1 runs" in err
    assert run_id in target.read_text()

    code, out, err = await cli(flowyard, tmp_path, "run", "graph", run_id, "--format", "mermaid")
    assert code == 0, err
    assert out.startswith("---") and "flowchart LR" in out

    log_file = tmp_path / "run.log"
    code, _, err = await cli(
        flowyard, tmp_path, "run", "logs", run_id, "--task", "decide", "-o", str(log_file)
    )
    assert code == 0, err
    text = log_file.read_text()
    assert "decide#1 stdout checking {'price': 14}" in text
    code, out, err = await cli(
        flowyard, tmp_path, "run", "logs", run_id, "--follow", "--grep", "CHECK"
    )
    assert code == 0, err
    assert out.count("\n") == 1 and "checking" in out
    code, out, err = await cli(flowyard, tmp_path, "run", "logs", run_id, "--errors")
    assert code == 0 and out == ""

    code, out, err = await cli(flowyard, tmp_path, "analytics", "--workflow", "price-check")
    assert code == 0, err
    assert "1 runs from" in out and "price-check" in out and "100.0%" in out

    code, out, err = await cli(flowyard, tmp_path, "admin", "purge", "--dry-run")
    assert code == 0, err
    assert "nothing expired" in out
    code, out, err = await cli(flowyard, tmp_path, "admin", "storage")
    assert code == 0, err
    assert "price-check" in out and "total: 1 runs" in out
