"""Run-history queries: filters, date ranges, free-text search, sort order and cursors.

Pure code: :func:`mongo_filter` and :func:`mongo_sort` turn a :class:`RunQuery` into what
:class:`flowyard.adapters.history.HistoryStore` sends to MongoDB, and :data:`INDEXES` are
the indexes that serve them. Pagination is keyset pagination on (sort key, run id): a page
continues strictly after the last run of the previous one, so runs that arrive meanwhile
(newer, so before the first page) never shift or repeat what follows. The cursor is
opaque to clients (URL-safe base64 of a small JSON) and bound to the query it came from.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from flowyard.domain.run import RunStatus, TriggerKind

Document = dict[str, Any]

MAX_LIMIT = 500
DEFAULT_LIMIT = 50
MAX_SEARCH_CHARS = 200


class QueryError(ValueError):
    """A query that cannot be run; ``field`` names the request field at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class SortKey(StrEnum):
    STARTED = "started"
    DURATION = "duration"

    @property
    def field(self) -> str:
        return "created_at" if self is SortKey.STARTED else "duration_ms"


class DateRange(StrEnum):
    ANY = ""
    TODAY = "today"
    LAST_24H = "24h"
    LAST_7D = "7d"
    LAST_30D = "30d"


def range_start(date_range: DateRange, now: datetime) -> datetime | None:
    """Where a preset range begins (UTC); None for no bound."""
    if date_range is DateRange.TODAY:
        return now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    days = {DateRange.LAST_24H: 1, DateRange.LAST_7D: 7, DateRange.LAST_30D: 30}.get(date_range)
    return None if days is None else now - timedelta(days=days)


@dataclass(frozen=True)
class RunQuery:
    """Which runs, in which order. Empty fields do not filter."""

    statuses: tuple[RunStatus, ...] = ()
    workflow_type: str = ""
    workflow: str = ""
    version: int = 0
    trigger_kind: str = ""
    started_by: str = ""
    date_range: DateRange = DateRange.ANY
    since: datetime | None = None
    until: datetime | None = None
    search: str = ""
    sort: SortKey = SortKey.STARTED
    ascending: bool = False
    limit: int = DEFAULT_LIMIT
    # Not part of the query's identity: the moment relative ranges are measured from.
    now: datetime = field(default_factory=lambda: datetime.now(UTC), compare=False)

    def check(self) -> RunQuery:
        """The query with its limit defaulted; raises QueryError naming a bad field."""
        if self.version and not self.workflow:
            raise QueryError("filter.version", "needs filter.workflow")
        if self.version < 0:
            raise QueryError("filter.version", "must be >= 0")
        if self.trigger_kind and self.trigger_kind not in {k.value for k in TriggerKind}:
            kinds = ", ".join(k.value for k in TriggerKind)
            raise QueryError("filter.trigger_kind", f"must be one of {kinds}")
        if self.since and self.until and self.since >= self.until:
            raise QueryError("filter.until", "must be after filter.since")
        if len(self.search) > MAX_SEARCH_CHARS:
            raise QueryError("filter.search", f"at most {MAX_SEARCH_CHARS} characters")
        if not 0 <= self.limit <= MAX_LIMIT:
            raise QueryError("limit", f"must be 1-{MAX_LIMIT} (0 = {DEFAULT_LIMIT})")
        if self.limit == 0:
            return replace(self, limit=DEFAULT_LIMIT)
        return self

    def fingerprint(self) -> str:
        """What a cursor is bound to: the filter and the order (not the page size)."""
        identity = [
            sorted(s.value for s in self.statuses),
            self.workflow_type,
            self.workflow,
            self.version,
            self.trigger_kind,
            self.started_by,
            self.date_range.value,
            _ms(self.since),
            _ms(self.until),
            self.search.strip().lower(),
            self.sort.value,
            self.ascending,
        ]
        digest = hashlib.sha256(json.dumps(identity).encode()).hexdigest()
        return digest[:16]


def _ms(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp() * 1000)


def _from_ms(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1000, UTC)


# --- free-text search --------------------------------------------------------------------

MONTHS = tuple(calendar.month_name[m].lower() for m in range(1, 13))
_DAY = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")
_MONTH = re.compile(r"^(\d{4})-(\d{2})$")
_YEAR = re.compile(r"^(\d{4})$")
_RUN_ID = re.compile(r"^[0-9a-f]{3,32}$")


def months_matching(text: str) -> list[int]:
    """Months whose English name starts with ``text`` (at least 3 letters): "dec" -> [12]."""
    word = text.strip().lower()
    if len(word) < 3 or not word.isalpha():
        return []
    return [number for number, name in enumerate(MONTHS, start=1) if name.startswith(word)]


