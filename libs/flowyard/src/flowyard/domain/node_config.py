"""Validation of action-node configs (http, email, slack, query), pure and shared.

A definition is checked when it is registered, so a typo ("expected_statuses"), a DM
channel or a DELETE statement is refused then rather than at 3 a.m. when the node runs.
At registration a string may still hold ``{{ ... }}`` template segments whose value is
unknown, so those values are accepted as they are. The executor calls the same function
with ``rendered=True`` on the substituted config, where no such leniency applies: one
set of rules, checked at both ends.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import TypeGuard, TypeVar
from urllib.parse import urlsplit

_T = TypeVar("_T")

HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
QUERY_SOURCE_KINDS = ("mongodb", "sqlite", "http")
COMPARISONS = ("above", "below")

_KNOWN_FIELDS: Mapping[str, frozenset[str]] = {
    "http": frozenset(
        {"url", "method", "headers", "query", "json", "body", "expected_status", "timeout_seconds"}
    ),
    "email": frozenset({"to", "cc", "subject", "body", "html"}),
    "slack": frozenset({"channel", "text", "blocks"}),
    "query": frozenset({"source", "warning_threshold", "failure_threshold", "comparison"}),
}
_SOURCE_FIELDS: Mapping[str, frozenset[str]] = {
    "mongodb": frozenset(
        {"kind", "connection", "database", "collection", "filter", "pipeline", "field"}
    ),
    "sqlite": frozenset({"kind", "path", "sql"}),
    "http": frozenset({"kind", "url", "value_path", "headers"}),
}
# leading whitespace and SQL comments, then the first keyword
_SQL_LEAD = re.compile(r"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*", re.DOTALL)


def is_read_only_sql(sql: str) -> bool:
    """Whether ``sql`` starts (after comments) with SELECT or WITH."""
    lead = _SQL_LEAD.match(sql)
    rest = sql[lead.end() :] if lead else sql
    keyword = re.match(r"[A-Za-z]+", rest)
    return keyword is not None and keyword.group(0).upper() in ("SELECT", "WITH")


def config_problems(
    node_type: str, config: Mapping[str, object], *, rendered: bool = False
) -> list[str]:
    """What is wrong with ``config`` for a node of ``node_type``; [] when nothing is.

    Types other than the action nodes are not this module's business and get [].
    """
    check = _CHECKS.get(node_type)
    if check is None:
        return []
    checker = _Checker(rendered)
    checker.unknown("config", config, _KNOWN_FIELDS[node_type])
    check(checker, config)
    return checker.problems


class _Checker:
    def __init__(self, rendered: bool) -> None:
        self.problems: list[str] = []
        self.rendered = rendered

    def add(self, message: str) -> None:
        self.problems.append(message)

    def template(self, value: object) -> bool:
        """A value to take on trust: it is only known once the run renders it."""
        return not self.rendered and isinstance(value, str) and "{{" in value

    def given(self, value: _T | None) -> TypeGuard[_T]:
        """Whether ``value`` is present and known now, so its shape can be checked."""
        return value is not None and not self.template(value)

    def unknown(self, where: str, value: Mapping[str, object], known: frozenset[str]) -> None:
        for name in sorted(set(value) - known):
            self.add(f"{where}.{name} is not a known field (known: {', '.join(sorted(known))})")

    def present(self, where: str, value: object, required: bool) -> bool:
        if value is None and required:
            self.add(f"{where} is required")
        return value is not None

    def string(self, where: str, value: object, *, required: bool = True) -> str | None:
        if not self.present(where, value, required):
            return None
        if not isinstance(value, str):
            self.add(f"{where} must be a string")
            return None
        if required and not value.strip():
            self.add(f"{where} must not be empty")
            return None
        return value

    def url(self, where: str, value: object) -> None:
        url = self.string(where, value)
        if not self.given(url):
            return
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            self.add(f"{where} must be an http or https URL, got {url!r}")

    def number(self, where: str, value: object, *, positive: bool = False) -> float | None:
        if not self.given(value):
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.add(f"{where} must be a number")
            return None
        if positive and value <= 0:
            self.add(f"{where} must be greater than 0")
            return None
        return float(value)

    def string_map(self, where: str, value: object) -> None:
        if self.given(value) and not isinstance(value, Mapping):
            self.add(f"{where} must be an object")
        elif isinstance(value, Mapping):
            self.problems.extend(
                f"{where}.{key} must be a string"
                for key, item in value.items()
                if type(item) is not str
            )

    def object_list(self, where: str, value: object, what: str) -> None:
        if self.given(value) and (
            not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value)
        ):
            self.add(f"{where} must be a list of {what}")

    def addresses(self, where: str, value: object, *, required: bool) -> None:
        if not self.present(where, value, required):
            return
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not items:
            self.add(f"{where} must be an address or a non-empty list of addresses")
            return
        for index, item in enumerate(items):
            label = where if isinstance(value, str) else f"{where}[{index}]"
            if not isinstance(item, str):
                self.add(f"{label} must be a string")
            elif not self.template(item) and not is_email_address(item):
                self.add(f"{label} is not an email address: {item!r}")


def is_email_address(value: str) -> bool:
    """Minimal check: one '@' with something on both sides and no whitespace."""
    local, at, domain = value.partition("@")
    return bool(at and local and domain) and "@" not in domain and not re.search(r"[\s,<>]", value)


def _check_http(c: _Checker, config: Mapping[str, object]) -> None:
    c.url("config.url", config.get("url"))
    method = c.string("config.method", config.get("method"), required=False)
    if c.given(method) and method.upper() not in HTTP_METHODS:
        c.add(f"config.method must be one of {', '.join(sorted(HTTP_METHODS))}, got {method!r}")
    c.string_map("config.headers", config.get("headers"))
    query = config.get("query")
    if c.given(query):
        if not isinstance(query, Mapping):
            c.add("config.query must be an object")
        else:
            for key, item in query.items():
                items = item if isinstance(item, list) else [item]
                if not all(isinstance(v, str | int | float) for v in items):
                    c.add(f"config.query.{key} must be a string, number or list of them")
    if config.get("json") is not None and config.get("body") is not None:
        c.add("config.json and config.body are exclusive: give one request body")
    c.string("config.body", config.get("body"), required=False)
    expected = config.get("expected_status")
    if c.given(expected) and (
        not isinstance(expected, list)
        or not expected
        or not all(type(s) is int and 100 <= s <= 599 for s in expected)
    ):
        c.add("config.expected_status must be a non-empty list of HTTP status codes")
    c.number("config.timeout_seconds", config.get("timeout_seconds"), positive=True)


def _check_email(c: _Checker, config: Mapping[str, object]) -> None:
    c.addresses("config.to", config.get("to"), required=True)
    c.addresses("config.cc", config.get("cc"), required=False)
    subject = c.string("config.subject", config.get("subject"))
    if subject is not None and ("\n" in subject or "\r" in subject):
        c.add("config.subject must be a single line")
    c.string("config.body", config.get("body"))
    c.string("config.html", config.get("html"), required=False)


def _check_slack(c: _Checker, config: Mapping[str, object]) -> None:
    channel = c.string("config.channel", config.get("channel"))
    if c.given(channel) and not channel.startswith("#"):
        c.add("config.channel must start with '#' (direct messages are not allowed)")
    c.string("config.text", config.get("text"))
    c.object_list("config.blocks", config.get("blocks"), "objects")


def _check_query(c: _Checker, config: Mapping[str, object]) -> None:
    source = config.get("source")
    if source is None:
        c.add("config.source is required")
    elif not isinstance(source, Mapping):
        c.add("config.source must be an object")
    else:
        _check_source(c, source)
    comparison = config.get("comparison", "above")
    if comparison not in COMPARISONS and not c.template(comparison):
        c.add(f"config.comparison must be 'above' or 'below', got {comparison!r}")
    warning = c.number("config.warning_threshold", config.get("warning_threshold"))
    failure = c.number("config.failure_threshold", config.get("failure_threshold"))
    if warning is not None and failure is not None:
        if comparison == "above" and warning > failure:
            c.add("config.warning_threshold must not be above config.failure_threshold")
        if comparison == "below" and warning < failure:
            c.add("config.warning_threshold must not be below config.failure_threshold")


def _check_source(c: _Checker, source: Mapping[str, object]) -> None:
    kind = source.get("kind")
    if kind not in QUERY_SOURCE_KINDS:
        c.add(f"config.source.kind must be one of {', '.join(QUERY_SOURCE_KINDS)}, got {kind!r}")
        return
    assert isinstance(kind, str)
    c.unknown("config.source", source, _SOURCE_FIELDS[kind])
    if kind == "mongodb":
        connection = c.string("config.source.connection", source.get("connection"))
        if c.given(connection) and not connection.startswith(("mongodb://", "mongodb+srv://")):
            c.add("config.source.connection must be a mongodb:// or mongodb+srv:// URL")
        c.string("config.source.database", source.get("database"))
        c.string("config.source.collection", source.get("collection"))
        query_filter, pipeline = source.get("filter"), source.get("pipeline")
        if c.given(query_filter) and not isinstance(query_filter, Mapping):
            c.add("config.source.filter must be an object")
        if pipeline is not None:
            if query_filter is not None:
                c.add("config.source.filter and config.source.pipeline are exclusive")
            c.object_list("config.source.pipeline", pipeline, "stage objects")
            c.string("config.source.field", source.get("field"))
        elif source.get("field") is not None:
            c.add("config.source.field only applies with config.source.pipeline")
    elif kind == "sqlite":
        c.string("config.source.path", source.get("path"))
        sql = c.string("config.source.sql", source.get("sql"))
        if sql is not None and not is_read_only_sql(sql):
            c.add("config.source.sql must be a SELECT (or WITH ... SELECT) statement")
    else:
        c.url("config.source.url", source.get("url"))
        c.string("config.source.value_path", source.get("value_path"))
        c.string_map("config.source.headers", source.get("headers"))


_CHECKS: Mapping[str, Callable[[_Checker, Mapping[str, object]], None]] = {
    "http": _check_http,
    "email": _check_email,
    "slack": _check_slack,
    "query": _check_query,
}
