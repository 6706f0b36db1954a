"""The query node: read one number from a data source and compare it with thresholds.

It is the monitoring check of a workflow ("more than 10 failed orders in the last hour").
Crossing the warning threshold keeps the task successful but carries a warning; crossing
the failure threshold fails it with ``threshold.failure`` so retries, alerts and
downstream branches treat it like any failure. The value is in the output either way.

Sources are read-only by construction: SQLite is opened with ``mode=ro`` and only
SELECT/WITH statements run; MongoDB is asked for a count or an aggregation; HTTP is a GET.
A MongoDB aggregation that returns no document (``$count`` or ``$group`` over nothing)
reads as 0; a document without the field is ``query.not_a_number``.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
import time
from collections.abc import Mapping
from typing import Any, cast
from urllib.parse import quote

import httpx
from bson.decimal128 import Decimal128
from flowyard.domain.json import JsonObject, JsonValue
from flowyard.domain.node_config import config_problems
from flowyard.domain.run import TaskError
from pymongo import AsyncMongoClient
from pymongo.errors import ConnectionFailure, PyMongoError, ServerSelectionTimeoutError

from flowyard_executor.nodes.http import effective_timeout, run_http
from flowyard_executor.nodes.outcome import INVALID_CONFIG, NodeOutcome, failure, invalid_config

DEFAULT_TIMEOUT_SECONDS = 30.0
SERVER_SELECTION_MS = 3000


class _QueryFailed(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def read_path(value: object, path: str) -> object:
    """``value`` at the dotted ``path`` ("data.items.0.count"); digits index lists."""
    for part in path.split("."):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise _QueryFailed("query.not_a_number", f"the result has nothing at {path!r}")
    return value


def _number(value: object, where: str) -> int | float:
    if isinstance(value, Decimal128):
        value = float(value.to_decimal())
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _QueryFailed("query.not_a_number", f"{where} is not a number: {value!r:.200}")
    return value


def _format(value: float) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


class QueryChecker:
    def __init__(self, server_selection_ms: int = SERVER_SELECTION_MS) -> None:
        self._server_selection_ms = server_selection_ms

    async def check(
        self,
        config: JsonObject,
        client: httpx.AsyncClient,
        *,
        timeout_seconds: float | None = None,
    ) -> NodeOutcome:
        """Read the value ``config["source"]`` names and grade it against the thresholds."""
        problems = config_problems("query", config, rendered=True)
        if problems:
            return invalid_config(problems)
        source = cast(JsonObject, config["source"])
        limit = effective_timeout(timeout_seconds) or DEFAULT_TIMEOUT_SECONDS
        try:
            if source["kind"] == "mongodb":
                value = await self._mongodb(source, limit)
            elif source["kind"] == "sqlite":
                value = await asyncio.to_thread(_sqlite, source, time.monotonic() + limit)
            else:
                value = await _http(source, client, limit)
        except _QueryFailed as exc:
            return failure(exc.code, str(exc))
        return grade(value, config)

    async def _mongodb(self, source: JsonObject, limit: float) -> int | float:
        where = f"{source['database']}.{source['collection']}"
        selection_ms = min(self._server_selection_ms, int(limit * 1000))
        try:
            mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
                str(source["connection"]),
                serverSelectionTimeoutMS=selection_ms,
                connectTimeoutMS=selection_ms,
                socketTimeoutMS=int(limit * 1000),
            )
        except PyMongoError as exc:
            raise _QueryFailed(INVALID_CONFIG, f"bad MongoDB connection string: {exc}") from exc
        try:
            async with asyncio.timeout(limit):
                return await _mongodb_value(mongo, source)
        except TimeoutError as exc:
            raise _QueryFailed("query.timeout", f"MongoDB {where} took over {limit:g} s") from exc
        except ServerSelectionTimeoutError as exc:
            # the message goes on to describe the whole topology; the first part names the
            # server and the reason
            reason = str(exc).split(", Timeout:", 1)[0]
            raise _QueryFailed("query.connection", f"cannot reach MongoDB: {reason}") from exc
        except PyMongoError as exc:
            if exc.timeout:
                raise _QueryFailed("query.timeout", f"MongoDB {where} timed out: {exc}") from exc
            code = "query.connection" if isinstance(exc, ConnectionFailure) else "query.error"
            raise _QueryFailed(code, f"MongoDB {where} failed the query: {exc}") from exc
        finally:
            await mongo.close()


async def _mongodb_value(mongo: AsyncMongoClient[dict[str, Any]], source: JsonObject) -> float:
    collection = mongo[str(source["database"])][str(source["collection"])]
    pipeline = source.get("pipeline")
    if pipeline is None:
        query_filter = cast(dict[str, Any], source.get("filter") or {})
        return await collection.count_documents(query_filter)
    cursor = await collection.aggregate(cast(list[dict[str, Any]], pipeline))
    documents = await cursor.to_list(1)
    if not documents:
        return 0
    field = str(source["field"])
    return _number(read_path(documents[0], field), f"the pipeline's field {field!r}")


def _sqlite(source: JsonObject, deadline: float) -> int | float:
    path = str(source["path"])
    try:
        connection = sqlite3.connect(f"file:{quote(path)}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error as exc:
        raise _QueryFailed("query.connection", f"cannot open SQLite {path}: {exc}") from exc
    try:
        connection.execute("PRAGMA query_only = ON")
        # checked every 1000 VM steps; a non-zero answer interrupts the statement
        connection.set_progress_handler(lambda: int(time.monotonic() > deadline), 1000)
        row = connection.execute(str(source["sql"])).fetchone()
    except sqlite3.OperationalError as exc:
        if time.monotonic() > deadline:
            raise _QueryFailed("query.timeout", f"the SQLite query on {path} timed out") from exc
        code = "query.connection" if "unable to open" in str(exc) else "query.error"
        raise _QueryFailed(code, f"SQLite {path}: {exc}") from exc
    except (sqlite3.Error, sqlite3.Warning) as exc:
        raise _QueryFailed("query.error", f"SQLite {path}: {exc}") from exc
    finally:
        connection.close()
    if row is None or not row:
        raise _QueryFailed("query.not_a_number", f"the SQLite query on {path} returned no rows")
    return _number(row[0], "the first column of the first row")


async def _http(source: JsonObject, client: httpx.AsyncClient, limit: float) -> int | float:
    request: JsonObject = {"url": source["url"], "method": "GET"}
    if source.get("headers") is not None:
        request["headers"] = source["headers"]
    fetched = await run_http(request, client, limit)
    if fetched.error is not None:
        code = {"http.connection": "query.connection", "http.timeout": "query.timeout"}.get(
            fetched.error.code, "query.error"
        )
        raise _QueryFailed(code, fetched.error.message)
    body = fetched.output["body"] if isinstance(fetched.output, dict) else None
    if isinstance(body, str):
        raise _QueryFailed("query.not_a_number", f"{source['url']} did not answer with JSON")
    path = str(source["value_path"])
    return _number(read_path(body, path), f"the value at {path!r}")


def grade(value: int | float, config: JsonObject) -> NodeOutcome:
    """Compare ``value`` with the config's thresholds: ok, a warning, or a failure."""
    comparison = str(config.get("comparison") or "above")
    warning = cast("int | float | None", config.get("warning_threshold"))
    failure_at = cast("int | float | None", config.get("failure_threshold"))

    def crosses(threshold: float | None) -> bool:
        if threshold is None:
            return False
        return value > threshold if comparison == "above" else value < threshold

    level = "failure" if crosses(failure_at) else "warning" if crosses(warning) else "ok"
    output: JsonValue = {
        "value": value,
        "warning_threshold": warning,
        "failure_threshold": failure_at,
        "comparison": comparison,
        "level": level,
    }
    if level == "failure":
        assert failure_at is not None
        message = (
            f"query value {_format(value)} is {comparison} "
            f"the failure threshold {_format(failure_at)}"
        )
        return NodeOutcome(output, TaskError("threshold.failure", message))
    if level == "warning":
        assert warning is not None
        message = (
            f"query value {_format(value)} is {comparison} the warning threshold {_format(warning)}"
        )
        return NodeOutcome(output, warnings=(message,))
    return NodeOutcome(output)
