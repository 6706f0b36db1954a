"""Validation of the full node set: each problem names the node or edge it is about."""

from __future__ import annotations

from typing import Any

import pytest
from flowyard.domain.definition import (
    NodeType,
    WhenFull,
    definition_to_document,
    parse_definition,
)
from flowyard.errors import DefinitionError


def document(nodes: list[dict[str, Any]], edges: list[dict[str, Any]], **extra: Any) -> dict:
    return {
        "name": "orders",
        "nodes": [{"id": "start", "type": "trigger"}, *nodes],
        "edges": edges,
        **extra,
    }


def code(node_id: str, **extra: Any) -> dict[str, Any]:
    return {"id": node_id, "type": "code", "config": {"source": "result = 1"}, **extra}


def problems_of(doc: dict[str, Any]) -> list[str]:
    with pytest.raises(DefinitionError) as caught:
        parse_definition(doc)
    return [str(p) for p in caught.value.problems]


def single(node: dict[str, Any], **extra: Any) -> list[str]:
    """Problems of a definition with ``node`` right after the trigger."""
    return problems_of(document([node], [{"from": "start", "to": node["id"]}], **extra))


# --- conditions and branch edges -------------------------------------------------------


def branching(yes: dict[str, Any], no: dict[str, Any]) -> dict[str, Any]:
    return document(
        [
            {"id": "check", "type": "condition", "config": {"expression": "trigger.ok"}},
            code("a"),
            code("b"),
        ],
        [{"from": "start", "to": "check"}, yes, no],
    )


def test_an_edge_leaving_a_condition_without_when_is_named() -> None:
    found = problems_of(
        branching({"from": "check", "to": "a", "when": True}, {"from": "check", "to": "b"})
    )
    assert found == ["edge check->b: edges leaving a condition need when: true or false"]


def test_when_on_an_edge_that_does_not_leave_a_condition_is_named() -> None:
    doc = document(
        [code("a"), code("b")],
        [{"from": "start", "to": "a"}, {"from": "a", "to": "b", "when": True}],
    )
    assert problems_of(doc) == ["edge a->b: only edges leaving a condition node take 'when'"]


def test_when_must_be_true_or_false() -> None:
    found = problems_of(
        branching(
            {"from": "check", "to": "a", "when": True},
            {"from": "check", "to": "b", "when": "maybe"},
        )
    )
    assert "edge check->b: 'when' must be true or false, not 'maybe'" in found


def test_when_accepts_yaml_booleans_and_strings() -> None:
    definition = parse_definition(
        branching(
            {"from": "check", "to": "a", "when": True},
            {"from": "check", "to": "b", "when": "false"},
        )
    )
    assert {(e.target, e.when) for e in definition.edges if e.source == "check"} == {
        ("a", "true"),
        ("b", "false"),
    }


def test_an_unparsable_condition_expression_names_the_node() -> None:
    node = {"id": "check", "type": "condition", "config": {"expression": "trigger.total >"}}
    doc = document(
        [node, code("a")],
        [{"from": "start", "to": "check"}, {"from": "check", "to": "a", "when": True}],
    )
    found = problems_of(doc)
    assert len(found) == 1
    assert found[0].startswith("node 'check': config.expression: syntax error"), found


def test_a_condition_calling_a_method_is_refused_at_registration() -> None:
    node = {"id": "check", "type": "condition", "config": {"expression": "trigger.name.upper()"}}
    doc = document(
        [node, code("a")],
        [{"from": "start", "to": "check"}, {"from": "check", "to": "a", "when": True}],
    )
    (found,) = problems_of(doc)
    assert found.startswith("node 'check': config.expression:")
    assert "upper" in found


def test_a_condition_without_an_expression_is_named() -> None:
    node = {"id": "check", "type": "condition", "config": {}}
    doc = document(
        [node, code("a")],
        [{"from": "start", "to": "check"}, {"from": "check", "to": "a", "when": True}],
    )
    assert problems_of(doc) == ["node 'check': a condition needs config.expression"]


def test_a_condition_without_outgoing_edges_is_named() -> None:
    found = single({"id": "check", "type": "condition", "config": {"expression": "True"}})
    assert found == ["node 'check': a condition needs outgoing edges"]


# --- transforms ------------------------------------------------------------------------


