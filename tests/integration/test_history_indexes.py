"""Which plan the store picks for the common history queries.

MongoDB: the winning plan is an index scan of the index :func:`index_for` names, with no
in-memory sort. FerretDB v1 (SQLite backend): the indexes are created, but its planner
pushes no filter or sort down (only ``{_id: <string>}`` alone), so ``explain`` shows a
full table ``SCAN``. That test pins what FerretDB says, so the day a FerretDB uses the
indexes this fails and the README's note can go.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flowyard.adapters.history import HistoryStore
from flowyard.adapters.mongo import MongoStore
from flowyard.config import Settings
from flowyard.domain.run import RunStatus
from flowyard.history.query import INDEXES, DateRange, RunQuery, SortKey, index_for

from tests.history_seed import Seed, seed_docs

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC)
QUERIES = {
    "all, newest first": RunQuery(),
    "failed": RunQuery(statuses=(RunStatus.FAILED,)),
    "failed or stopped, 7 days": RunQuery(
        statuses=(RunStatus.FAILED, RunStatus.STOPPED), date_range=DateRange.LAST_7D
    ),
    "one workflow": RunQuery(workflow="wf-1"),
    "one workflow, failed": RunQuery(workflow="wf-1", statuses=(RunStatus.FAILED,)),
    "one type": RunQuery(workflow_type="ops"),
    "by trigger": RunQuery(trigger_kind="schedule"),
    "by user": RunQuery(started_by="alice"),
    "longest": RunQuery(sort=SortKey.DURATION),
    "longest failed": RunQuery(sort=SortKey.DURATION, statuses=(RunStatus.FAILED,)),
}


@pytest.fixture
async def history(settings: Settings) -> AsyncIterator[HistoryStore]:
    async with MongoStore(settings.mongo_url, settings.mongo_db) as store:
        history = HistoryStore(store)
        await history.ensure_indexes()
        seeds = [
            Seed(
                f"wf-{i % 3}",
                NOW - timedelta(hours=i),
                [RunStatus.FAILED, RunStatus.SUCCEEDED][i % 2],
            )
            for i in range(30)
        ]
        await store.runs.insert_many(seed_docs(seeds))
        yield history


async def _is_ferretdb(history: HistoryStore) -> bool:
    info: dict[str, Any] = await history.runs.database.command("buildInfo")
    return "ferretdbVersion" in info


def _stages(plan: dict[str, Any]) -> list[dict[str, Any]]:
    found = [plan]
    for key in ("inputStage", "queryPlan"):
        if isinstance(plan.get(key), dict):
            found += _stages(plan[key])
    for child in plan.get("inputStages", []):
        found += _stages(child)
    return found


async def test_the_history_indexes_exist(history: HistoryStore) -> None:
    names = {index["name"] async for index in await history.runs.list_indexes()}
    assert set(INDEXES) <= names


@pytest.mark.parametrize("name", list(QUERIES))
async def test_mongodb_serves_common_queries_from_an_index(
    history: HistoryStore, name: str
) -> None:
    if await _is_ferretdb(history):
        pytest.skip("FerretDB v1 plans no index scans (see the FerretDB test below)")
    query = replace(QUERIES[name], now=NOW)
    plan = (await history.explain_list(query))["queryPlanner"]["winningPlan"]
    stages = _stages(plan)
    scans = [s for s in stages if s.get("stage") == "IXSCAN"]
    assert scans, json.dumps(plan, default=str)
    assert {s["indexName"] for s in scans} == {index_for(query)}
    assert not any(s.get("stage") == "SORT" for s in stages), "sorted in memory"


async def test_ferretdb_explain_shows_a_full_scan_without_pushdown(history: HistoryStore) -> None:
    if not await _is_ferretdb(history):
        pytest.skip("MongoDB: covered by the index test above")
    for name, query in QUERIES.items():
        explained = await history.explain_list(replace(query, now=NOW))
        plan = explained["queryPlanner"]["Plan"]
        # e.g. ["id=2 parent=0 notused=0 detail=SCAN runs_1a32ed3b"]
        assert any("SCAN" in step and "USING INDEX" not in step for step in plan), (name, plan)
        assert explained["filterPushdown"] is False, name
        assert explained["sortPushdown"] is False, name
