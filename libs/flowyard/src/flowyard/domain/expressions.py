"""Safe expressions for workflow conditions, transforms and config templates.

Definitions are user input, so expressions never go through Python's ``eval``: that would hand
a workflow author the whole interpreter (``().__class__.__base__`` walks lead to ``os``). Text is
parsed with :mod:`ast`, checked against an allowlist of constructs, and interpreted node by node
by ``simpleeval``, which also keeps its resource limits (``MAX_POWER``, ``MAX_STRING_LENGTH``,
``MAX_COMPREHENSION_LENGTH``). On top of simpleeval:

* dot access only reads dict keys (``upstream.fetch.count``) and never returns a Python
  attribute, so methods and dunders (``'x'.upper``, ``__class__``) are refused;
* only the curated functions in :data:`FUNCTIONS` can be called (no clock, no randomness);
* every failure is an :class:`~flowyard.errors.ExpressionError` whose ``code`` becomes the task's
  error code, and a missing field names its full path and the keys that do exist.

Names resolve from the scope the engine builds (``engine.task_input``): ``trigger`` (the run's
trigger data), ``context`` (the workflow's context), ``node_context`` (the node's own context)
and ``upstream`` (outputs of succeeded ancestor nodes, by node id). Parsed trees are cached, as
conditions are evaluated on every run.
"""

from __future__ import annotations

import ast
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache

import simpleeval

from flowyard.domain.json import JsonValue
from flowyard.errors import ExpressionError

MISSING_FIELD = "expression.missing_field"
TYPE_ERROR = "expression.type_error"
INVALID = "expression.invalid"
TOO_COMPLEX = "expression.too_complex"
_SHOWN_KEYS = 10
_SEGMENT = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _text_function(name: str, convert: Callable[[str], str]) -> Callable[[object], str]:
    def apply(value: object) -> str:
        if not isinstance(value, str):
            raise ExpressionError(TYPE_ERROR, f"{name}() needs a string, got {_kind(value)}")
        return convert(value)

    return apply


def _contains(container: object, item: object) -> bool:
    try:
        return item in container  # type: ignore[operator]
    except TypeError as exc:
        raise ExpressionError(TYPE_ERROR, f"type error in contains(): {exc}") from exc


def _get(obj: object, key: object, default: object = None) -> object:
    if isinstance(obj, dict):
        try:
            return obj.get(key, default)
        except TypeError:
            return default
    if isinstance(obj, list | tuple | str) and type(key) is int and -len(obj) <= key < len(obj):
        return obj[key]
    return default


FUNCTIONS: dict[str, Callable[..., object]] = {
    **{f.__name__: f for f in (len, min, max, abs, round, int, float, str, bool, sum, sorted, any)},
    "all": all,
    "lower": _text_function("lower", str.lower),
    "upper": _text_function("upper", str.upper),
    "contains": _contains,
    "get": _get,
}
"""The only callables an expression can use. All are deterministic."""

_ALLOWED_NODES: tuple[type[ast.AST], ...] = (
    *(ast.Expression, ast.Constant, ast.Name, ast.Load, ast.Store, ast.Attribute, ast.Subscript),
    *(ast.Slice, ast.UnaryOp, ast.UAdd, ast.USub, ast.Not, ast.BinOp, ast.Add, ast.Sub, ast.Mult),
    *(ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.BoolOp, ast.And, ast.Or, ast.Compare, ast.Eq),
    *(ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In, ast.NotIn, ast.Is, ast.IsNot),
    *(ast.IfExp, ast.Call, ast.keyword, ast.List, ast.Tuple, ast.Dict, ast.Set),
    *(ast.ListComp, ast.DictComp, ast.GeneratorExp, ast.comprehension),
)


def _construct_problem(node: ast.AST) -> str | None:
    if not isinstance(node, _ALLOWED_NODES):
        return f"{type(node).__name__} is not allowed in expressions"
    if isinstance(node, ast.Attribute):
        if node.attr.startswith("_"):
            return f"'.{node.attr}' is not allowed: names starting with '_' are reserved"
        if isinstance(node.value, ast.Constant):
            return f"'.{node.attr}' is not allowed: dot access only reads fields of objects"
    if isinstance(node, ast.Call):
        if isinstance(node.func, ast.Attribute):
            return f"'.{node.func.attr}(...)' is not allowed: methods cannot be called"
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
            return f"'{ast.unparse(node.func)}' is not an allowed function"
    if isinstance(node, ast.keyword) and node.arg is None:
        return "'**' arguments are not allowed"
    if isinstance(node, ast.comprehension):
        if node.is_async:
            return "async comprehensions are not allowed"
        plain = (ast.Name, ast.Tuple, ast.List, ast.Store)
        if not all(isinstance(n, plain) for n in ast.walk(node.target)):
            return "comprehension targets must be plain names"
    return None