def test_a_transform_without_output_is_named() -> None:
    found = single({"id": "shape", "type": "transform", "config": {}})
    assert found == ["node 'shape': a transform needs config.output (a mapping of expressions)"]


def test_a_bad_transform_expression_names_the_output_key() -> None:
    config = {"output": {"total": "upstream.a.price *", "ok": "True"}}
    (found,) = single({"id": "shape", "type": "transform", "config": config})
    assert found.startswith("node 'shape': config.output.total: syntax error"), found


# --- waits -----------------------------------------------------------------------------

WAIT_NEEDS_ONE = "a wait needs exactly one of config.{seconds, minutes, hours, days, until}"


def test_a_wait_without_a_duration_or_time_is_named() -> None:
    assert single({"id": "pause", "type": "wait", "config": {}}) == [
        f"node 'pause': {WAIT_NEEDS_ONE}"
    ]


def test_a_wait_with_two_of_seconds_and_until_is_named() -> None:
    config = {"seconds": 5, "until": "2026-01-01T00:00:00Z"}
    assert single({"id": "pause", "type": "wait", "config": config}) == [
        f"node 'pause': {WAIT_NEEDS_ONE}"
    ]


def test_a_wait_with_two_durations_is_named() -> None:
    config = {"minutes": 5, "hours": 1}
    assert single({"id": "pause", "type": "wait", "config": config}) == [
        f"node 'pause': {WAIT_NEEDS_ONE}"
    ]


def test_a_wait_until_a_time_without_a_zone_is_named() -> None:
    config = {"until": "2026-01-01T09:00:00"}
    assert single({"id": "pause", "type": "wait", "config": config}) == [
        "node 'pause': config.until '2026-01-01T09:00:00' is not an ISO 8601 time with a time zone"
    ]


def test_a_negative_wait_is_named() -> None:
    found = single({"id": "pause", "type": "wait", "config": {"seconds": -1}})
    assert found == ["node 'pause': config.seconds must be a number >= 0"]


@pytest.mark.parametrize(
    "config",
    [
        {"seconds": 30},
        {"minutes": 1.5},
        {"days": 0},
        {"until": "2026-01-01T09:00:00+02:00"},
        {"until": "2026-01-01T09:00:00Z"},
        {"until": "{{ trigger.resume_at }}"},
        {"hours": "{{ trigger.hours }}"},
    ],
)
def test_valid_waits_parse(config: dict[str, Any]) -> None:
    definition = parse_definition(
        document(
            [{"id": "pause", "type": "wait", "config": config}], [{"from": "start", "to": "pause"}]
        )
    )
    assert definition.node("pause").type is NodeType.WAIT


# --- child workflows and approvals -----------------------------------------------------


def test_run_workflow_without_a_workflow_is_named() -> None:
    found = single({"id": "call", "type": "run_workflow", "config": {"input": {}}})
    assert found == ["node 'call': a run_workflow node needs config.workflow (a workflow name)"]


def test_run_workflow_wait_must_be_a_boolean() -> None:
    config = {"workflow": "billing", "wait": "yes"}
    found = single({"id": "call", "type": "run_workflow", "config": config})
    assert found == ["node 'call': config.wait must be true or false"]


def test_run_workflow_input_templates_are_checked() -> None:
    config = {"workflow": "billing", "input": {"order": "{{ trigger.order"}}
    (found,) = single({"id": "call", "type": "run_workflow", "config": config})
    assert found.startswith("node 'call': config.input: order: "), found
    assert "unclosed" in found


def test_approvers_must_be_a_list_of_names() -> None:
    config = {"approvers": "alice"}
    found = single({"id": "approve", "type": "approval", "config": config})
    assert found == ["node 'approve': config.approvers must be a list of user names"]


# --- stages and concurrency ------------------------------------------------------------


def test_a_node_in_an_undeclared_stage_is_named() -> None:
    found = single(code("a", stage="deploy"), stages=["build", "test"])
    assert found == ["node 'a': stage 'deploy' is not one of stages ['build', 'test']"]


def test_stages_are_free_form_when_none_are_declared() -> None:
    definition = parse_definition(
        document([code("a", stage="anything")], [{"from": "start", "to": "a"}])
    )
    assert definition.node("a").stage == "anything"


def test_an_invalid_when_full_is_named() -> None:
    found = single(code("a"), concurrency={"max_runs": 2, "when_full": "drop"})
    assert found == ["concurrency.when_full: must be 'queue' or 'reject'"]


