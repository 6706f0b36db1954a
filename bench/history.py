"""History at scale: seed up to 1,000,000 runs in stages and time, at each size, what the
history screens ask of the store, through the store code the gateway uses.

Stages (``--sizes``, default 10,000 / 100,000 / 1,000,000 stored runs): seed up to the
size, then measure there. The indexes are made first (``HistoryStore.ensure_indexes``), so
they are maintained while the runs arrive, as in a deployment that grows; the workflows
are registered too (every version: search finds runs by the registered names).

Seeding: ``insert_many(ordered=False)`` batches of 5,000 prebuilt run documents, three
batches in flight. The mix: 30 workflows of 5 types (popularity skewed), versions 1-4 (a
workflow's newer versions ran more recently), 3-8 tasks a run, mostly succeeded runs with
some failed and stopped and a few running, waiting or queued (recent ones), every trigger
kind, 12 starters, created over the 90 days before now. Every document is exactly what
``run_to_doc(make_run(Seed(...)))`` (``tests/history_seed.py``, the real document
mapping) gives for its run: one template per (workflow, version, status, failing task,
warnings) comes from that mapping and is copied with the run's own id, times, durations,
month and trigger; the first 200 documents of a stage and every 1,000th after are checked
against the mapping itself.

Measured at each size:

* history page: ``HistoryStore.list_runs`` (50 runs) per filter shape (status, statuses,
  workflow, type, workflow + version, trigger kind, started by, date presets, text search,
  longest first, oldest first, the 50th page by cursor), p50/p95 and the rows returned;
  shapes with p95 over 50 ms are flagged;
* run detail: 500-task runs (the most a definition holds) with an attempt per task, one
  with every task right after the trigger and one a chain 500 deep, loaded as
  ``RunService.GetRun`` does (run, definition and attempts, mapped to protobuf), p50/p95;
* CSV export: runs of the last 30 days (all runs while those are under 20,000), through
  ``HistoryStore.iter_runs`` and the CSV writer, at most 200,000 runs, runs/s;
* analytics: what ``HistoryService.GetAnalytics`` computes for its default 30 days
  (:func:`analytics_call`), seconds;
* CPU seconds of this process, of the PostgreSQL server under DocumentDB (all its
  processes: other clients' work counts too) and of the DocumentDB gateway, per phase.

It ends with one line per target: page p95 <= 50 ms and analytics <= 1 s at 1M runs,
CSV export >= 20,000 runs/s.

Usage: python bench/history.py [--sizes 10000,100000,1000000] [--samples 20]
                               [--database NAME [--reuse]] [--keep]
Needs the document store: DocumentDB (or MongoDB) at FLOWYARD_MONGO_URL, else it starts
the local one with ``scripts/stack/start.sh documentdb``. The database is
``bench_history_<random>`` unless ``--database`` names one; it is dropped at the end
unless ``--keep`` (also with ``--reuse``, which continues seeding an existing database:
stages below what it holds are skipped). Seeding goes at the pace the store maintains its
indexes: on DocumentDB, a few hundred runs/s a core, so 1M runs take the better part of
an hour.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import calendar
import math
import os
import random
import resource
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import cache, partial
from itertools import pairwise
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from flowyard import codec  # noqa: E402
from flowyard.adapters.history import HistoryStore  # noqa: E402
from flowyard.adapters.mongo import MongoStore  # noqa: E402
from flowyard.adapters.mongo_documents import Document, attempt_to_doc, run_to_doc  # noqa: E402
from flowyard.domain.definition import WorkflowDefinition, parse_definition  # noqa: E402
from flowyard.domain.run import (  # noqa: E402
    Attempt,
    RunState,
    RunStatus,
    TaskStatus,
    TriggerKind,
)
from flowyard.domain.workflow import StoredWorkflow, WorkflowState  # noqa: E402
from flowyard.history import analytics  # noqa: E402
from flowyard.history.csv_export import CsvWriter  # noqa: E402
from flowyard.history.detail import trim_run_view  # noqa: E402
from flowyard.history.query import Cursor, DateRange, RunQuery, SortKey  # noqa: E402
from flowyard.v1 import history_pb2, run_pb2  # noqa: E402
from flowyard_api_gateway.history_servicer import EXPORT_BATCH, run_query  # noqa: E402

from tests.history_seed import Seed, make_run  # noqa: E402

T = TypeVar("T")

DAYS = 90
BATCH = 5_000
IN_FLIGHT = 3
VERIFY_FIRST = 200
VERIFY_EVERY = 1_000
PAGE_TARGET_MS = 50.0
ANALYTICS_TARGET_S = 1.0
CSV_TARGET_RUNS_S = 20_000.0
TARGET_SIZE = 1_000_000
CSV_CAP = 200_000
CSV_MIN_30D = 20_000
DETAIL_TASKS = 500  # flowyard.domain.definition.MAX_NODES: the largest run there is
CURSOR_PAGE = 50
ANALYTICS_MAX_CALLS = 3
ANALYTICS_BUDGET_S = 30.0

# --- the mix ---------------------------------------------------------------------------

TYPES: dict[str, tuple[str, ...]] = {
    "etl": ("orders-sync", "customer-import", "inventory-load", "clickstream-etl",
            "ledger-export", "crm-sync"),
    "reporting": ("daily-sales-report", "kpi-dashboard", "weekly-digest", "churn-report",
                  "finance-close", "usage-report"),
    "ops": ("db-backup", "cert-rotation", "log-cleanup", "health-check", "cache-warmup",
            "disk-audit"),
    "ml": ("model-retrain", "feature-build", "batch-scoring", "drift-check",
           "embedding-refresh", "label-sync"),
    "billing": ("invoice-run", "payment-reconcile", "dunning", "tax-calc", "usage-metering",
                "refund-batch"),
}  # fmt: skip
STEP_NAMES = ("fetch", "validate", "transform", "enrich", "dedupe", "score", "load", "render",
              "upload", "notify", "archive", "cleanup")  # fmt: skip
# A finished run's status; active runs (ACTIVE_SHARE of all) were created in the last
# ACTIVE_WINDOW and are running, waiting or queued.
FINISHED_MIX = {RunStatus.SUCCEEDED: 88, RunStatus.FAILED: 8, RunStatus.STOPPED: 4}
ACTIVE_MIX = {RunStatus.RUNNING: 60, RunStatus.WAITING: 25, RunStatus.QUEUED: 15}
ACTIVE_SHARE = 0.003
ACTIVE_WINDOW = timedelta(hours=2)
TRIGGER_MIX = {
    TriggerKind.SCHEDULE: 40,
    TriggerKind.API: 20,
    TriggerKind.WEBHOOK: 12,
    TriggerKind.EVENT: 10,
    TriggerKind.MANUAL: 10,
    TriggerKind.WORKFLOW: 5,
    TriggerKind.REPLAY: 3,
}
SCHEDULER = "scheduler"
# Who starts runs that are not scheduled (with the scheduler: 12 starters).
STARTERS = {
    "alice": 20,
    "bob": 15,
    "carol": 12,
    "ci-bot": 12,
    "etl-service": 10,
    "dave": 8,
    "erin": 6,
    "frank": 5,
    "ops-oncall": 5,
    "grace": 4,
    "heidi": 3,
}
WARNING_SHARE = 0.03


@dataclass(frozen=True)
class WorkflowSpec:
    name: str
    workflow_type: str
    versions: int
    steps: tuple[str, ...]
    typical_seconds: tuple[float, ...]
    weight: float


def catalog() -> tuple[WorkflowSpec, ...]:
    """The 30 workflows, the same every time."""
    rng = random.Random(1)
    found = []
    for index, (workflow_type, name) in enumerate(
        (t, n) for t, names in TYPES.items() for n in names
    ):
        count = rng.randint(3, 8)
        picked = sorted(rng.sample(range(len(STEP_NAMES)), count))
        found.append(
            WorkflowSpec(
                name=name,
                workflow_type=workflow_type,
                versions=1 + index % 4,
                steps=tuple(STEP_NAMES[i] for i in picked),
                typical_seconds=tuple(round(rng.lognormvariate(1.5, 1.0), 3) for _ in range(count)),
                weight=1 / (1 + rng.randrange(12)),
            )
        )
    return tuple(found)


WORKFLOWS = catalog()
FOCUS = next(w for w in WORKFLOWS if w.versions == 4)  # the workflow the filters pick
SEARCH_FRAGMENT = "sync"


def _cumulative(weights: Sequence[float]) -> list[float]:
    total, found = 0.0, []
    for weight in weights:
        total += weight
        found.append(total)
    return found


@dataclass(frozen=True, slots=True)
class RunSpec:
    """One seeded run: what :func:`real_doc` turns into a Seed and :func:`fast_doc` into a
    copy of its template."""

    run_id: str
    workflow: WorkflowSpec
    version: int
    status: RunStatus
    broken_at: int  # the task that failed / was stopped / runs / waits
    warnings: int
    created_at: datetime
    trigger: TriggerKind
    started_by: str
    seconds: tuple[float, ...]
    duration: timedelta


@cache
def task_statuses(status: RunStatus, count: int, broken_at: int) -> tuple[TaskStatus, ...]:
    """The tasks' statuses in a run of ``status``, as the engine leaves them."""
    done = (TaskStatus.SUCCEEDED,) * broken_at
    rest = count - broken_at - 1
    if status is RunStatus.SUCCEEDED:
        return (TaskStatus.SUCCEEDED,) * count
    if status is RunStatus.QUEUED:
        return (TaskStatus.PENDING,) * count
    if status is RunStatus.FAILED:
        return (*done, TaskStatus.FAILED, *(TaskStatus.SKIPPED,) * rest)
    if status is RunStatus.STOPPED:
        return (*done, TaskStatus.CANCELLED, *(TaskStatus.SKIPPED,) * rest)
    current = TaskStatus.WAITING if status is RunStatus.WAITING else TaskStatus.RUNNING
    return (*done, current, *(TaskStatus.PENDING,) * rest)


