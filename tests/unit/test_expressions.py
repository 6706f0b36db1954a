from __future__ import annotations

from typing import Any

import pytest
from flowyard.domain.expressions import (
    evaluate,
    evaluate_condition,
    evaluate_mapping,
    expression_problem,
    mapping_problems,
    render,
    template_problems,
)
from flowyard.domain.json import JsonValue
from flowyard.errors import ExpressionError

SCOPE: dict[str, JsonValue] = {
    "trigger": {"order": {"id": "o-1", "total": 42.5, "tags": ["vip", "eu"]}, "name": "Ada"},
    "context": {"threshold": 40, "region": "eu"},
    "node_context": {},
    "upstream": {"fetch": {"status": "ok", "items": [1, 2, 3], "headers": {"x-id": "h1"}}},
}


def failure(text: str, scope: dict[str, JsonValue] | None = None) -> ExpressionError:
    with pytest.raises(ExpressionError) as caught:
        evaluate(text, SCOPE if scope is None else scope)
    return caught.value


# --- evaluation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("upstream.fetch.status", "ok"),
        ('upstream["fetch"]["items"][0]', 1),
        ("upstream.fetch.items[-1]", 3),
        ("upstream.fetch.items[0:2]", [1, 2]),
        ('upstream.fetch.headers["x-id"]', "h1"),
        ("trigger.order.total > context.threshold", True),
        ("'vip' in trigger.order.tags and not ('us' in trigger.order.tags)", True),
        ("'big' if trigger.order.total > 100 else 'small'", "small"),
        ("len(upstream.fetch.items) * 2 + 1", 7),
        ("sum(upstream.fetch.items) / 2", 3.0),
        ("2 ** 10 % 1000", 24),
        ("[x * 10 for x in upstream.fetch.items if x > 1]", [20, 30]),
        ("{k: 1 for k in upstream.fetch.headers}", {"x-id": 1}),
        ("any(x > 2 for x in upstream.fetch.items)", True),
        ("{'id': trigger.order.id, 'n': [1, None, True]}", {"id": "o-1", "n": [1, None, True]}),
        ("{**context, 'region': 'us'}", {"threshold": 40, "region": "us"}),
        ("(1, 2)", [1, 2]),
        ("trigger.missing is None if False else 'short-circuit'", "short-circuit"),
    ],
)
def test_evaluate_reads_the_scope_with_operators(text: str, expected: JsonValue) -> None:
    assert evaluate(text, SCOPE) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("lower(trigger.name)", "ada"),
        ("upper(context.region)", "EU"),
        ("contains(trigger.order.tags, 'vip')", True),
        ("contains(trigger.name, 'd')", True),
        ("get(upstream.fetch, 'count', 0)", 0),
        ("get(upstream.fetch, 'status')", "ok"),
        ("get(upstream.fetch.items, 10)", None),
        ("get(upstream.fetch.items, 1, 'x')", 2),
        ("min(upstream.fetch.items) + max(upstream.fetch.items)", 4),
        ("sorted([3, 1, 2], reverse=True)", [3, 2, 1]),
        (
            "[abs(-2), round(2.567, 1), int('7'), float(1), str(5), bool(0)]",
            [2, 2.6, 7, 1.0, "5", False],
        ),
        ("all([True, 1]) and not any([])", True),
    ],
)
def test_curated_functions(text: str, expected: JsonValue) -> None:
    assert evaluate(text, SCOPE) == expected


def test_a_missing_field_names_its_full_path_and_what_is_available() -> None:
    error = failure("upstream.fetch.count > 3")
    assert error.code == "expression.missing_field"
    assert "field 'upstream.fetch.count' is missing" in str(error)
    assert "headers, items, status" in str(error)