def test_a_negative_max_runs_is_named() -> None:
    found = single(code("a"), concurrency={"max_runs": -1})
    assert found == ["concurrency.max_runs: must be a whole number >= 0"]


def test_concurrency_parses() -> None:
    doc = document(
        [code("a")],
        [{"from": "start", "to": "a"}],
        concurrency={"max_runs": 2, "when_full": "reject"},
    )
    definition = parse_definition(doc)
    assert definition.concurrency.max_runs == 2
    assert definition.concurrency.when_full is WhenFull.REJECT


# --- every node type together ----------------------------------------------------------


def everything() -> dict[str, Any]:
    nodes: list[dict[str, Any]] = [
        {
            "id": "fetch",
            "type": "http",
            "stage": "collect",
            "config": {"url": "https://example.com/orders/{{ trigger.order }}", "method": "GET"},
            "timeout_seconds": 10,
            "retry": {"max_attempts": 3, "initial_backoff_seconds": 1, "jitter": 0.1},
        },
        {
            "id": "count",
            "type": "query",
            "stage": "collect",
            "config": {
                "source": {"kind": "sqlite", "path": "/tmp/x.db", "sql": "SELECT count(*) FROM t"},
                "warning_threshold": 10,
                "failure_threshold": 20,
            },
        },
        {
            "id": "shape",
            "type": "transform",
            "config": {"output": {"total": "upstream.fetch.total", "rows": "upstream.count"}},
        },
        {"id": "big", "type": "condition", "config": {"expression": "upstream.shape.total > 100"}},
        {"id": "approve", "type": "approval", "stage": "decide", "config": {"approvers": ["ann"]}},
        {"id": "pause", "type": "wait", "config": {"minutes": 5}},
        {
            "id": "bill",
            "type": "run_workflow",
            "config": {"workflow": "billing", "input": {"total": "{{ upstream.shape.total }}"}},
        },
        {
            "id": "mail",
            "type": "email",
            "config": {"to": ["ops@example.com"], "subject": "Order", "body": "done"},
        },
        {"id": "chat", "type": "slack", "config": {"channel": "#ops", "text": "done"}},
        {"id": "record", "type": "code", "config": {"source": "result = inputs"}},
    ]
    edges = [
        {"from": "start", "to": "fetch"},
        {"from": "start", "to": "count"},
        {"from": "fetch", "to": "shape"},
        {"from": "count", "to": "shape"},
        {"from": "shape", "to": "big"},
        {"from": "big", "to": "approve", "when": True},
        {"from": "big", "to": "pause", "when": False},
        {"from": "approve", "to": "bill"},
        {"from": "pause", "to": "bill"},
        {"from": "bill", "to": "mail"},
        {"from": "bill", "to": "chat"},
        {"from": "mail", "to": "record"},
        {"from": "chat", "to": "record"},
    ]
    return document(
        nodes,
        edges,
        stages=["collect", "decide"],
        concurrency={"max_runs": 1, "when_full": "queue"},
        context={"team": "ops"},
    )


def test_a_definition_using_every_node_type_parses() -> None:
    definition = parse_definition(everything())
    assert {n.type for n in definition.nodes} == set(NodeType)
    assert definition.topological_order()[0] == "start"
    assert definition.topological_order()[-1] == "record"
    assert definition.stages == ("collect", "decide")


def test_a_definition_using_every_node_type_round_trips() -> None:
    definition = parse_definition(everything())
    assert parse_definition(definition_to_document(definition)) == definition


def test_every_problem_of_a_definition_is_reported_at_once() -> None:
    doc = document(
        [
            {"id": "check", "type": "condition", "config": {"expression": "1 +"}},
            {"id": "shape", "type": "transform", "config": {}},
            {"id": "pause", "type": "wait", "config": {}},
            {"id": "call", "type": "run_workflow", "config": {}},
        ],
        [
            {"from": "start", "to": "check"},
            {"from": "check", "to": "shape"},
            {"from": "shape", "to": "pause", "when": True},
            {"from": "pause", "to": "call"},
        ],
    )
    found = problems_of(doc)
    wheres = {p.split(":")[0] for p in found}
    assert {
        "node 'check'",
        "node 'shape'",
        "node 'pause'",
        "node 'call'",
        "edge check->shape",
        "edge shape->pause",
    } <= wheres, found
