"""config_problems: the registration-time rules of the http, email, slack and query nodes."""

from __future__ import annotations

from typing import Any

import pytest
from flowyard.domain.node_config import config_problems, is_email_address, is_read_only_sql

SQLITE = {"kind": "sqlite", "path": "/tmp/x.db", "sql": "SELECT count(*) FROM t"}
MONGO = {
    "kind": "mongodb",
    "connection": "mongodb://127.0.0.1:27017",
    "database": "db",
    "collection": "orders",
}
VALID: dict[str, dict[str, Any]] = {
    "http": {
        "url": "https://example.com/api",
        "method": "post",
        "headers": {"X-A": "1"},
        "query": {"page": 2, "tags": ["a", "b"]},
        "json": {"a": [1, 2]},
        "expected_status": [200, 201],
        "timeout_seconds": 5,
    },
    "email": {"to": ["a@example.com"], "cc": "b@example.com", "subject": "Hi", "body": "text"},
    "slack": {"channel": "#ops", "text": "deployed", "blocks": [{"type": "section"}]},
    "query": {"source": SQLITE, "warning_threshold": 10, "failure_threshold": 20.5},
}


@pytest.mark.parametrize("node_type", sorted(VALID))
def test_valid_configs_have_no_problems(node_type: str) -> None:
    assert config_problems(node_type, VALID[node_type]) == []
    assert config_problems(node_type, VALID[node_type], rendered=True) == []


def test_other_node_types_are_not_checked() -> None:
    assert config_problems("code", {"anything": object()}) == []
    assert config_problems("trigger", {}) == []


def test_missing_required_fields_are_named() -> None:
    assert config_problems("http", {}) == ["config.url is required"]
    assert config_problems("email", {}) == [
        "config.to is required",
        "config.subject is required",
        "config.body is required",
    ]
    assert config_problems("slack", {}) == ["config.channel is required", "config.text is required"]
    assert config_problems("query", {}) == ["config.source is required"]


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        (
            {"url": "ftp://example.com"},
            "config.url must be an http or https URL, got 'ftp://example.com'",
        ),
        ({"url": "example.com/x"}, "config.url must be an http or https URL, got 'example.com/x'"),
        ({"url": 5}, "config.url must be a string"),
        ({"method": "FETCH"}, "config.method must be one of"),
        ({"headers": {"X-A": 1}}, "config.headers.X-A must be a string"),
        ({"headers": ["X-A"]}, "config.headers must be an object"),
        ({"query": {"q": {"x": 1}}}, "config.query.q must be a string, number or list of them"),
        ({"body": "raw"}, "config.json and config.body are exclusive"),
        ({"expected_status": [200, 700]}, "config.expected_status must be a non-empty list"),
        ({"expected_status": []}, "config.expected_status must be a non-empty list"),
        ({"timeout_seconds": 0}, "config.timeout_seconds must be greater than 0"),
        ({"timeout_seconds": True}, "config.timeout_seconds must be a number"),
        ({"expected_statuses": [200]}, "config.expected_statuses is not a known field"),
    ],
)
def test_http_problems(changes: dict[str, Any], problem: str) -> None:
    problems = config_problems("http", {**VALID["http"], **changes})
    assert len(problems) == 1, problems
    assert problems[0].startswith(problem)


def test_templates_are_taken_on_trust_until_rendered() -> None:
    config = {
        "url": "{{ trigger.url }}",
        "method": "{{ trigger.method }}",
        "expected_status": "{{ trigger.statuses }}",
        "timeout_seconds": "{{ trigger.timeout }}",
    }
    assert config_problems("http", config) == []
    rendered = config_problems("http", config, rendered=True)
    assert rendered[0] == "config.url must be an http or https URL, got '{{ trigger.url }}'"
    assert len(rendered) == 4
    assert config_problems("slack", {"channel": "{{ trigger.channel }}", "text": "x"}) == []
    assert config_problems("email", {**VALID["email"], "to": ["{{ trigger.owner }}"]}) == []


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"to": "not-an-address"}, "config.to is not an email address: 'not-an-address'"),
        ({"to": ["a@b.c", "x@@y"]}, "config.to[1] is not an email address: 'x@@y'"),
        ({"to": []}, "config.to must be an address or a non-empty list of addresses"),
        ({"to": "a@b.c, evil@d.e"}, "config.to is not an email address"),
        ({"cc": [3]}, "config.cc[0] must be a string"),
        ({"subject": "a\nBcc: x@y.z"}, "config.subject must be a single line"),
        ({"body": ""}, "config.body must not be empty"),
        ({"html": {"x": 1}}, "config.html must be a string"),
    ],
)
def test_email_problems(changes: dict[str, Any], problem: str) -> None:
    problems = config_problems("email", {**VALID["email"], **changes})
    assert len(problems) == 1, problems
    assert problems[0].startswith(problem)