def _date_span(text: str) -> tuple[datetime, datetime] | None:
    try:
        if found := _DAY.match(text):
            year, month, day = map(int, found.groups())
            start = datetime(year, month, day, tzinfo=UTC)
            return start, start + timedelta(days=1)
        if found := _MONTH.match(text):
            year, month = map(int, found.groups())
            start = datetime(year, month, 1, tzinfo=UTC)
            end = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=UTC)
            return start, end
        if found := _YEAR.match(text):
            year = int(found.group(1))
            if 1970 <= year <= 9999:
                return datetime(year, 1, 1, tzinfo=UTC), datetime(year + 1, 1, 1, tzinfo=UTC)
    except ValueError:  # 2025-13-40
        return None
    return None


def search_clauses(text: str, names: Sequence[str] = ()) -> list[Document]:
    """The ways a run can match free text (any one suffices): its workflow name contains
    it (``names``: the workflow names that do, found by the caller among the few names
    there are, so that the runs are found through the workflow index and not by reading
    every run's name); its id starts with it; it started in the month it names ("dec",
    "december") or on the date, month or year it spells ("2025-12-03", "2025-12", "2025").
    Every clause is an equality or a range an index serves."""
    text = text.strip()
    if not text:
        return []
    clauses: list[Document] = []
    if names:
        unique = sorted(set(names))
        clauses.append(
            {"workflow_name": unique[0] if len(unique) == 1 else {"$in": unique}},
        )
    lowered = text.lower()
    if _RUN_ID.match(lowered):
        clauses.append({"_id": {"$gte": lowered, "$lt": _prefix_end(lowered)}})
    months = months_matching(lowered)
    if months:
        clauses.append({"created_month": months[0] if len(months) == 1 else {"$in": months}})
    span = _date_span(text)
    if span:
        clauses.append({"created_at": {"$gte": span[0], "$lt": span[1]}})
    if not clauses:
        # Nothing can match; still a valid filter (an empty $or is not).
        clauses.append({"_id": {"$in": []}})
    return clauses


def name_pattern(text: str) -> Document:
    """What finds the workflow names containing ``text`` (case-insensitive), among names."""
    return {"$regex": re.escape(text.strip()), "$options": "i"}


def _prefix_end(prefix: str) -> str:
    """The least string after every string that starts with ``prefix`` (hex ids)."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


# --- filter, sort, cursor ----------------------------------------------------------------


def mongo_filter(
    query: RunQuery,
    after: Cursor | None = None,
    names: Sequence[str] = (),
    window: Document | None = None,
) -> Document:
    """The MongoDB filter for ``query``, continuing after ``after`` when given; ``names``
    are the workflow names its search text matches (:func:`search_clauses`); ``window``
    bounds the sort key further (``{"$gte": ...}``, see flowyard.adapters.history).

    Every bound on the sort key goes inside the cursor's first branch, never beside the
    cursor's ``$or``: DocumentDB 0.108 answers ``{$and: [{$or: [{k: {$lt: K}}, {k: K, _id:
    {$lt: I}}]}, {k: {$gte: L}}]}`` without the second branch's documents (found by
    tests/integration/test_history_indexes.py), and inside it the bound is redundant
    for the second branch anyway (K itself lies within the bounds)."""
    parts: list[Document] = []
    equal: Document = {}
    if len(query.statuses) == 1:
        equal["status"] = query.statuses[0].value
    elif query.statuses:
        equal["status"] = {"$in": sorted({s.value for s in query.statuses})}
    if query.workflow:
        equal["workflow_name"] = query.workflow
    if query.version:
        equal["workflow_version"] = query.version
    if query.workflow_type:
        equal["workflow_type"] = query.workflow_type
    if query.trigger_kind:
        equal["trigger.kind"] = query.trigger_kind
    if query.started_by:
        equal["trigger.started_by"] = query.started_by
    if equal:
        parts.append(equal)
    created: Document = {}
    lower = [t for t in (range_start(query.date_range, query.now), query.since) if t is not None]
    if lower:
        created["$gte"] = max(lower)
    if query.until is not None:
        created["$lt"] = query.until
    sort_bounds: Document = dict(window or {})
    if query.sort is SortKey.STARTED:
        for op, bound in created.items():
            if op in sort_bounds:  # both bound the same side: the tighter one holds
                bound = max(bound, sort_bounds[op]) if op == "$gte" else min(bound, sort_bounds[op])
            sort_bounds[op] = bound
    elif created:
        parts.append({"created_at": created})
    clauses = search_clauses(query.search, names)
    if len(clauses) == 1:
        parts.append(clauses[0])
    elif clauses:
        parts.append({"$or": clauses})
    if after is not None:
        parts.append(_after(query, after, sort_bounds))
    elif sort_bounds:
        parts.append({query.sort.field: sort_bounds})
    if not parts:
        return {}
    if len(parts) == 1:
        return parts[0]
    return {"$and": parts}


def mongo_sort(query: RunQuery) -> list[tuple[str, int]]:
    direction = 1 if query.ascending else -1
    return [(query.sort.field, direction), ("_id", direction)]


@dataclass(frozen=True)
class Cursor:
    """Where the previous page ended: its last run's sort key and id."""

    key: int  # epoch milliseconds (start time) or milliseconds (duration)
    run_id: str
    fingerprint: str

    def encode(self) -> str:
        raw = json.dumps({"k": self.key, "i": self.run_id, "f": self.fingerprint})
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str, query: RunQuery) -> Cursor:
        try:
            padded = text + "=" * (-len(text) % 4)
            data = json.loads(base64.urlsafe_b64decode(padded.encode()))
            cursor = cls(int(data["k"]), str(data["i"]), str(data["f"]))
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise QueryError("cursor", "is not a cursor this service handed out") from None
        if cursor.fingerprint != query.fingerprint():
            raise QueryError(
                "cursor", "belongs to another filter or sort order; start again without it"
            )
        return cursor

    @classmethod
    def after_doc(cls, query: RunQuery, doc: Mapping[str, Any]) -> Cursor:
        if query.sort is SortKey.STARTED:
            key = _ms(doc["created_at"])
            assert key is not None
        else:
            key = int(doc.get("duration_ms", -1))
        return cls(key, str(doc["_id"]), query.fingerprint())


