from __future__ import annotations

from typing import Any

import pytest
from flowyard.domain.definition import NodeType, definition_to_document, parse_definition
from flowyard.errors import DefinitionError


def doc(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "orders",
        "nodes": [
            {"id": "start", "type": "trigger"},
            {"id": "a", "type": "code", "config": {"source": "result = 1"}},
            {"id": "b", "type": "code", "config": {"source": "result = 2"}},
        ],
        "edges": [{"from": "start", "to": "a"}, {"from": "a", "to": "b"}],
    }
    base.update(changes)
    return base


def problems_of(document: dict[str, Any]) -> list[str]:
    with pytest.raises(DefinitionError) as caught:
        parse_definition(document)
    return [str(p) for p in caught.value.problems]


def test_a_valid_definition_parses_in_graph_order() -> None:
    definition = parse_definition(doc())
    assert definition.topological_order() == ("start", "a", "b")
    assert definition.trigger.type is NodeType.TRIGGER
    assert definition.ancestors("b") == {"start", "a"}


def test_round_trip_through_the_document_form() -> None:
    definition = parse_definition(doc())
    assert parse_definition(definition_to_document(definition)) == definition


def test_a_cycle_is_named() -> None:
    edges = [{"from": "start", "to": "a"}, {"from": "a", "to": "b"}, {"from": "b", "to": "a"}]
    found = problems_of(doc(edges=edges))
    assert any("cycle" in p and "a -> b -> a" in p for p in found), found


def test_dangling_edges_name_the_edge_and_the_missing_node() -> None:
    found = problems_of(doc(edges=[{"from": "start", "to": "a"}, {"from": "a", "to": "ghost"}]))
    assert "edge a->ghost: refers to unknown node 'ghost'" in found


def test_unknown_node_type_names_the_node() -> None:
    nodes = [{"id": "start", "type": "trigger"}, {"id": "x", "type": "teleport"}]
    found = problems_of(doc(nodes=nodes, edges=[{"from": "start", "to": "x"}]))
    assert any(p.startswith("node 'x': unknown node type 'teleport'") for p in found), found


def test_exactly_one_trigger() -> None:
    none = problems_of(
        doc(nodes=[{"id": "a", "type": "code", "config": {"source": "x=1"}}], edges=[])
    )
    assert any("found none" in p for p in none)
    two = [{"id": "s1", "type": "trigger"}, {"id": "s2", "type": "trigger"}]
    assert any("found ['s1', 's2']" in p for p in problems_of(doc(nodes=two, edges=[])))


def test_python_syntax_errors_name_the_node_and_line() -> None:
    nodes = [
        {"id": "start", "type": "trigger"},
        {"id": "a", "type": "code", "config": {"source": "x = 1\nif x\n"}},
    ]
    found = problems_of(doc(nodes=nodes, edges=[{"from": "start", "to": "a"}]))
    assert any(p.startswith("node 'a': Python syntax error at line 2") for p in found), found


def test_duplicate_ids_and_unreachable_nodes() -> None:
    nodes = [*doc()["nodes"], {"id": "a", "type": "code", "config": {"source": "x=1"}}]
    assert "node 'a': duplicate node id" in problems_of(doc(nodes=nodes))
    lonely = [*doc()["nodes"], {"id": "lonely", "type": "code", "config": {"source": "x=1"}}]
    assert "node 'lonely': is not reachable from the trigger" in problems_of(doc(nodes=lonely))


def test_every_problem_is_reported_at_once() -> None:
    found = problems_of(
        {"name": "bad name!", "nodes": [{"id": "x", "type": "nope"}], "edges": [], "extra": 1}
    )
    assert len(found) >= 3, found
