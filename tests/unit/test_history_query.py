"""History queries: every common filter has an index whose prefix serves it and its
sort order; cursors are opaque, bound to their query, and continue strictly after."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from flowyard.domain.run import RunStatus
from flowyard.history.query import (
    INDEXES,
    Cursor,
    DateRange,
    QueryError,
    RunQuery,
    SortKey,
    equality_fields,
    index_for,
    mongo_filter,
    mongo_sort,
    months_matching,
    name_pattern,
    range_start,
    search_clauses,
)

NOW = datetime(2025, 12, 3, 15, 30, tzinfo=UTC)

COMMON = [
    RunQuery(),
    RunQuery(statuses=(RunStatus.FAILED,)),
    RunQuery(statuses=(RunStatus.FAILED, RunStatus.STOPPED)),
    RunQuery(workflow="billing"),
    RunQuery(workflow="billing", statuses=(RunStatus.FAILED,)),
    RunQuery(workflow="billing", version=3),
    RunQuery(workflow_type="ops"),
    RunQuery(workflow_type="ops", statuses=(RunStatus.FAILED,)),
    RunQuery(trigger_kind="schedule"),
    RunQuery(started_by="alice"),
]


@pytest.mark.parametrize(
    "query", COMMON, ids=lambda q: "+".join(sorted(equality_fields(q))) or "all"
)
@pytest.mark.parametrize("sort", [SortKey.STARTED, SortKey.DURATION])
def test_common_filters_have_an_index_for_filter_then_sort(query: RunQuery, sort: SortKey) -> None:
    from dataclasses import replace

    query = replace(query, sort=sort, date_range=DateRange.LAST_7D, now=NOW)
    keys = INDEXES[index_for(query)]
    prefix = {name for name, _ in keys[:-2]}
    # ESR: the index's equality prefix is pinned by the query, then comes the sort key
    # and the run id, so MongoDB reads the page in order and stops after `limit`.
    assert prefix <= equality_fields(query)
    assert [k for k, _ in keys[-2:]] == [sort.field, "_id"]
    if sort is SortKey.STARTED:
        assert prefix == equality_fields(query), "a started-order filter without its own index"


def test_every_status_workflow_and_type_filter_with_duration_uses_a_filtered_index() -> None:
    assert index_for(RunQuery(sort=SortKey.DURATION, statuses=(RunStatus.FAILED,))) == (
        "hist_status_duration"
    )
    assert index_for(RunQuery(sort=SortKey.DURATION, workflow="x")) == "hist_wf_name_duration"


def test_filter_combines_fields_range_and_search() -> None:
    query = RunQuery(
        statuses=(RunStatus.FAILED, RunStatus.STOPPED),
        workflow="billing",
        date_range=DateRange.LAST_24H,
        search="dec",
        now=NOW,
    )
    built = mongo_filter(query, names=["billing-eu", "billing-us"])
    equal, search, created = built["$and"]
    assert equal == {"status": {"$in": ["failed", "stopped"]}, "workflow_name": "billing"}
    assert created == {"created_at": {"$gte": NOW - timedelta(days=1)}}
    assert {"created_month": 12} in search["$or"]
    assert {"workflow_name": {"$in": ["billing-eu", "billing-us"]}} in search["$or"]
    assert mongo_sort(query) == [("created_at", -1), ("_id", -1)]
    assert mongo_filter(RunQuery()) == {}


def test_ranges() -> None:
    assert range_start(DateRange.TODAY, NOW) == datetime(2025, 12, 3, tzinfo=UTC)
    assert range_start(DateRange.LAST_7D, NOW) == NOW - timedelta(days=7)
    assert range_start(DateRange.ANY, NOW) is None
    both = mongo_filter(
        RunQuery(date_range=DateRange.LAST_30D, since=NOW - timedelta(days=2), now=NOW)
    )
    assert both == {"created_at": {"$gte": NOW - timedelta(days=2)}}


def test_search_understands_months_dates_and_run_ids() -> None:
    assert months_matching("dec") == [12]
    assert months_matching("ju") == []  # too short to mean a month
    assert months_matching("jun") == [6]
    assert months_matching("ma") == []
    assert months_matching("mar") == [3]
    day = search_clauses("2025-12-03")
    assert {
        "created_at": {
            "$gte": datetime(2025, 12, 3, tzinfo=UTC),
            "$lt": datetime(2025, 12, 4, tzinfo=UTC),
        }
    } in day
    month = search_clauses("2025-12")
    assert {
        "created_at": {
            "$gte": datetime(2025, 12, 1, tzinfo=UTC),
            "$lt": datetime(2026, 1, 1, tzinfo=UTC),
        }
    } in month
    # a run id prefix is a range of the _id index, not a regex
    assert {"_id": {"$gte": "abc123", "$lt": "abc124"}} in search_clauses("ABC123")
    # names the caller found containing the text; the text itself is never a regex on runs
    assert search_clauses("a.b*", ["xa.b*y"])[0] == {"workflow_name": "xa.b*y"}
    assert name_pattern("a.b*") == {"$regex": r"a\.b\*", "$options": "i"}
    # nothing that can match: a filter that matches nothing (an empty $or is invalid)
    assert search_clauses("2025-13-45") == [{"_id": {"$in": []}}]
    assert search_clauses("  ") == []


def test_cursor_round_trip_and_binding() -> None:
    query = RunQuery(workflow="billing", now=NOW)
    doc = {"_id": "r9", "created_at": NOW, "duration_ms": 5}
    cursor = Cursor.after_doc(query, doc)
    text = cursor.encode()
    assert "billing" not in text and "=" not in text
    assert Cursor.decode(text, query) == cursor
    # The same query later (relative ranges move) still accepts it; another does not.
    from dataclasses import replace

    assert Cursor.decode(text, replace(query, now=NOW + timedelta(hours=1), limit=7)) == cursor
    with pytest.raises(QueryError, match="another filter"):
        Cursor.decode(text, replace(query, workflow="other"))
    with pytest.raises(QueryError, match="not a cursor"):
        Cursor.decode("%%%", query)
    after = mongo_filter(query, cursor)["$and"][-1]
    assert after == {
        "$or": [{"created_at": {"$lt": NOW}}, {"created_at": NOW, "_id": {"$lt": "r9"}}]
    }
    ascending = replace(query, ascending=True, sort=SortKey.DURATION)
    after = mongo_filter(ascending, Cursor.after_doc(ascending, doc))["$and"][-1]
    assert after == {"$or": [{"duration_ms": {"$gt": 5}}, {"duration_ms": 5, "_id": {"$gt": "r9"}}]}


@pytest.mark.parametrize(
    ("query", "field"),
    [
        (RunQuery(version=2), "filter.version"),
        (RunQuery(trigger_kind="nope"), "filter.trigger_kind"),
        (RunQuery(limit=501), "limit"),
        (RunQuery(since=NOW, until=NOW), "filter.until"),
        (RunQuery(search="x" * 201), "filter.search"),
    ],
)
def test_bad_queries_name_the_field(query: RunQuery, field: str) -> None:
    with pytest.raises(QueryError) as raised:
        query.check()
    assert raised.value.field == field


def test_limit_defaults_to_50() -> None:
    assert RunQuery().check().limit == 50