def test_a_missing_subscript_and_top_level_name_are_named_too() -> None:
    error = failure('upstream["fetch"]["count"]')
    assert error.code == "expression.missing_field"
    assert "'upstream.fetch.count'" in str(error)

    error = failure("upstream.fetch.items[7]")
    assert error.code == "expression.missing_field"
    assert "'upstream.fetch.items[7]'" in str(error)
    assert "3 items" in str(error)

    error = failure("upstrem.fetch")
    assert error.code == "expression.missing_field"
    assert "field 'upstrem' is missing" in str(error)
    assert "context, node_context, trigger, upstream" in str(error)


def test_the_available_keys_list_is_truncated() -> None:
    scope: dict[str, JsonValue] = {"wide": {f"k{i:02}": i for i in range(30)}}
    message = str(failure("wide.nope", scope))
    assert "k00, k01" in message
    assert "k29" not in message
    assert "20 more" in message


@pytest.mark.parametrize(
    "text",
    [
        "trigger.name < 1",
        "len(context.threshold)",
        "trigger.name + 1",
        "lower(context.threshold)",
        "contains(context.threshold, 4)",
        "int('seven')",
        "1 / 0",
        "trigger.name.first",
        "upstream.fetch.items['a']",
    ],
)
def test_type_errors(text: str) -> None:
    assert failure(text).code == "expression.type_error"


@pytest.mark.parametrize(
    "text",
    [
        "'x'.__class__",
        "trigger.__class__",
        "'abc'.upper",
        "trigger.name.upper",
        "trigger.name.upper()",
        "upstream.fetch.items.append(4)",
        "__import__('os')",
        "open('/etc/passwd')",
        "eval('1')",
        "getattr(trigger, 'name')",
        "lambda: 1",
        "(x := 1)",
        "f'{trigger}'",
        "now()",
    ],
)
def test_python_internals_and_unlisted_functions_are_refused(text: str) -> None:
    assert failure(text).code == "expression.invalid"


def test_refusals_are_reported_when_a_definition_is_checked() -> None:
    assert "'_'" in (expression_problem("trigger.__class__") or "")
    assert "methods cannot be called" in (expression_problem("trigger.name.upper()") or "")
    assert "not an allowed function" in (expression_problem("__import__('os')") or "")
    # only known at run time, once the value turns out to be a string
    assert expression_problem("trigger.name.upper") is None


@pytest.mark.parametrize("text", ["{1, 2}", "{1: 'a'}", "len", "float('nan')"])
def test_non_json_results_are_rejected(text: str) -> None:
    error = failure(text)
    assert error.code == "expression.invalid"
    assert "JSON" in str(error)


@pytest.mark.parametrize(
    "text", ["9 ** 9 ** 9", "'a' * 10 ** 7", "x * 10 ** 6", "[1 for a in x for b in x for c in x]"]
)
def test_resource_limits(text: str) -> None:
    error = failure(text, {"x": list(range(100))})
    assert error.code == "expression.too_complex"


def test_evaluate_condition_uses_truthiness() -> None:
    assert evaluate_condition("upstream.fetch.items", SCOPE) is True
    assert evaluate_condition("node_context", SCOPE) is False
    assert evaluate_condition("trigger.order.total >= context.threshold", SCOPE) is True
    with pytest.raises(ExpressionError) as caught:
        evaluate_condition("upstream.fetch.count > 1", SCOPE)
    assert caught.value.code == "expression.missing_field"


# --- parse checks -------------------------------------------------------------------------


def test_expression_problem() -> None:
    assert expression_problem("upstream.fetch.status == 'ok'") is None
    assert expression_problem("  trigger.name  ") is None
    assert expression_problem("a b") == "syntax error at column 3: invalid syntax"
    assert (expression_problem("1 +") or "").startswith("syntax error at the end")
    assert expression_problem("") == "expression is empty"
    assert expression_problem("a = 1") is not None
    assert "not an allowed function" in (expression_problem("now()") or "")
    # a syntax error surfaces at run time as expression.invalid
    assert failure("1 +").code == "expression.invalid"


# --- mappings -----------------------------------------------------------------------------