@lru_cache(maxsize=2048)
def _compile(text: str) -> ast.expr | str:
    """The checked tree of ``text``, or a one-line problem."""
    source = text.strip()
    if not source:
        return "expression is empty"
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as exc:
        at = f"column {exc.offset}" if exc.offset else "the end"
        if (exc.lineno or 1) > 1:
            at = f"line {exc.lineno} {at}"
        return f"syntax error at {at}: {exc.msg}"
    except (RecursionError, MemoryError):
        return "expression is nested too deeply"
    for node in ast.walk(tree):
        if problem := _construct_problem(node):
            return problem
    return tree.body


_KINDS = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an integer"}


def _kind(value: object) -> str:
    return {**_KINDS, float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _join(path: str, key: object) -> str:
    if isinstance(key, str) and _IDENTIFIER.match(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{json.dumps(key) if isinstance(key, str) else key}]"


def _path(node: ast.expr) -> str:
    """The dotted path an access node reads, as the author would recognise it."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return _join(_path(node.value), node.attr)
    if isinstance(node, ast.Subscript):
        if isinstance(node.slice, ast.Constant):
            return _join(_path(node.value), node.slice.value)
        return f"{_path(node.value)}[{ast.unparse(node.slice)}]"
    return f"({ast.unparse(node)})"


def _missing(path: str, where: str | None, keys: Iterable[object]) -> ExpressionError:
    names = sorted(map(str, keys))
    more = f", ... ({len(names) - _SHOWN_KEYS} more)" if len(names) > _SHOWN_KEYS else ""
    shown = ", ".join(names[:_SHOWN_KEYS]) + more or "none"
    hint = f"available at '{where}': {shown}" if where else f"available names: {shown}"
    return ExpressionError(MISSING_FIELD, f"field '{path}' is missing; {hint}")


class _Evaluator(simpleeval.EvalWithCompoundTypes):  # type: ignore[misc]
    """simpleeval with dict-only dot access and path-naming lookup errors."""

    def __init__(self, scope: Mapping[str, JsonValue]) -> None:
        super().__init__(functions=dict(FUNCTIONS), names={})
        self.scope = scope

    def _check_disallowed_items(self, item: object) -> None:
        """Skipped: it walks every container at every node (quadratic on big outputs), and
        nothing here reaches a module or builtin: scope is JSON, dot access only returns dict
        values, and only FUNCTIONS are callable."""

    def _eval_name(self, node: ast.Name) -> object:
        if node.id in self.scope:
            return self.scope[node.id]
        if node.id in FUNCTIONS:
            return FUNCTIONS[node.id]
        raise _missing(node.id, None, self.scope)

    def _eval_attribute(self, node: ast.Attribute) -> object:
        base = self._eval(node.value)
        if not isinstance(base, dict) and hasattr(base, node.attr):
            problem = (
                f"'.{node.attr}' is not allowed: Python attributes and methods are not available"
            )
            raise ExpressionError(INVALID, problem)
        return self._field(node.value, base, node.attr)

    def _eval_subscript(self, node: ast.Subscript) -> object:
        base = self._eval(node.value)
        key = self._eval(node.slice)
        if isinstance(key, slice) and isinstance(base, list | tuple | str):
            return base[key]
        return self._field(node.value, base, key)

    def _field(self, base_node: ast.expr, base: object, key: object) -> object:
        where = _path(base_node)
        if isinstance(base, dict):
            try:
                if key in base:
                    return base[key]
            except TypeError:
                raise ExpressionError(TYPE_ERROR, f"{_kind(key)} cannot be a key") from None
            raise _missing(_join(where, key), where, base)
        if isinstance(base, list | tuple | str) and not isinstance(key, str):
            if type(key) is not int:
                raise ExpressionError(TYPE_ERROR, f"'{where}' needs an integer index, not {key!r}")
            if -len(base) <= key < len(base):
                return base[key]
            missing = f"field '{_join(where, key)}' is missing; '{where}' has {len(base)} items"
            raise ExpressionError(MISSING_FIELD, missing)
        raise ExpressionError(TYPE_ERROR, f"'{where}' is {_kind(base)}, it has no field {key!r}")


def _to_json(value: object, path: str = "result") -> JsonValue:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    if isinstance(value, list | tuple):
        return [_to_json(item, f"{path}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise ExpressionError(INVALID, f"{path} has key {key!r}; JSON keys are strings")
        return {key: _to_json(item, _join(path, key)) for key, item in value.items()}
    raise ExpressionError(INVALID, f"{path} is {value!r:.40}, which is not a JSON value")


def expression_problem(text: str) -> str | None:
    """None when ``text`` parses and uses only allowed constructs; else a one-line message."""
    compiled = _compile(text)
    return compiled if isinstance(compiled, str) else None


def evaluate(text: str, scope: Mapping[str, JsonValue]) -> JsonValue:
    """Evaluate one expression against ``scope``; the result is always JSON."""
    compiled = _compile(text)
    if isinstance(compiled, str):
        raise ExpressionError(INVALID, compiled)
    try:
        result = _Evaluator(scope).eval(text, previously_parsed=compiled)
    except ExpressionError:
        raise
    except (simpleeval.NumberTooHigh, simpleeval.IterableTooLong, OverflowError) as exc:
        raise ExpressionError(TOO_COMPLEX, f"too complex: {exc}") from exc
    except (RecursionError, MemoryError) as exc:
        raise ExpressionError(TOO_COMPLEX, "too complex: nested too deeply") from exc
    except simpleeval.InvalidExpression as exc:
        raise ExpressionError(INVALID, f"not allowed: {exc}") from exc
    except ZeroDivisionError as exc:
        raise ExpressionError(TYPE_ERROR, "division by zero") from exc
    except (TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
        raise ExpressionError(TYPE_ERROR, f"type error: {exc}") from exc
    return _to_json(result)


def evaluate_condition(text: str, scope: Mapping[str, JsonValue]) -> bool:
    """Evaluate ``text`` and apply Python truthiness (0, "", [], {}, None are false)."""
    return bool(evaluate(text, scope))


def _walk(template: JsonValue, path: str, leaf: Callable[[str, str], JsonValue]) -> JsonValue:
    """Apply ``leaf(text, path)`` to every string, walking dict values and list items."""
    if isinstance(template, str):
        return leaf(template, path)
    if isinstance(template, dict):
        return {key: _walk(value, _join(path, key), leaf) for key, value in template.items()}
    if isinstance(template, list):
        return [_walk(value, _join(path, i), leaf) for i, value in enumerate(template)]
    return template


def _at(path: str, message: object) -> str:
    return f"{path}: {message}" if path else str(message)


def _each_string(template: JsonValue, apply: Callable[[str], JsonValue]) -> JsonValue:
    """``_walk`` whose errors name the path of the string that failed."""

    def leaf(text: str, path: str) -> JsonValue:
        try:
            return apply(text)
        except ExpressionError as exc:
            raise ExpressionError(exc.code, _at(path, exc)) from exc

    return _walk(template, "", leaf)


def _problems(template: JsonValue, check: Callable[[str], list[str]]) -> list[str]:
    problems: list[str] = []
    _walk(template, "", lambda text, path: problems.extend(_at(path, p) for p in check(text)))
    return problems


def evaluate_mapping(template: JsonValue, scope: Mapping[str, JsonValue]) -> JsonValue:
    """Evaluate every string in ``template`` as an expression; other JSON passes through."""
    return _each_string(template, lambda text: evaluate(text, scope))


def mapping_problems(template: JsonValue) -> list[str]:
    """Every expression problem in a mapping, each prefixed by its path."""
    return _problems(template, lambda text: [p] if (p := expression_problem(text)) else [])


def _render_text(text: str, scope: Mapping[str, JsonValue]) -> JsonValue:
    if "{{" not in text:
        return text
    segments = list(_SEGMENT.finditer(text))
    if len(segments) == 1 and segments[0].group(0) == text.strip():
        return evaluate(segments[0].group(1), scope)
    if "{{" in _SEGMENT.sub("", text):
        raise ExpressionError(INVALID, "unclosed '{{' in template")

    def replace(match: re.Match[str]) -> str:
        value = evaluate(match.group(1), scope)
        if isinstance(value, str):
            return value
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)

    return _SEGMENT.sub(replace, text)


def render(template: JsonValue, scope: Mapping[str, JsonValue]) -> JsonValue:
    """Fill ``{{ expr }}`` segments in every string of ``template`` (dict keys untouched)."""
    return _each_string(template, lambda text: _render_text(text, scope))


def _segment_problems(text: str) -> list[str]:
    problems = [
        f"{problem} in '{match.group(0).strip()}'"
        for match in _SEGMENT.finditer(text)
        if (problem := expression_problem(match.group(1)))
    ]
    if "{{" in _SEGMENT.sub("", text):
        problems.append("unclosed '{{'")
    return problems


def template_problems(template: JsonValue) -> list[str]:
    """Every problem in the ``{{ }}`` segments of a template, each prefixed by its path."""
    return _problems(template, _segment_problems)
