"""History at scale: seed runs, then time a filtered history page, CSV export and the detail
of the largest run (500 tasks), all through the store code the gateway uses.

Seeds ``--runs`` run documents (20 workflows, 4 types, 5 trigger kinds, 30 days, three
tasks each, through the real document mapping) in batches, stopping early when
``--seed-seconds`` runs out, then measures:

* history page: ``HistoryStore.list_runs`` (50 runs) for common filters, p50/p95;
* CSV export: every run through ``HistoryStore.iter_runs`` + the CSV writer, runs/s;
* run detail: a 500-task run (the most a definition holds; its attempts too), mapped
  as ``RunService.GetRun`` does, p50/p95.

Usage: python bench/history.py [--runs 20000] [--seed-seconds 180] [--samples 5]
Needs the MongoDB-compatible server (FLOWYARD_MONGO_URL, else the local stack).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from flowyard import codec  # noqa: E402
from flowyard.adapters.history import HistoryStore  # noqa: E402
from flowyard.adapters.mongo import MongoStore  # noqa: E402
from flowyard.domain.definition import parse_definition  # noqa: E402
from flowyard.domain.run import Attempt, RunStatus, TaskStatus, TriggerKind  # noqa: E402
from flowyard.domain.workflow import StoredWorkflow, WorkflowState  # noqa: E402
from flowyard.history.csv_export import CsvWriter  # noqa: E402
from flowyard.history.query import DateRange, RunQuery, SortKey  # noqa: E402

from tests.history_seed import Seed, make_run, seed_docs  # noqa: E402

STATUSES = [RunStatus.SUCCEEDED] * 8 + [RunStatus.FAILED, RunStatus.STOPPED]
TRIGGERS = list(TriggerKind)[:5]


def mongo_url() -> str:
    url = os.environ.get("FLOWYARD_MONGO_URL")
    if url:
        return url
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "stack" / "start.sh"), "ferretdb"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    for line in out.splitlines():
        if line.startswith("export FLOWYARD_MONGO_URL="):
            return line.split("=", 1)[1].strip("'\"")
    raise SystemExit("no FLOWYARD_MONGO_URL")


def seeds(count: int, now: datetime, rng: random.Random) -> list[Seed]:
    found = []
    for _ in range(count):
        workflow = rng.randrange(20)
        found.append(
            Seed(
                f"workflow-{workflow:02d}",
                now - timedelta(seconds=rng.randrange(30 * 86_400)),
                rng.choice(STATUSES),
                workflow_type=f"type-{workflow % 4}",
                version=1 + workflow % 3,
                trigger=rng.choice(TRIGGERS),
                started_by=rng.choice(["alice", "bob", "carol", "scheduler"]),
                duration=timedelta(milliseconds=rng.randrange(100, 600_000)),
                steps=(
                    ("fetch", TaskStatus.SUCCEEDED, rng.random() * 5),
                    ("transform", TaskStatus.SUCCEEDED, rng.random() * 20),
                    ("load", TaskStatus.SUCCEEDED, rng.random() * 10),
                ),
            )
        )
    return found


async def timed(call: Callable[[], Awaitable[object]], samples: int) -> list[float]:
    times = []
    for _ in range(samples):
        began = time.perf_counter()
        await call()
        times.append(time.perf_counter() - began)
    return times


def quantiles(times: list[float]) -> str:
    ordered = sorted(times)
    p95 = ordered[max(int(len(ordered) * 0.95 + 0.999) - 1, 0)]
    return f"p50 {statistics.median(ordered) * 1000:8.1f} ms   p95 {p95 * 1000:8.1f} ms"


async def big_run(store: MongoStore, now: datetime, tasks: int) -> str:
    nodes = [{"id": "start", "type": "trigger"}] + [
        {"id": f"t{i:04d}", "type": "code", "config": {"source": "result = 1"}}
        for i in range(1, tasks)
    ]
    edges = [{"from": "start", "to": n["id"]} for n in nodes[1:]]
    definition = parse_definition({"name": "big", "nodes": nodes, "edges": edges})
    workflow_id = uuid.uuid4().hex
    await store.insert_workflow(
        StoredWorkflow(workflow_id, 1, WorkflowState.ACTIVE, definition, now, now)
    )
    seed = Seed(
        "big",
        now,
        steps=tuple((n["id"], TaskStatus.SUCCEEDED, 0.01) for n in nodes),
    )
    run = replace(make_run(seed), workflow_id=workflow_id)
    await store.insert_run(run)
    attempts = [
        codec_attempt
        for codec_attempt in (
            Attempt(run.run_id, n["id"], 1, TaskStatus.SUCCEEDED, {"x": 1}, {"y": 2},
                    started_at=now, finished_at=now)
            for n in nodes[1:]
        )
    ]  # fmt: skip
    from flowyard.adapters.mongo_documents import attempt_to_doc

    await store.attempts.insert_many([attempt_to_doc(a) for a in attempts])
    return run.run_id


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20_000)
    parser.add_argument("--seed-seconds", type=float, default=180.0)
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=500, help="tasks of the detail run")
    parser.add_argument("--keep", action="store_true", help="keep the database")
    args = parser.parse_args()

    url = mongo_url()
    database = f"bench_history_{uuid.uuid4().hex[:8]}"
    rng = random.Random(7)
    now = datetime.now(UTC)
    async with MongoStore(url, database) as store:
        history = HistoryStore(store)
        await history.ensure_indexes()
        try:
            stored = 0
            began = time.perf_counter()
            while stored < args.runs and time.perf_counter() - began < args.seed_seconds:
                batch = min(1000, args.runs - stored)
                await store.runs.insert_many(seed_docs(seeds(batch, now, rng)), ordered=False)
                stored += batch
            seeding = time.perf_counter() - began
            info = await store.runs.database.command("buildInfo")
            print(f"store: FerretDB {info['ferretdbVersion']}" if "ferretdbVersion" in info
                  else f"store: MongoDB {info.get('version')}")  # fmt: skip
            print(f"seeded {stored} runs in {seeding:.1f} s ({stored / seeding:.0f} runs/s)")

            queries = {
                "all, newest first": RunQuery(now=now),
                "failed, last 7 days": RunQuery(
                    statuses=(RunStatus.FAILED,), date_range=DateRange.LAST_7D, now=now
                ),
                "one workflow, failed|stopped": RunQuery(
                    workflow="workflow-03",
                    statuses=(RunStatus.FAILED, RunStatus.STOPPED),
                    now=now,
                ),
                "type + trigger, 24 h": RunQuery(
                    workflow_type="type-1",
                    trigger_kind="schedule",
                    date_range=DateRange.LAST_24H,
                    now=now,
                ),
                "search 'dec'": RunQuery(search="dec", now=now),
                "longest first": RunQuery(sort=SortKey.DURATION, now=now),
            }
            print(f"\nhistory page (50 runs, {args.samples} samples each):")
            page_times: list[float] = []
            for name, query in queries.items():
                _page, cursor = await history.list_runs(query)
                times = await timed(lambda q=query: history.list_runs(q), args.samples)
                page_times += times
                second = (
                    await timed(lambda q=query, c=cursor: history.list_runs(q, c), 1)
                    if cursor
                    else []
                )
                extra = f"   next page {second[0] * 1000:.1f} ms" if second else ""
                print(f"  {name:32s} {quantiles(times)}{extra}")
            print(f"  {'all queries':32s} {quantiles(page_times)}")

            writer = CsvWriter()
            began = time.perf_counter()
            rows = 0
            size = len(writer.header())
            chunk: list[dict[str, object]] = []
            async for doc in history.iter_runs(RunQuery(now=now), batch=2000):
                chunk.append(doc)
                if len(chunk) == 2000:
                    size += len(writer.rows(chunk))
                    rows += len(chunk)
                    chunk = []
            size += len(writer.rows(chunk))
            rows += len(chunk)
            export = time.perf_counter() - began
            print(f"\nCSV export: {rows} runs, {size / 1e6:.1f} MB in {export:.1f} s "
                  f"({rows / export:.0f} runs/s)")  # fmt: skip

            # Definitions hold at most 500 nodes (MAX_NODES), so that is the largest run.
            run_id = await big_run(store, now, args.tasks)

            async def detail() -> None:
                run = await store.get_run(run_id)
                workflow, attempts = await asyncio.gather(
                    store.workflow_version(run.workflow_id, run.workflow_version),
                    store.attempts_of(run_id),
                )
                codec.run_to_proto(run, workflow.definition, attempts)

            times = await timed(detail, args.samples)
            print(f"\nrun detail, {args.tasks} tasks + their attempts: {quantiles(times)}")
        finally:
            if not args.keep:
                await store.runs.database.client.drop_database(database)


if __name__ == "__main__":
    asyncio.run(main())