def test_evaluate_mapping_walks_nested_dicts_and_lists() -> None:
    template: dict[str, Any] = {
        "output": {
            "total": "trigger.order.total * 2",
            "first_tag": "trigger.order.tags[0]",
            "list": ["len(upstream.fetch.items)", 7, None, True],
            "literal": "'plain text'",
        },
        "n": 3.5,
    }
    assert evaluate_mapping(template, SCOPE) == {
        "output": {
            "total": 85.0,
            "first_tag": "vip",
            "list": [3, 7, None, True],
            "literal": "plain text",
        },
        "n": 3.5,
    }


def test_evaluate_mapping_errors_say_where() -> None:
    with pytest.raises(ExpressionError) as caught:
        evaluate_mapping({"output": {"total": "upstream.fetch.count"}}, SCOPE)
    assert caught.value.code == "expression.missing_field"
    assert str(caught.value).startswith("output.total: field 'upstream.fetch.count' is missing")

    with pytest.raises(ExpressionError) as caught:
        evaluate_mapping({"rows": ["1", "'a' < 1"]}, SCOPE)
    assert caught.value.code == "expression.type_error"
    assert str(caught.value).startswith("rows[1]: ")


def test_mapping_problems_name_the_path() -> None:
    problems = mapping_problems({"total": "1 +", "ok": "1", "nested": {"x": [2, "'a'.upper()"]}})
    assert len(problems) == 2
    assert problems[0].startswith("total: syntax error")
    assert problems[1].startswith("nested.x[1]: ")
    assert mapping_problems({"a": "trigger.name", "b": 1, "c": None}) == []


# --- templates ----------------------------------------------------------------------------


def test_a_whole_string_template_keeps_the_value_type() -> None:
    assert render("{{ upstream.fetch.headers }}", SCOPE) == {"x-id": "h1"}
    assert render("  {{trigger.order.total}} ", SCOPE) == 42.5
    assert render("{{ upstream.fetch.items }}", SCOPE) == [1, 2, 3]
    assert render("{{ None }}", SCOPE) is None


def test_mixed_templates_interpolate_text_and_compact_json() -> None:
    assert (
        render("Order {{ trigger.order.id }} for {{ trigger.name }}", SCOPE) == "Order o-1 for Ada"
    )
    assert render("n={{ len(upstream.fetch.items) }} ok={{ True }}", SCOPE) == "n=3 ok=true"
    assert render("items: {{ upstream.fetch.items }}", SCOPE) == "items: [1,2,3]"
    assert render("{{ 1 }}{{ 2 }}", SCOPE) == "12"


def test_render_walks_values_but_not_keys_and_leaves_plain_strings() -> None:
    template: dict[str, Any] = {
        "url": "https://api.test/orders/{{ trigger.order.id }}",
        "body": {"{{ key }}": "{{ trigger.order.tags }}", "count": 2, "flag": False},
        "lines": ["Hi {{ trigger.name }}", "{ not a template }"],
    }
    assert render(template, SCOPE) == {
        "url": "https://api.test/orders/o-1",
        "body": {"{{ key }}": ["vip", "eu"], "count": 2, "flag": False},
        "lines": ["Hi Ada", "{ not a template }"],
    }


def test_render_errors_say_where() -> None:
    with pytest.raises(ExpressionError) as caught:
        render({"subject": "Order {{ trigger.order.number }}"}, SCOPE)
    assert caught.value.code == "expression.missing_field"
    assert str(caught.value).startswith("subject: field 'trigger.order.number' is missing")


def test_template_problems_name_the_path_and_unclosed_braces() -> None:
    problems = template_problems(
        {"url": "https://x/{{ 1 + }}", "body": ["fine {{ trigger.name }}", "oops {{ trigger.name"]}
    )
    assert len(problems) == 2
    assert problems[0].startswith("url: syntax error")
    assert problems[1] == "body[1]: unclosed '{{'"
    assert template_problems({"a": "no braces", "b": 1, "c": "{{ x }} and {{ y }}"}) == []
    assert template_problems("{{ }}") == ["expression is empty in '{{ }}'"]
