"""Run history (FEATURES H1) through the gateway: every filter, search, both sorts in both
directions, cursor pagination (also while new runs arrive), on runs seeded through the
real document mapping plus one real run through the engine."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from flowyard import codec
from flowyard.adapters.mongo import MongoStore
from flowyard.domain.run import RunStatus, TriggerKind
from flowyard.v1 import gateway_pb2, history_pb2, history_pb2_grpc, run_pb2
from google.protobuf import timestamp_pb2

from tests.e2e.conftest import RunningFlowyard
from tests.e2e.test_run_end_to_end import CHAIN, apply, finished_run
from tests.history_seed import Seed, seed_docs

pytestmark = pytest.mark.e2e

Eventually = Callable[..., Awaitable[Any]]
NOW = datetime.now(UTC).replace(microsecond=0)
DEC = datetime(NOW.year - 1, 12, 3, 10, 0, tzinfo=UTC)
JUN = datetime(NOW.year - 1, 6, 15, 10, 0, tzinfo=UTC)


def _seeds() -> list[Seed]:
    hour = timedelta(hours=1)
    return [
        Seed("billing-sync", NOW - 1 * hour, RunStatus.SUCCEEDED, run_id="a" * 32),
        Seed("billing-sync", NOW - 2 * hour, RunStatus.FAILED, duration=timedelta(seconds=90)),
        Seed("billing-sync", NOW - 3 * hour, RunStatus.RUNNING, version=2, duration=None),
        Seed(
            "deck-builder",
            NOW - 30 * hour,
            RunStatus.SUCCEEDED,
            workflow_type="cards",
            trigger=TriggerKind.SCHEDULE,
            started_by="scheduler",
            duration=timedelta(seconds=5),
        ),
        Seed(
            "deck-builder",
            NOW - 5 * 24 * hour,
            RunStatus.STOPPED,
            workflow_type="cards",
            trigger=TriggerKind.WEBHOOK,
            started_by="bob",
        ),
        Seed("inventory", NOW - 20 * 24 * hour, RunStatus.FAILED, workflow_type="stock"),
        Seed("inventory", DEC, RunStatus.SUCCEEDED, workflow_type="stock", run_id="dec0" * 8),
        Seed("inventory", JUN, RunStatus.SUCCEEDED, workflow_type="stock", started_by="carol"),
    ]


@pytest.fixture
async def history(flowyard: RunningFlowyard) -> history_pb2_grpc.HistoryServiceStub:
    # Registered workflows, as every stored run's workflow is (search finds runs by them).
    for name in sorted({s.workflow for s in _seeds()}):
        await apply(flowyard, {"name": name, "nodes": [{"id": "start", "type": "trigger"}]})
    async with MongoStore(flowyard.settings.mongo_url, flowyard.settings.mongo_db) as store:
        await store.runs.insert_many(seed_docs(_seeds()))
    return history_pb2_grpc.HistoryServiceStub(flowyard.channel)


def stamp(moment: datetime) -> timestamp_pb2.Timestamp:
    result = codec.time_to_proto(moment)
    assert result is not None
    return result


async def names(
    history: history_pb2_grpc.HistoryServiceStub, **filter_fields: Any
) -> list[tuple[str, str]]:
    response = await history.ListRuns(
        history_pb2.ListRunsRequest(filter=history_pb2.RunFilter(**filter_fields), limit=100)
    )
    return [(r.workflow_name, codec.RUN_STATUS_FROM_PROTO[r.status].value) for r in response.runs]


async def test_each_filter_narrows_the_history(
    history: history_pb2_grpc.HistoryServiceStub,
) -> None:
    everything = await names(history)
    assert len(everything) == 8
    # Newest first by default.
    assert everything[0] == ("billing-sync", "succeeded")
    assert everything[-1] == ("inventory", "succeeded")

    failed_or_stopped = await names(
        history, statuses=[run_pb2.RUN_STATUS_FAILED, run_pb2.RUN_STATUS_STOPPED]
    )
    assert sorted(failed_or_stopped) == [
        ("billing-sync", "failed"),
        ("deck-builder", "stopped"),
        ("inventory", "failed"),
    ]
    assert {n for n, _ in await names(history, workflow_type="cards")} == {"deck-builder"}
    assert len(await names(history, workflow="billing-sync")) == 3
    assert await names(history, workflow="billing-sync", version=2) == [("billing-sync", "running")]
    assert await names(history, trigger_kind="webhook") == [("deck-builder", "stopped")]
    assert await names(history, started_by="carol") == [("inventory", "succeeded")]
    assert await names(history, started_by="carol", workflow_type="cards") == []


async def test_date_ranges_presets_and_custom(
    history: history_pb2_grpc.HistoryServiceStub,
) -> None:
    last_24h = await names(history, range=history_pb2.DATE_RANGE_LAST_24H)
    assert len(last_24h) == 3
    assert len(await names(history, range=history_pb2.DATE_RANGE_LAST_7D)) == 5
    assert len(await names(history, range=history_pb2.DATE_RANGE_LAST_30D)) == 6
    today = await names(history, range=history_pb2.DATE_RANGE_TODAY)
    midnight = NOW.replace(hour=0, minute=0, second=0)
    expected_today = sum(1 for s in _seeds() if s.created_at >= midnight and s.created_at <= NOW)
    assert len(today) == expected_today
    custom = await names(
        history,
        since=stamp(DEC - timedelta(days=1)),
        until=stamp(DEC + timedelta(days=1)),
    )
    assert custom == [("inventory", "succeeded")]


async def test_free_text_search_over_names_ids_and_dates(
    history: history_pb2_grpc.HistoryServiceStub,
) -> None:
    # "dec" finds December runs (the seeded one of last year, and in December or early
    # January the recent ones too) and the names containing "dec".
    def december_or_named(word: str) -> list[tuple[str, str]]:
        return sorted(
            (s.workflow, s.status.value)
            for s in _seeds()
            if s.created_at.month == 12 or word in s.workflow
        )

    dec = await names(history, search="dec")
    assert sorted(dec) == december_or_named("dec")
    assert ("deck-builder", "stopped") in dec and ("inventory", "succeeded") in dec
    assert sorted(await names(history, search="December")) == december_or_named("december")
    assert await names(history, search="BILLING") != []
    response = await history.ListRuns(
        history_pb2.ListRunsRequest(filter=history_pb2.RunFilter(search="aaaaaaaa"))
    )
    assert [r.run_id for r in response.runs] == ["a" * 32]
    assert await names(history, search=DEC.strftime("%Y-%m-%d")) == [("inventory", "succeeded")]
    assert await names(history, search=JUN.strftime("%Y-%m")) == [("inventory", "succeeded")]
    assert await names(history, search="nothing-like-this") == []


async def test_sort_by_start_time_and_duration_both_ways(
    history: history_pb2_grpc.HistoryServiceStub,
) -> None:
    async def listed(sort: history_pb2.RunSort.ValueType, ascending: bool) -> list[Any]:
        response = await history.ListRuns(
            history_pb2.ListRunsRequest(sort=sort, ascending=ascending, limit=100)
        )
        return list(response.runs)

    newest_first = await listed(history_pb2.RUN_SORT_STARTED, False)
    oldest_first = await listed(history_pb2.RUN_SORT_STARTED, True)
    assert [r.run_id for r in oldest_first] == [r.run_id for r in reversed(newest_first)]
    times = [r.created_at.ToDatetime() for r in newest_first]
    assert times == sorted(times, reverse=True)

    longest = await listed(history_pb2.RUN_SORT_DURATION, False)
    durations = [r.duration.ToTimedelta() if r.HasField("duration") else None for r in longest]
    assert durations[0] == timedelta(seconds=90)
    assert durations[-1] is None  # the running run: no duration yet, sorted as shortest
    shortest = await listed(history_pb2.RUN_SORT_DURATION, True)
    assert [r.run_id for r in shortest] == [r.run_id for r in reversed(longest)]


async def test_cursor_pages_cover_every_run_once_even_while_runs_arrive(
    flowyard: RunningFlowyard, history: history_pb2_grpc.HistoryServiceStub
) -> None:
    for sort in (history_pb2.RUN_SORT_STARTED, history_pb2.RUN_SORT_DURATION):
        seen: list[str] = []
        cursor = ""
        arrived = False
        while True:
            page = await history.ListRuns(
                history_pb2.ListRunsRequest(sort=sort, limit=3, cursor=cursor)
            )
            assert len(page.runs) <= 3
            seen.extend(r.run_id for r in page.runs)
            if not arrived:
                # New runs arrive between pages: newer than everything (and for the
                # duration order, shorter than anything seen), so they never shift a page.
                async with MongoStore(
                    flowyard.settings.mongo_url, flowyard.settings.mongo_db
                ) as store:
                    await store.runs.insert_many(
                        seed_docs(
                            [
                                Seed(
                                    "late",
                                    NOW + timedelta(minutes=i),
                                    duration=None,
                                    status=RunStatus.RUNNING,
                                )
                                for i in range(1, 4)
                            ]
                        )
                    )
                arrived = True
            if not page.next_cursor:
                break
            cursor = page.next_cursor
        assert len(seen) == len(set(seen)), "a run was listed twice"
        expected = {
            r.run_id
            for r in (
                await history.ListRuns(history_pb2.ListRunsRequest(sort=sort, limit=500))
            ).runs
        }
        late = {
            r.run_id
            for r in (
                await history.ListRuns(
                    history_pb2.ListRunsRequest(
                        filter=history_pb2.RunFilter(workflow="late"), limit=500
                    )
                )
            ).runs
        }
        # Every run that existed when paging began was listed.
        assert expected - late <= set(seen)


async def test_bad_cursors_and_filters_are_refused(
    history: history_pb2_grpc.HistoryServiceStub,
) -> None:
    page = await history.ListRuns(history_pb2.ListRunsRequest(limit=2))
    assert page.next_cursor
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await history.ListRuns(
            history_pb2.ListRunsRequest(
                limit=2, cursor=page.next_cursor, filter=history_pb2.RunFilter(workflow="x")
            )
        )
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "another filter" in (refused.value.details() or "")
    for request in (
        history_pb2.ListRunsRequest(cursor="not-a-cursor"),
        history_pb2.ListRunsRequest(limit=501),
        history_pb2.ListRunsRequest(filter=history_pb2.RunFilter(version=2)),
        history_pb2.ListRunsRequest(filter=history_pb2.RunFilter(trigger_kind="telepathy")),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await history.ListRuns(request)
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_a_real_run_is_listed_with_who_started_it_and_its_duration(
    flowyard: RunningFlowyard, history: history_pb2_grpc.HistoryServiceStub, eventually: Eventually
) -> None:
    await apply(flowyard, CHAIN)
    started = await flowyard.runs.StartRun(
        gateway_pb2.StartRunRequest(
            workflow="price-check", input=codec.json_to_value({"price": 7}), started_by="dora"
        )
    )
    detail = await finished_run(flowyard, started.run_id, eventually)
    # Who started it: the caller's name (or, with authentication, its principal).
    assert detail.trigger.started_by
    page = await history.ListRuns(
        history_pb2.ListRunsRequest(
            filter=history_pb2.RunFilter(
                workflow="price-check",
                started_by=detail.trigger.started_by,
                trigger_kind="api",
                statuses=[run_pb2.RUN_STATUS_SUCCEEDED],
                range=history_pb2.DATE_RANGE_TODAY,
            )
        )
    )
    (run,) = page.runs
    assert run.run_id == started.run_id
    assert run.workflow_type == "inventory" and run.workflow_version == 1
    assert run.HasField("duration") and run.duration.ToTimedelta() > timedelta(0)
    assert run.task_count == 3