def _after(query: RunQuery, cursor: Cursor, bounds: Document) -> Document:
    """Strictly after the cursor's run in the sort order, within ``bounds`` of the sort key
    (those on the cursor's side are already met: its run lay within them)."""
    field_name = query.sort.field
    value: Any = _from_ms(cursor.key) if query.sort is SortKey.STARTED else cursor.key
    beyond = "$gt" if query.ascending else "$lt"
    first: Document = {op: bound for op, bound in bounds.items() if op[:3] != beyond[:3]}
    first[beyond] = value
    if beyond in bounds:  # an upper (or lower) bound tighter than the cursor
        first[beyond] = (
            min(value, bounds[beyond]) if beyond == "$lt" else max(value, bounds[beyond])
        )
    return {
        "$or": [
            {field_name: first},
            {field_name: value, "_id": {beyond: cursor.run_id}},
        ]
    }


# --- indexes -------------------------------------------------------------------------------

Keys = tuple[tuple[str, int], ...]


def _with_sort(prefix: Sequence[str], sort: SortKey) -> Keys:
    return (*((name, 1) for name in prefix), (sort.field, -1), ("_id", -1))


# Equality prefixes the history list is commonly filtered by; each gets an index per sort
# order that matters (ESR: equality fields, then the sort key, then the run id tiebreak).
_STARTED_PREFIXES: tuple[tuple[str, ...], ...] = (
    (),
    ("status",),
    ("workflow_name",),
    ("workflow_name", "status"),
    ("workflow_name", "workflow_version"),
    ("workflow_type",),
    ("workflow_type", "status"),
    ("trigger.kind",),
    ("trigger.started_by",),
)
_DURATION_PREFIXES: tuple[tuple[str, ...], ...] = (
    (),
    ("status",),
    ("workflow_name",),
)
# Free-text search by month name ("dec"): the month, then the start time.
_SEARCH_PREFIXES: tuple[tuple[str, ...], ...] = (("created_month",),)


def _index_name(prefix: Sequence[str], sort: SortKey) -> str:
    parts = [p.replace("trigger.", "").replace("workflow_", "wf_") for p in prefix]
    return "hist_" + "_".join([*parts, sort.value])


INDEXES: dict[str, Keys] = {
    _index_name(prefix, sort): _with_sort(prefix, sort)
    for sort, prefixes in (
        (SortKey.STARTED, _STARTED_PREFIXES + _SEARCH_PREFIXES),
        (SortKey.DURATION, _DURATION_PREFIXES),
    )
    for prefix in prefixes
}


def equality_fields(query: RunQuery) -> set[str]:
    """The document fields ``query`` pins to one value (or, for statuses, a few)."""
    given = {
        "status": bool(query.statuses),
        "workflow_name": bool(query.workflow),
        "workflow_version": bool(query.version),
        "workflow_type": bool(query.workflow_type),
        "trigger.kind": bool(query.trigger_kind),
        "trigger.started_by": bool(query.started_by),
    }
    return {name for name, present in given.items() if present}


def index_for(query: RunQuery) -> str:
    """The index that serves ``query``'s filter and order best: the longest equality
    prefix among the query's equality fields, followed by its sort key. Every query has
    one (at worst the bare sort index, then MongoDB filters what it reads)."""
    wanted = equality_fields(query)
    best = _index_name((), query.sort)
    best_len = -1
    for name, keys in INDEXES.items():
        prefix = [k for k, _ in keys[:-2]]
        if keys[-2][0] != query.sort.field or not set(prefix) <= wanted:
            continue
        if len(prefix) > best_len:
            best, best_len = name, len(prefix)
    return best