def real_doc(spec: RunSpec) -> Document:
    """The run's document through the real mapping: ``run_to_doc(make_run(Seed(...)))``
    (the failed task named as the failed node)."""
    statuses = task_statuses(spec.status, len(spec.workflow.steps), spec.broken_at)
    seed = Seed(
        workflow=spec.workflow.name,
        created_at=spec.created_at,
        status=spec.status,
        workflow_type=spec.workflow.workflow_type,
        version=spec.version,
        trigger=spec.trigger,
        started_by=spec.started_by,
        duration=spec.duration,
        steps=tuple(zip(spec.workflow.steps, statuses, spec.seconds, strict=True)),
        run_id=spec.run_id,
        warnings=spec.warnings,
    )
    run = make_run(seed)
    if spec.status is RunStatus.FAILED:
        run = replace(run, failed_node_id=spec.workflow.steps[spec.broken_at])
    return run_to_doc(run)


_FINISHED_TASKS = frozenset(s.value for s in TaskStatus if s.finished)
# Per kind of run: its document and, per task, (started, finished): whether make_run gives
# the task a start and an end.
_templates: dict[
    tuple[str, int, RunStatus, int, int], tuple[Document, tuple[tuple[bool, bool], ...]]
] = {}


def fast_doc(spec: RunSpec) -> Document:
    """:func:`real_doc` of ``spec``, from the template of its kind of run: the fields
    that differ between such runs are set the way run_to_doc and make_run set them."""
    key = (spec.workflow.name, spec.version, spec.status, spec.broken_at, spec.warnings)
    found = _templates.get(key)
    if found is None:
        template = real_doc(spec)
        flags = tuple(
            (t["status"] != TaskStatus.PENDING.value, t["status"] in _FINISHED_TASKS)
            for t in template["tasks"]
        )
        found = _templates[key] = (template, flags)
    template, flags = found
    start = spec.created_at
    finished = spec.status.finished
    doc = dict(template)
    doc["_id"] = spec.run_id
    doc["trigger"] = {
        "kind": spec.trigger.value,
        "data": "{}",
        "detail": "",
        "started_by": spec.started_by,
        "idempotency_key": "",
    }
    doc["created_at"] = start
    doc["started_at"] = None if spec.status is RunStatus.QUEUED else start
    doc["finished_at"] = start + spec.duration if finished else None
    doc["duration_ms"] = max(int(spec.duration.total_seconds() * 1000), 0) if finished else -1
    doc["created_month"] = start.month
    tasks = []
    moment = start
    for task, (started, ends), seconds in zip(template["tasks"], flags, spec.seconds, strict=True):
        end = moment + timedelta(seconds=seconds)
        tasks.append(
            {
                **task,
                "started_at": moment if started else None,
                "finished_at": end if ends else None,
            }
        )
        moment = end
    doc["tasks"] = tasks
    return doc