def test_slack_channel_must_be_a_channel() -> None:
    for channel in ("@alice", "D0123", "general"):
        assert config_problems("slack", {"channel": channel, "text": "x"}) == [
            "config.channel must start with '#' (direct messages are not allowed)"
        ]
    assert config_problems("slack", {"channel": "#a", "text": "x", "blocks": "b"}) == [
        "config.blocks must be a list of objects"
    ]


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"source": {"kind": "oracle"}}, "config.source.kind must be one of mongodb, sqlite, http"),
        ({"source": "db"}, "config.source must be an object"),
        ({"warning_threshold": "ten"}, "config.warning_threshold must be a number"),
        ({"warning_threshold": 30}, "config.warning_threshold must not be above"),
        ({"comparison": "equal"}, "config.comparison must be 'above' or 'below'"),
        (
            {"comparison": "below", "warning_threshold": 5, "failure_threshold": 10},
            "config.warning_threshold must not be below",
        ),
        ({"source": {**SQLITE, "sql": "DELETE FROM t"}}, "config.source.sql must be a SELECT"),
        ({"source": {**SQLITE, "sql": "  -- hi\n drop table t"}}, "config.source.sql must be a"),
        ({"source": {**SQLITE, "path": None}}, "config.source.path is required"),
        ({"source": {**SQLITE, "table": "t"}}, "config.source.table is not a known field"),
        ({"source": {**MONGO, "connection": "http://x"}}, "config.source.connection must be"),
        ({"source": {**MONGO, "filter": [1]}}, "config.source.filter must be an object"),
        ({"source": {**MONGO, "pipeline": [{}]}}, "config.source.field is required"),
        ({"source": {**MONGO, "field": "n"}}, "config.source.field only applies with"),
        (
            {"source": {**MONGO, "filter": {}, "pipeline": [{}], "field": "n"}},
            "config.source.filter and config.source.pipeline are exclusive",
        ),
        ({"source": {"kind": "http", "url": "x://y"}}, "config.source.url must be an http"),
    ],
)
def test_query_problems(changes: dict[str, Any], problem: str) -> None:
    problems = config_problems("query", {**VALID["query"], **changes})
    assert problems, changes
    assert problems[0].startswith(problem), problems


def test_query_sources_that_are_valid() -> None:
    for source in (
        MONGO,
        {**MONGO, "filter": {"status": "failed"}},
        {**MONGO, "pipeline": [{"$count": "n"}], "field": "n"},
        {"kind": "http", "url": "http://127.0.0.1/x", "value_path": "data.count"},
        {**SQLITE, "sql": "WITH x AS (SELECT 1) SELECT * FROM x"},
    ):
        config = {"source": source, "failure_threshold": 3, "comparison": "below"}
        assert config_problems("query", config) == [], source


def test_read_only_sql_and_addresses() -> None:
    assert is_read_only_sql("/* c */ select 1")
    assert is_read_only_sql("\n-- c\nWITH a AS (SELECT 1) SELECT * FROM a")
    assert not is_read_only_sql("update t set a = 1")
    assert not is_read_only_sql("")
    assert not is_read_only_sql("{{ trigger.sql }}")
    assert is_email_address("ops@example.com")
    assert not is_email_address("ops@")
    assert not is_email_address("a b@example.com")
