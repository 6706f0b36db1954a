"""Run-history rows as CSV (RFC 4180, UTF-8, ``\\r\\n`` line ends), a batch at a time.

Cells that a spreadsheet would take for a formula (starting with ``=``, ``+``, ``-``,
``@``, tab or carriage return) are prefixed with ``'``: names and error messages come
from users.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

COLUMNS = (
    "run_id",
    "workflow",
    "workflow_type",
    "version",
    "status",
    "trigger_kind",
    "started_by",
    "created_at",
    "started_at",
    "finished_at",
    "duration_seconds",
    "tasks",
    "warnings",
    "failed_node",
    "error_code",
    "error_message",
    "test",
)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _time(value: Any) -> str:
    if not isinstance(value, datetime):
        return ""
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _text(value: Any) -> str:
    text = "" if value is None else str(value)
    return f"'{text}" if text.startswith(_FORMULA_START) else text


def row(doc: Mapping[str, Any]) -> list[str]:
    trigger = doc.get("trigger") or {}
    error = doc.get("error") or {}
    duration_ms = int(doc.get("duration_ms", -1))
    return [
        str(doc["_id"]),
        _text(doc.get("workflow_name")),
        _text(doc.get("workflow_type")),
        str(doc.get("workflow_version", "")),
        str(doc.get("status", "")),
        _text(trigger.get("kind")),
        _text(trigger.get("started_by")),
        _time(doc.get("created_at")),
        _time(doc.get("started_at")),
        _time(doc.get("finished_at")),
        f"{duration_ms / 1000:.3f}" if duration_ms >= 0 else "",
        str(doc.get("task_count", "")),
        str(doc.get("warning_count", "")),
        _text(doc.get("failed_node_id")),
        _text(error.get("code")),
        _text(error.get("message")),
        "true" if doc.get("test") else "false",
    ]


class CsvWriter:
    def header(self) -> bytes:
        return self._encode([list(COLUMNS)])

    def rows(self, docs: Iterable[Mapping[str, Any]]) -> bytes:
        return self._encode(row(doc) for doc in docs)

    @staticmethod
    def _encode(rows: Iterable[list[str]]) -> bytes:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\r\n").writerows(rows)
        return buffer.getvalue().encode("utf-8")