class Seeder:
    """Random runs of the mix, as documents."""

    def __init__(self, now: datetime, seed: int) -> None:
        self.now = now
        self.rng = random.Random(seed)
        self.made = 0
        self.checked = 0
        self._workflows = _cumulative([w.weight for w in WORKFLOWS])
        self._finished = list(FINISHED_MIX)
        self._finished_cum = _cumulative(list(FINISHED_MIX.values()))
        self._active = list(ACTIVE_MIX)
        self._active_cum = _cumulative(list(ACTIVE_MIX.values()))
        self._triggers = list(TRIGGER_MIX)
        self._triggers_cum = _cumulative(list(TRIGGER_MIX.values()))
        self._starters = list(STARTERS)
        self._starters_cum = _cumulative(list(STARTERS.values()))
        self._span_ms = DAYS * 86_400_000

    def _pick(self, values: Sequence[Any], cumulative: Sequence[float]) -> Any:
        return values[bisect.bisect(cumulative, self.rng.random() * cumulative[-1])]

    def spec(self) -> RunSpec:
        rng = self.rng
        workflow = self._pick(WORKFLOWS, self._workflows)
        if rng.random() < ACTIVE_SHARE:
            status: RunStatus = self._pick(self._active, self._active_cum)
            age_ms = rng.randrange(int(ACTIVE_WINDOW.total_seconds() * 1000))
        else:
            status = self._pick(self._finished, self._finished_cum)
            age_ms = rng.randrange(self._span_ms)
        created = self.now - timedelta(milliseconds=age_ms)
        created = created.replace(microsecond=created.microsecond // 1000 * 1000)
        versions = workflow.versions
        version = max(versions - age_ms * versions // self._span_ms, 1)
        count = len(workflow.steps)
        broken_at = (
            rng.randrange(count) if status not in (RunStatus.SUCCEEDED, RunStatus.QUEUED) else 0
        )
        statuses = task_statuses(status, count, broken_at)
        seconds = tuple(
            round(typical * rng.lognormvariate(0.0, 0.4), 3)
            if task_status not in (TaskStatus.SKIPPED, TaskStatus.PENDING)
            else 0.0
            for typical, task_status in zip(workflow.typical_seconds, statuses, strict=True)
        )
        trigger: TriggerKind = self._pick(self._triggers, self._triggers_cum)
        starter = (
            SCHEDULER
            if trigger is TriggerKind.SCHEDULE
            else self._pick(self._starters, self._starters_cum)
        )
        overhead_ms = rng.randrange(50, 2_000)
        return RunSpec(
            run_id=f"{rng.getrandbits(128):032x}",
            workflow=workflow,
            version=version,
            status=status,
            broken_at=broken_at,
            warnings=1 if rng.random() < WARNING_SHARE else 0,
            created_at=created,
            trigger=trigger,
            started_by=starter,
            seconds=seconds,
            duration=timedelta(milliseconds=int(sum(seconds) * 1000) + overhead_ms),
        )

    def docs(self, count: int, stage_start: int) -> list[Document]:
        found = []
        for _ in range(count):
            spec = self.spec()
            doc = fast_doc(spec)
            position = self.made - stage_start
            if position < VERIFY_FIRST or self.made % VERIFY_EVERY == 0:
                expected = real_doc(spec)
                if doc != expected:
                    wrong = sorted(k for k in expected if doc.get(k) != expected[k])
                    raise SystemExit(f"seeded document differs from run_to_doc in {wrong}")
                self.checked += 1
            found.append(doc)
            self.made += 1
        return found


async def seed_runs(store: MongoStore, seeder: Seeder, count: int) -> None:
    """``count`` runs, ``BATCH`` a call, ``IN_FLIGHT`` calls at a time."""
    pending: set[asyncio.Task[Any]] = set()
    stage_start = seeder.made
    left = count
    while left:
        batch = min(BATCH, left)
        left -= batch
        docs = seeder.docs(batch, stage_start)
        while len(pending) >= IN_FLIGHT:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
        pending.add(asyncio.create_task(store.runs.insert_many(docs, ordered=False)))
        await asyncio.sleep(0)  # let it start sending while the next batch is built
    await asyncio.gather(*pending)


# --- workflows and the 500-task runs ---------------------------------------------------


def definition(
    name: str, workflow_type: str, steps: Sequence[str], *, parallel: bool = False
) -> WorkflowDefinition:
    """A trigger, then code nodes: one after another, or all right after the trigger."""
    nodes: list[dict[str, Any]] = [{"id": "start", "type": "trigger"}] + [
        {"id": step, "type": "code", "config": {"source": "result = 1"}} for step in steps
    ]
    ids = [str(n["id"]) for n in nodes]
    pairs = [("start", i) for i in ids[1:]] if parallel else list(pairwise(ids))
    edges = [{"from": a, "to": b} for a, b in pairs]
    document = {"name": name, "type": workflow_type, "nodes": nodes, "edges": edges}
    return parse_definition(document)


async def register_workflows(store: MongoStore, now: datetime) -> None:
    """Every version of the 30 workflows, as ``id-<name>`` (the id make_run gives runs);
    a version was registered when its runs begin. Search finds runs through these names."""
    for workflow in WORKFLOWS:
        steps = definition(workflow.name, workflow.workflow_type, workflow.steps)
        for version in range(1, workflow.versions + 1):
            since = (
                now - timedelta(days=DAYS) * (workflow.versions - version + 1) / workflow.versions
            )
            await store.insert_workflow(
                StoredWorkflow(
                    f"id-{workflow.name}", version, WorkflowState.ACTIVE, steps, since, since
                )
            )


# The largest runs there are (a definition holds at most 500 nodes), in two shapes: every
# task right after the trigger, and a chain 500 deep. Shape -> (workflow name, run id).
BIG_RUNS = {
    shape: (f"bench-big-{shape}", uuid.uuid5(uuid.NAMESPACE_URL, f"flowyard/bench/{shape}").hex)
    for shape in ("wide", "deep")
}
BIG_LABELS = {"wide": "wide: the trigger, then 499 side by side", "deep": "deep: a chain 500 long"}
# Before the windows analytics and the CSV export read, so that they see the mix alone.
BIG_AGE = timedelta(days=45)


async def insert_big_runs(store: MongoStore, now: datetime) -> None:
    """A workflow of each big shape and one run of it, BIG_AGE old, every task succeeded
    with one attempt (kept when they are there already: ``--reuse``)."""
    now -= BIG_AGE
    for shape, (name, run_id) in BIG_RUNS.items():
        steps = [f"t{i:04d}" for i in range(1, DETAIL_TASKS)]
        big = definition(name, "ops", steps, parallel=shape == "wide")
        await store.insert_workflow(
            StoredWorkflow(f"id-{name}", 1, WorkflowState.ACTIVE, big, now, now)
        )
        seed = Seed(
            name,
            now,
            workflow_type="ops",
            trigger=TriggerKind.MANUAL,
            steps=tuple((node.id, TaskStatus.SUCCEEDED, 0.01) for node in big.nodes),
            run_id=run_id,
        )
        run = make_run(seed)
        if not await store.insert_run(run):
            continue
        attempts = [
            Attempt(
                run.run_id,
                task.node_id,
                1,
                TaskStatus.SUCCEEDED,
                {"x": 1},
                {"y": 2},
                executor_id="bench",
                started_at=task.started_at,
                finished_at=task.finished_at,
            )
            for task in run.tasks.values()
        ]
        await store.attempts.insert_many([attempt_to_doc(a) for a in attempts], ordered=False)


async def _definition_of(store: MongoStore, run: RunState) -> WorkflowDefinition:
    if run.test:
        return await store.snapshot(run.run_id)
    workflow = await store.workflow_version(run.workflow_id, run.workflow_version)
    return workflow.definition


async def run_detail_call(store: MongoStore, run_id: str) -> run_pb2.Run:
    """What ``RunService.GetRun`` does for a stored run (flowyard_api_gateway.servicers:
    ``RunServicer._run_view`` then ``trim_run_view``)."""
    run = await store.find_run(run_id)
    if run is None:
        raise SystemExit(f"run {run_id} is gone")
    definition, attempts = await asyncio.gather(
        _definition_of(store, run), store.attempts_of(run_id)
    )
    return trim_run_view(codec.run_to_proto(run, definition, attempts))


# --- analytics -------------------------------------------------------------------------


async def analytics_call(history: HistoryStore, now: datetime) -> history_pb2.Analytics:
    """What ``HistoryService.GetAnalytics`` computes for a default request (no filter, so
    the last 30 days; top 10; no consumer lag). Mirrors
    flowyard_api_gateway.history_servicer; when the servicer changes, change this."""
    query = replace(run_query(history_pb2.RunFilter(), now=now), date_range=DateRange.LAST_30D)
    collector = analytics.Collector()
    async for doc in history.iter_runs(query, projection=analytics.PROJECTION, batch=EXPORT_BATCH):
        collector.add(doc)
    queue = analytics.QueueCounter()
    async for doc in history.active_runs():
        queue.add(doc)
    return analytics.to_proto(collector, queue, -1, query, 10)


# --- CPU -------------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _pids(pattern: str) -> list[int]:
    try:
        out = subprocess.run(
            ["pgrep", "-f", pattern], capture_output=True, text=True, check=False
        ).stdout
    except OSError:
        return []
    return [int(p) for p in out.split() if p.isdigit() and int(p) != os.getpid()]


def _stat(pid: int) -> tuple[str, list[str]] | None:
    """(command name, the fields after it) of /proc/PID/stat."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name = text[text.index("(") + 1 : text.rindex(")")]
    return name, text[text.rindex(")") + 2 :].split()


def _cpu_of(pattern: str, name: str) -> float | None:
    """CPU seconds of the processes named ``name`` matching ``pattern``, plus those of the
    children they reaped (PostgreSQL's ended backends count in the postmaster's)."""
    ticks, found = 0, False
    stats = {pid: s for pid in _pids(pattern) if (s := _stat(pid)) and s[0].startswith(name)}
    for _pid, (_name, fields) in stats.items():
        found = True
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
        if int(fields[1]) not in stats:  # the parent (ppid) is not one of them
            ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / _TICK if found else None


@dataclass(frozen=True)
class Cpu:
    bench: float
    postgres: float | None
    gateway: float | None

    @classmethod
    def now(cls) -> Cpu:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return cls(
            usage.ru_utime + usage.ru_stime,
            _cpu_of("postgres", "postgres"),
            _cpu_of("documentdb_gateway", "documentdb_gate"),
        )


def _used(before: float | None, after: float | None) -> str:
    return "n/a" if before is None or after is None else f"{after - before:.1f}"


# --- measuring ---------------------------------------------------------------------------


def percentile(times: Sequence[float], fraction: float) -> float:
    """Nearest rank, as in flowyard.history.analytics."""
    ordered = sorted(times)
    return ordered[max(math.ceil(fraction * len(ordered)), 1) - 1]


async def timed(call: Callable[[], Awaitable[T]], samples: int) -> tuple[T, list[float]]:
    """What ``call`` returns (a warm-up call, not timed) and the times of ``samples`` more."""
    result = await call()
    times = []
    for _ in range(samples):
        began = time.perf_counter()
        await call()
        times.append(time.perf_counter() - began)
    return result, times


@dataclass
class StageResult:
    size: int
    pages: dict[str, float] = field(default_factory=dict)  # shape -> p95 seconds
    csv_rate: float = 0.0
    analytics_s: float = 0.0


def shapes(now: datetime) -> dict[str, RunQuery]:
    month = calendar.month_abbr[(now - timedelta(days=DAYS // 2)).month].lower()
    found = {
        "all, newest first": RunQuery(),
        "status failed": RunQuery(statuses=(RunStatus.FAILED,)),
        "statuses failed+stopped": RunQuery(statuses=(RunStatus.FAILED, RunStatus.STOPPED)),
        f"workflow {FOCUS.name}": RunQuery(workflow=FOCUS.name),
        f"type {FOCUS.workflow_type}": RunQuery(workflow_type=FOCUS.workflow_type),
        f"workflow {FOCUS.name} v2": RunQuery(workflow=FOCUS.name, version=2),
        "trigger schedule": RunQuery(trigger_kind=TriggerKind.SCHEDULE.value),
        "started by alice": RunQuery(started_by="alice"),
        "today": RunQuery(date_range=DateRange.TODAY),
        "last 24 h": RunQuery(date_range=DateRange.LAST_24H),
        "last 7 days": RunQuery(date_range=DateRange.LAST_7D),
        "last 30 days": RunQuery(date_range=DateRange.LAST_30D),
        f"search '{SEARCH_FRAGMENT}'": RunQuery(search=SEARCH_FRAGMENT),
        f"search '{month}'": RunQuery(search=month),
        "longest first": RunQuery(sort=SortKey.DURATION),
        "oldest first": RunQuery(ascending=True),
    }
    return {name: replace(query, now=now).check() for name, query in found.items()}


async def cursor_to_page(
    history: HistoryStore, query: RunQuery, page: int
) -> tuple[int, Cursor | None]:
    """Follows cursors to page ``page`` (or the last page there is): (its number, cursor)."""
    number, cursor = 1, None
    while number < page:
        _docs, following = await history.list_runs(query, cursor)
        if following is None:
            break
        number, cursor = number + 1, following
    return number, cursor


def _page_row(name: str, rows: int, times: Sequence[float]) -> str:
    p50, p95 = percentile(times, 0.5) * 1000, percentile(times, 0.95) * 1000
    flag = f"  > {PAGE_TARGET_MS:.0f} ms" if p95 > PAGE_TARGET_MS else ""
    return f"  {name:48s} {rows:5d} {p50:9.1f} {p95:9.1f}{flag}"


async def measure(store: MongoStore, history: HistoryStore, size: int, samples: int) -> StageResult:
    result = StageResult(size)
    now = datetime.now(UTC)
    print(f"history page: HistoryStore.list_runs, limit 50, {samples} samples a shape")
    print(f"  {'shape':48s} {'rows':>5s} {'p50 ms':>9s} {'p95 ms':>9s}")
    queries = shapes(now)
    for name, query in queries.items():
        (docs, _), times = await timed(partial(history.list_runs, query), samples)
        result.pages[name] = percentile(times, 0.95)
        print(_page_row(name, len(docs), times), flush=True)
    for name in ("all, newest first", "status failed"):
        query = queries[name]
        number, cursor = await cursor_to_page(history, query, CURSOR_PAGE)
        (docs, _), times = await timed(partial(history.list_runs, query, cursor), samples)
        last = " (the last)" if number < CURSOR_PAGE else ""
        label = f"page {number}{last} by cursor: {name}"
        result.pages[label] = percentile(times, 0.95)
        print(_page_row(label, len(docs), times), flush=True)

    print(f"run detail: as RunService.GetRun, {samples} samples a shape")
    print(f"  {'run':48s} {'tasks':>5s} {'attempts':>8s} {'p50 ms':>9s} {'p95 ms':>9s}")
    for shape, (_name, run_id) in BIG_RUNS.items():
        view, times = await timed(partial(run_detail_call, store, run_id), samples)
        attempts = sum(len(t.attempts) for t in view.tasks)
        print(
            f"  {BIG_LABELS[shape]:48s} {len(view.tasks):5d} {attempts:8d} "
            f"{percentile(times, 0.5) * 1000:9.1f} {percentile(times, 0.95) * 1000:9.1f}",
            flush=True,
        )

    last_30d = RunQuery(date_range=DateRange.LAST_30D, now=now).check()
    in_30d = await store.runs.count_documents({"created_at": {"$gte": now - timedelta(days=30)}})
    export, what = (last_30d, "last 30 days") if in_30d >= CSV_MIN_30D else (
        RunQuery(now=now).check(),
        f"all runs (the last 30 days hold {in_30d:,} < {CSV_MIN_30D:,})",
    )  # fmt: skip
    writer = CsvWriter()
    size_bytes, rows = len(writer.header()), 0
    chunk: list[Document] = []
    began = time.perf_counter()
    async for doc in history.iter_runs(export, batch=EXPORT_BATCH):
        chunk.append(doc)
        if len(chunk) >= EXPORT_BATCH:
            size_bytes += len(writer.rows(chunk))
            rows += len(chunk)
            chunk = []
            if rows >= CSV_CAP:
                break
    if chunk:
        size_bytes += len(writer.rows(chunk))
        rows += len(chunk)
    seconds = time.perf_counter() - began
    result.csv_rate = rows / seconds if seconds else 0.0
    capped = f", stopped at the {CSV_CAP:,} cap" if rows >= CSV_CAP else ""
    print(
        f"CSV export, {what}: {rows:,} runs, {size_bytes / 1e6:.1f} MB in {seconds:.2f} s "
        f"= {result.csv_rate:,.0f} runs/s{capped}",
        flush=True,
    )

    calls: list[float] = []
    summary: history_pb2.Analytics | None = None
    while len(calls) < ANALYTICS_MAX_CALLS and sum(calls) < ANALYTICS_BUDGET_S:
        began = time.perf_counter()
        summary = await analytics_call(history, now)
        calls.append(time.perf_counter() - began)
    assert summary is not None
    result.analytics_s = percentile(calls, 0.5)
    print(
        f"analytics (as HistoryService.GetAnalytics, last 30 days: {summary.runs:,} runs, "
        f"{len(summary.workflows)} workflows, {len(summary.steps)} steps): median "
        f"{result.analytics_s:.2f} s of {len(calls)} call(s) "
        f"({', '.join(f'{c:.2f}' for c in calls)})",
        flush=True,
    )
    return result


# --- main --------------------------------------------------------------------------------


def mongo_url() -> str:
    url = os.environ.get("FLOWYARD_MONGO_URL")
    if url:
        return url
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "stack" / "start.sh"), "documentdb"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    for line in out.splitlines():
        if line.startswith("export FLOWYARD_MONGO_URL="):
            return line.split("=", 1)[1].strip().strip("'\"")
    raise SystemExit("no FLOWYARD_MONGO_URL (and scripts/stack/start.sh documentdb gave none)")


def parse_sizes(text: str) -> list[int]:
    sizes = []
    for part in text.split(","):
        part = part.strip().lower().replace("_", "")
        factor = {"k": 1_000, "m": 1_000_000}.get(part[-1:], 1)
        digits = part[:-1] if factor > 1 else part
        if not digits.isdigit() or int(digits) * factor <= 0:
            raise argparse.ArgumentTypeError(f"not a number of runs: {part!r}")
        sizes.append(int(digits) * factor)
    return sorted(set(sizes))


async def server_line(store: MongoStore) -> str:
    info = await store.database.client.admin.command("buildInfo")
    gateway = next(iter(_pids("documentdb_gateway")), None)
    where = ""
    if gateway is not None:
        try:
            where = f", gateway {Path(os.readlink(f'/proc/{gateway}/exe')).parent.parent.name}"
        except OSError:
            where = ""
    return (
        f"store: DocumentDB / MongoDB wire protocol, buildInfo version {info.get('version')}{where}"
    )


def _target(label: str, met: bool, figure: str, size: int) -> str:
    note = "" if size >= TARGET_SIZE else f" (measured at {size:,} runs, not {TARGET_SIZE:,})"
    return f"  {label:38s} {'met' if met else 'NOT MET':8s} {figure}{note}"


async def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join((__doc__ or "").split("\n\n")[0].split()))
    parser.add_argument(
        "--sizes",
        type=parse_sizes,
        default=parse_sizes("10000,100000,1000000"),
        help="stored runs to measure at, in turn (default 10000,100000,1000000; 10k, 1M work)",
    )
    parser.add_argument("--samples", type=int, default=20, help="timed calls a shape (20)")
    parser.add_argument("--database", default="", help="default: bench_history_<random>")
    parser.add_argument(
        "--reuse", action="store_true", help="continue seeding the --database given"
    )
    parser.add_argument("--keep", action="store_true", help="keep the database at the end")
    args = parser.parse_args()
    if args.reuse and not args.database:
        parser.error("--reuse needs --database")
    if args.samples < 1:
        parser.error("--samples must be at least 1")

    database = args.database or f"bench_history_{uuid.uuid4().hex[:8]}"
    async with MongoStore(mongo_url(), database) as store:
        history = HistoryStore(store)
        stored = await store.runs.count_documents({})
        if stored and not args.reuse:
            raise SystemExit(
                f"database {database} holds {stored:,} runs: pass --reuse to continue it"
            )
        print(await server_line(store))
        print(f"database: {database}{f' (reused: {stored:,} runs)' if args.reuse else ''}")
        print(
            f"mix: {len(WORKFLOWS)} workflows of {len(TYPES)} types, {DAYS} days, "
            f"{len(STARTERS) + 1} starters, {len(TRIGGER_MIX)} trigger kinds; "
            f"focus workflow {FOCUS.name} ({FOCUS.workflow_type}, v1-{FOCUS.versions})"
        )
        results: list[StageResult] = []
        try:
            await history.ensure_indexes()  # before the runs, as a deployment grows
            await register_workflows(store, datetime.now(UTC))
            await insert_big_runs(store, datetime.now(UTC))
            stored = await store.runs.count_documents({})
            seeder = Seeder(datetime.now(UTC), seed=stored)
            for size in args.sizes:
                print(f"\n=== {size:,} runs ===")
                if size < stored:
                    print(f"skipped: {stored:,} runs are stored already")
                    continue
                count = size - stored
                before = Cpu.now()
                began = time.perf_counter()
                await seed_runs(store, seeder, count)
                seeding = time.perf_counter() - began
                stored = size
                rate = f" = {count / seeding:,.0f} runs/s" if count else ""
                print(
                    f"seeded {count:,} runs in {seeding:.1f} s{rate} ({BATCH:,} a batch, "
                    f"{IN_FLIGHT} in flight); stored: {size:,} with the 500-task runs; "
                    f"{seeder.checked:,} documents checked against run_to_doc so far",
                    flush=True,
                )
                seeded = Cpu.now()
                results.append(await measure(store, history, size, args.samples))
                measured = Cpu.now()
                print(f"CPU seconds {'seeding':>10s} {'measuring':>10s}")
                for label, name in (
                    ("bench", "bench"),
                    ("postgres*", "postgres"),
                    ("gateway", "gateway"),
                ):
                    a, b, c = (getattr(s, name) for s in (before, seeded, measured))
                    print(f"  {label:9s} {_used(a, b):>10s} {_used(b, c):>10s}")
                print("  * the whole PostgreSQL server: other clients' work counts too")
        finally:
            if args.keep:
                print(f"\nkept database {database} (continue: --database {database} --reuse)")
            else:
                await store.database.client.drop_database(database)
                print(f"\ndropped database {database}")

    if not results:
        return
    last = results[-1]
    worst_shape = max(last.pages, key=lambda k: last.pages[k])
    worst = last.pages[worst_shape] * 1000
    print("\ntargets:")
    print(
        _target(
            f"history page p95 <= {PAGE_TARGET_MS:.0f} ms at 1M",
            worst <= PAGE_TARGET_MS,
            f"worst p95 {worst:.1f} ms ({worst_shape}); "
            f"{sum(p * 1000 > PAGE_TARGET_MS for p in last.pages.values())} of "
            f"{len(last.pages)} shapes over",
            last.size,
        )
    )
    print(
        _target(
            f"analytics <= {ANALYTICS_TARGET_S:.0f} s at 1M",
            last.analytics_s <= ANALYTICS_TARGET_S,
            f"{last.analytics_s:.2f} s",
            last.size,
        )
    )
    print(
        _target(
            f"CSV export >= {CSV_TARGET_RUNS_S:,.0f} runs/s",
            last.csv_rate >= CSV_TARGET_RUNS_S,
            f"{last.csv_rate:,.0f} runs/s",
            last.size,
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
