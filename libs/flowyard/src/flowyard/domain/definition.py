"""Workflow definitions: parsing a YAML/JSON document and validating the graph.

Validation collects every problem before failing, and each problem names the node,
edge or field it is about, so a user fixes a definition in one pass.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from flowyard.domain import expressions, node_config
from flowyard.domain.json import JsonObject, JsonValue
from flowyard.domain.triggers import config_problems as trigger_problems
from flowyard.errors import DefinitionError, Problem

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
NODE_ID_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
CLONE_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,49}$")
MAX_NODES = 500
WAIT_UNITS = {"seconds": 1, "minutes": 60, "hours": 3600, "days": 86400}


class NodeType(StrEnum):
    TRIGGER = "trigger"
    CODE = "code"
    HTTP = "http"
    EMAIL = "email"
    SLACK = "slack"
    TRANSFORM = "transform"
    WAIT = "wait"
    CONDITION = "condition"
    APPROVAL = "approval"
    QUERY = "query"
    RUN_WORKFLOW = "run_workflow"

    @property
    def runs_on_executor(self) -> bool:
        """Actions that do I/O run on executors; the rest the scheduler decides itself."""
        return self in _EXECUTOR_TYPES


_EXECUTOR_TYPES = frozenset(
    {NodeType.CODE, NodeType.HTTP, NodeType.EMAIL, NodeType.SLACK, NodeType.QUERY}
)


class WhenFull(StrEnum):
    QUEUE = "queue"
    REJECT = "reject"


@dataclass(frozen=True)
class Concurrency:
    """At most ``max_runs`` active runs of a workflow (0 = unlimited)."""

    max_runs: int = 0
    when_full: WhenFull = WhenFull.QUEUE


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 1
    initial_backoff_seconds: float = 1.0
    backoff_multiplier: float = 2.0
    max_backoff_seconds: float = 0.0
    jitter: float = 0.0

    def backoff_before(self, attempt: int, salt: str = "") -> float:
        """Seconds to wait before ``attempt`` (attempt 1 never waits).

        Jitter is derived from ``salt`` (run and node) instead of a random generator, so
        the engine stays deterministic: the same event always yields the same decision.
        """
        if attempt <= 1:
            return 0.0
        wait = self.initial_backoff_seconds * self.backoff_multiplier ** (attempt - 2)
        if self.jitter > 0:
            digest = hashlib.sha256(f"{salt}:{attempt}".encode()).digest()
            spread = int.from_bytes(digest[:4], "big") / 0xFFFFFFFF * 2 - 1  # [-1, 1]
            wait *= 1 + self.jitter * spread
        if self.max_backoff_seconds > 0:
            wait = min(wait, self.max_backoff_seconds)
        return max(0.0, wait)


@dataclass(frozen=True)
class Node:
    id: str
    type: NodeType
    name: str = ""
    description: str = ""
    stage: str = ""
    config: JsonObject = field(default_factory=dict)
    context: JsonObject = field(default_factory=dict)
    timeout_seconds: int = 0
    retry: RetryPolicy = RetryPolicy()
    cancellable: bool = True
    # Runs only when the run is stopped with cleanup (compensation), never otherwise.
    cleanup: bool = False
    # Whether an operator may skip the task after it failed.
    skippable: bool = True

    @property
    def display_name(self) -> str:
        return self.name or self.id


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    # Edges leaving a condition node: "true" or "false"; empty everywhere else.
    when: str = ""


@dataclass(frozen=True)
class WorkflowDefinition:
    name: str
    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...]
    type: str = ""
    description: str = ""
    context: JsonObject = field(default_factory=dict)
    stages: tuple[str, ...] = ()
    concurrency: Concurrency = Concurrency()
    # Runs are purged this many days after they started; 0 = kept for ever (FEATURES H7).
    retention_days: int = 0

    def node(self, node_id: str) -> Node:
        for node in self.nodes:
            if node.id == node_id:
                return node
        raise KeyError(node_id)

    @property
    def trigger(self) -> Node:
        return next(n for n in self.nodes if n.type is NodeType.TRIGGER)

    def parents(self, node_id: str) -> tuple[str, ...]:
        return tuple(e.source for e in self.edges if e.target == node_id)

    def children(self, node_id: str) -> tuple[str, ...]:
        return tuple(e.target for e in self.edges if e.source == node_id)

    def incoming(self, node_id: str) -> tuple[Edge, ...]:
        return tuple(e for e in self.edges if e.target == node_id)

    def sinks(self) -> tuple[str, ...]:
        """Nodes nothing follows: their outputs are the run's output."""
        sources = {e.source for e in self.edges}
        return tuple(n.id for n in self.nodes if n.id not in sources and not n.cleanup)

    def descendants(self, node_id: str) -> frozenset[str]:
        return _reachable(node_id, self.edges, forward=True)

    def ancestors(self, node_id: str) -> frozenset[str]:
        return _reachable(node_id, self.edges, forward=False)

    def topological_order(self) -> tuple[str, ...]:
        """Node ids, parents before children, ties in declaration order."""
        order = _topological_order(self.nodes, self.edges)
        if order is None:
            raise DefinitionError([Problem("edges", "the graph has a cycle")])
        return order


def _reachable(start: str, edges: Iterable[Edge], *, forward: bool) -> frozenset[str]:
    """Nodes reachable from ``start`` along edges (or against them): one pass over the edges
    to index them, then each node once (a 500-node chain was cubic done edge scan by scan)."""
    adjacency: defaultdict[str, list[str]] = defaultdict(list)
    for edge in edges:
        source, target = (edge.source, edge.target) if forward else (edge.target, edge.source)
        adjacency[source].append(target)
    seen: set[str] = set()
    stack = list(adjacency.get(start, ()))
    while stack:
        current = stack.pop()
        if current not in seen:
            seen.add(current)
            stack.extend(adjacency.get(current, ()))
    return frozenset(seen)


def _topological_order(nodes: Iterable[Node], edges: Iterable[Edge]) -> tuple[str, ...] | None:
    ids = [n.id for n in nodes]
    edge_list = list(edges)
    indegree = {i: 0 for i in ids}
    for e in edge_list:
        indegree[e.target] += 1
    ready = [i for i in ids if indegree[i] == 0]
    order: list[str] = []
    while ready:
        current = ready.pop(0)
        order.append(current)
        for e in edge_list:
            if e.source == current:
                indegree[e.target] -= 1
                if indegree[e.target] == 0:
                    ready.append(e.target)
    return tuple(order) if len(order) == len(ids) else None


def parse_definition(document: Mapping[str, Any]) -> WorkflowDefinition:
    """Build a validated definition from a parsed YAML/JSON document.

    Raises :class:`DefinitionError` listing every problem found.
    """
    problems: list[Problem] = []
    if not isinstance(document, Mapping):
        raise DefinitionError([Problem("document", "must be a mapping with name, nodes, edges")])
    allowed = {
        "name",
        "type",
        "description",
        "nodes",
        "edges",
        "context",
        "stages",
        "concurrency",
        "retention_days",
    }
    for key in sorted(set(document) - allowed):
        problems.append(Problem(str(key), f"unknown field (allowed: {', '.join(sorted(allowed))})"))
    nodes: list[Node] = []
    raw_nodes = document.get("nodes", [])
    if not isinstance(raw_nodes, list):
        problems.append(Problem("nodes", "must be a list"))
        raw_nodes = []
    for index, raw in enumerate(raw_nodes):
        node = _parse_node(index, raw, problems)
        if node is not None:
            nodes.append(node)
    edges: list[Edge] = []
    raw_edges = document.get("edges", [])
    if not isinstance(raw_edges, list):
        problems.append(Problem("edges", "must be a list"))
        raw_edges = []
    for index, raw in enumerate(raw_edges):
        if not isinstance(raw, Mapping):
            problems.append(Problem(f"edges[{index}]", "must be a mapping with from and to"))
            continue
        source = raw.get("from", raw.get("source"))
        target = raw.get("to", raw.get("target"))
        if not isinstance(source, str) or not isinstance(target, str):
            problems.append(Problem(f"edges[{index}]", "needs string 'from' and 'to' node ids"))
            continue
        when = raw.get("when", "")
        if isinstance(when, bool):
            when = "true" if when else "false"
        if when not in ("", "true", "false"):
            problems.append(
                Problem(f"edge {source}->{target}", f"'when' must be true or false, not {when!r}")
            )
            when = ""
        edges.append(Edge(source, target, str(when)))
    context = document.get("context") or {}
    if not isinstance(context, Mapping):
        problems.append(Problem("context", "must be a mapping"))
        context = {}
    stages = document.get("stages") or []
    if not isinstance(stages, list) or not all(isinstance(x, str) and x for x in stages):
        problems.append(Problem("stages", "must be a list of stage names"))
        stages = []
    definition = WorkflowDefinition(
        name=str(document.get("name", "")),
        type=str(document.get("type", "") or ""),
        description=str(document.get("description", "") or ""),
        nodes=tuple(nodes),
        edges=tuple(edges),
        context=dict(context),
        stages=tuple(stages),
        concurrency=_parse_concurrency(document.get("concurrency"), problems),
        retention_days=_parse_retention(document.get("retention_days"), problems),
    )
    problems.extend(find_problems(definition))
    if problems:
        raise DefinitionError(problems)
    return definition


MAX_RETENTION_DAYS = 36_500


def _parse_retention(raw: object, problems: list[Problem]) -> int:
    if raw is None:
        return 0
    if not isinstance(raw, int) or isinstance(raw, bool) or not 0 <= raw <= MAX_RETENTION_DAYS:
        problems.append(
            Problem("retention_days", f"must be a whole number of days, 0-{MAX_RETENTION_DAYS}")
        )
        return 0
    return raw


def _parse_concurrency(raw: object, problems: list[Problem]) -> Concurrency:
    if raw is None:
        return Concurrency()
    if not isinstance(raw, Mapping):
        problems.append(Problem("concurrency", "must be a mapping with max_runs and when_full"))
        return Concurrency()
    for key in sorted(set(raw) - {"max_runs", "when_full"}):
        problems.append(Problem("concurrency", f"unknown field {key!r}"))
    max_runs = raw.get("max_runs", 0)
    if not isinstance(max_runs, int) or isinstance(max_runs, bool) or max_runs < 0:
        problems.append(Problem("concurrency.max_runs", "must be a whole number >= 0"))
        max_runs = 0
    try:
        when_full = WhenFull(str(raw.get("when_full") or "queue"))
    except ValueError:
        problems.append(Problem("concurrency.when_full", "must be 'queue' or 'reject'"))
        when_full = WhenFull.QUEUE
    return Concurrency(max_runs, when_full)


def _parse_node(index: int, raw: object, problems: list[Problem]) -> Node | None:
    if not isinstance(raw, Mapping):
        problems.append(Problem(f"nodes[{index}]", "must be a mapping"))
        return None
    node_id = raw.get("id")
    where = f"node {node_id!r}" if isinstance(node_id, str) and node_id else f"nodes[{index}]"
    allowed = {
        "id", "type", "name", "description", "stage", "config",
        "context", "timeout_seconds", "retry", "cancellable", "cleanup", "skippable",
    }  # fmt: skip
    for key in sorted(set(raw) - allowed):
        problems.append(Problem(where, f"unknown field {key!r}"))
    if not isinstance(node_id, str) or not node_id:
        problems.append(Problem(where, "needs a string 'id'"))
        return None
    raw_type = raw.get("type")
    try:
        node_type = NodeType(str(raw_type))
    except ValueError:
        known = ", ".join(t.value for t in NodeType)
        problems.append(Problem(where, f"unknown node type {raw_type!r} (known: {known})"))
        return None
    config, context, retry_raw = raw.get("config") or {}, raw.get("context") or {}, raw.get("retry")
    if not isinstance(config, Mapping):
        problems.append(Problem(where, "'config' must be a mapping"))
        config = {}
    if not isinstance(context, Mapping):
        problems.append(Problem(where, "'context' must be a mapping"))
        context = {}
    retry = RetryPolicy()
    if retry_raw is not None:
        if not isinstance(retry_raw, Mapping):
            problems.append(Problem(where, "'retry' must be a mapping"))
        else:
            try:
                retry = RetryPolicy(
                    max_attempts=int(retry_raw.get("max_attempts", 1)),
                    initial_backoff_seconds=float(retry_raw.get("initial_backoff_seconds", 1.0)),
                    backoff_multiplier=float(retry_raw.get("backoff_multiplier", 2.0)),
                    max_backoff_seconds=float(retry_raw.get("max_backoff_seconds", 0.0)),
                    jitter=float(retry_raw.get("jitter", 0.0)),
                )
            except (TypeError, ValueError):
                problems.append(Problem(where, "'retry' values must be numbers"))
    timeout = raw.get("timeout_seconds", 0)
    if not isinstance(timeout, int) or isinstance(timeout, bool):
        problems.append(Problem(where, "'timeout_seconds' must be an integer"))
        timeout = 0
    flags = {}
    for flag, default in (("cancellable", True), ("cleanup", False), ("skippable", True)):
        value = raw.get(flag, default)
        if not isinstance(value, bool):
            problems.append(Problem(where, f"'{flag}' must be true or false"))
            value = default
        flags[flag] = value
    return Node(
        id=node_id,
        type=node_type,
        name=str(raw.get("name", "") or ""),
        description=str(raw.get("description", "") or ""),
        stage=str(raw.get("stage", "") or ""),
        config=dict(config),
        context=dict(context),
        timeout_seconds=timeout,
        retry=retry,
        cancellable=flags["cancellable"],
        cleanup=flags["cleanup"],
        skippable=flags["skippable"],
    )


def find_problems(definition: WorkflowDefinition) -> list[Problem]:
    """Every structural problem of a definition; empty when it is valid."""
    problems: list[Problem] = []
    if not NAME_PATTERN.match(definition.name):
        problems.append(Problem("name", "must be 1-100 characters: letters, digits, '_', '-', '.'"))
    if len(definition.nodes) > MAX_NODES:
        problems.append(Problem("nodes", f"at most {MAX_NODES} nodes"))
    ids: set[str] = set()
    for node in definition.nodes:
        where = f"node {node.id!r}"
        if node.id in ids:
            problems.append(Problem(where, "duplicate node id"))
        ids.add(node.id)
        if not NODE_ID_PATTERN.match(node.id):
            problems.append(
                Problem(
                    where, "id must start with a letter or '_' and use letters, digits, '_', '-'"
                )
            )
        if node.timeout_seconds < 0:
            problems.append(Problem(where, "timeout_seconds must not be negative"))
        if node.retry.max_attempts < 1 or node.retry.max_attempts > 100:
            problems.append(Problem(where, "retry.max_attempts must be between 1 and 100"))
        if node.retry.initial_backoff_seconds < 0 or node.retry.backoff_multiplier < 1:
            problems.append(Problem(where, "retry backoff must be >= 0 s with a multiplier >= 1"))
        if node.retry.max_backoff_seconds < 0 or not 0 <= node.retry.jitter <= 1:
            problems.append(
                Problem(where, "retry.max_backoff_seconds must be >= 0 and jitter within 0..1")
            )
        if definition.stages and node.stage and node.stage not in definition.stages:
            problems.append(
                Problem(
                    where, f"stage {node.stage!r} is not one of stages {list(definition.stages)}"
                )
            )
        problems.extend(_config_problems(node))
    triggers = [n.id for n in definition.nodes if n.type is NodeType.TRIGGER]
    if not triggers:
        problems.append(Problem("nodes", "a workflow needs exactly one trigger node; found none"))
    elif len(triggers) > 1:
        problems.append(
            Problem("nodes", f"a workflow needs exactly one trigger node; found {triggers}")
        )
    seen_edges: set[Edge] = set()
    for edge in definition.edges:
        where = f"edge {edge.source}->{edge.target}"
        for end in (edge.source, edge.target):
            if end not in ids:
                problems.append(Problem(where, f"refers to unknown node {end!r}"))
        if edge.source == edge.target:
            problems.append(Problem(where, "a node cannot lead to itself"))
        if edge in seen_edges:
            problems.append(Problem(where, "duplicate edge"))
        seen_edges.add(edge)
        if edge.target in triggers:
            problems.append(Problem(where, "the trigger node cannot have incoming edges"))
    problems.extend(_branch_problems(definition, ids))
    if problems:
        return problems
    if _topological_order(definition.nodes, definition.edges) is None:
        problems.append(Problem("edges", f"the graph has a cycle through {_cycle(definition)}"))
        return problems
    trigger = triggers[0]
    reachable = definition.descendants(trigger)
    cleanup = {n.id for n in definition.nodes if n.cleanup}
    for node in definition.nodes:
        if node.cleanup:
            if node.type is NodeType.TRIGGER:
                problems.append(
                    Problem(f"node {node.id!r}", "the trigger cannot be a cleanup node")
                )
        elif node.id != trigger and node.id not in reachable:
            problems.append(Problem(f"node {node.id!r}", "is not reachable from the trigger"))
    for edge in definition.edges:
        if (edge.source in cleanup) != (edge.target in cleanup):
            problems.append(
                Problem(
                    f"edge {edge.source}->{edge.target}",
                    "cleanup nodes connect only to other cleanup nodes",
                )
            )
    return problems


def _cycle(definition: WorkflowDefinition) -> str:
    """A readable cycle, e.g. 'a -> b -> a', for the error message."""
    children = {n.id: list(definition.children(n.id)) for n in definition.nodes}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node_id: str) -> list[str] | None:
        state[node_id] = 1
        path.append(node_id)
        for child in children[node_id]:
            if state.get(child) == 1:
                return [*path[path.index(child) :], child]
            if child not in state and (found := visit(child)):
                return found
        path.pop()
        state[node_id] = 2
        return None

    for node in definition.nodes:
        if node.id not in state and (cycle := visit(node.id)):
            return " -> ".join(cycle)
    return "?"


def _branch_problems(definition: WorkflowDefinition, ids: set[str]) -> list[Problem]:
    """Condition nodes lead on through edges marked true/false; nothing else may."""
    problems: list[Problem] = []
    types = {n.id: n.type for n in definition.nodes}
    for edge in definition.edges:
        where = f"edge {edge.source}->{edge.target}"
        is_condition = types.get(edge.source) is NodeType.CONDITION
        if is_condition and not edge.when:
            problems.append(Problem(where, "edges leaving a condition need when: true or false"))
        if edge.when and edge.source in ids and not is_condition:
            problems.append(Problem(where, "only edges leaving a condition node take 'when'"))
    for node in definition.nodes:
        if node.type is NodeType.CONDITION and not definition.children(node.id):
            problems.append(Problem(f"node {node.id!r}", "a condition needs outgoing edges"))
    return problems


def _config_problems(node: Node) -> list[Problem]:
    where = f"node {node.id!r}"
    config = node.config
    messages: list[str] = []
    if node.type is NodeType.CODE:
        source = config.get("source")
        if not isinstance(source, str) or not source.strip():
            return [Problem(where, "a code node needs config.source (Python code)")]
        try:
            compile(source, f"<node {node.id}>", "exec")
        except SyntaxError as exc:
            return [Problem(where, f"Python syntax error at line {exc.lineno}: {exc.msg}")]
    elif node.type is NodeType.CONDITION:
        expression = config.get("expression")
        if not isinstance(expression, str) or not expression.strip():
            messages.append("a condition needs config.expression")
        elif (problem := expressions.expression_problem(expression)) is not None:
            messages.append(f"config.expression: {problem}")
    elif node.type is NodeType.TRANSFORM:
        if "output" not in config:
            messages.append("a transform needs config.output (a mapping of expressions)")
        else:
            messages.extend(
                f"config.output.{p}" for p in expressions.mapping_problems(config["output"])
            )
    elif node.type is NodeType.WAIT:
        messages.extend(_wait_problems(config))
    elif node.type is NodeType.RUN_WORKFLOW:
        workflow = config.get("workflow")
        if not isinstance(workflow, str) or not workflow:
            messages.append("a run_workflow node needs config.workflow (a workflow name)")
        if not isinstance(config.get("wait", True), bool):
            messages.append("config.wait must be true or false")
        messages.extend(
            f"config.input: {p}" for p in expressions.template_problems(config.get("input"))
        )
    elif node.type is NodeType.TRIGGER:
        messages.extend(trigger_problems(config))
    elif node.type is NodeType.APPROVAL:
        approvers = config.get("approvers", [])
        if not isinstance(approvers, list) or not all(isinstance(a, str) for a in approvers):
            messages.append("config.approvers must be a list of user names")
    else:
        messages.extend(node_config.config_problems(node.type.value, config))
        if node.type.runs_on_executor:
            messages.extend(f"config: {p}" for p in expressions.template_problems(dict(config)))
    return [Problem(where, m) for m in messages]


def _wait_problems(config: JsonObject) -> list[str]:
    given = [u for u in (*WAIT_UNITS, "until") if u in config]
    if len(given) != 1:
        units = ", ".join(WAIT_UNITS)
        return [f"a wait needs exactly one of config.{{{units}, until}}"]
    key = given[0]
    value = config[key]
    if key == "until":
        if not isinstance(value, str):
            return ["config.until must be an ISO 8601 time or a {{ template }}"]
        if "{{" in value:
            return [f"config.until: {p}" for p in expressions.template_problems(value)]
        if parse_time(value) is None:
            return [f"config.until {value!r} is not an ISO 8601 time with a time zone"]
        return []
    if isinstance(value, str) and "{{" in value:
        return [f"config.{key}: {p}" for p in expressions.template_problems(value)]
    if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
        return [f"config.{key} must be a number >= 0"]
    return []


def parse_time(text: str) -> datetime | None:
    """An ISO 8601 time that names its offset, or None (naive times are ambiguous)."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def definition_to_document(definition: WorkflowDefinition) -> dict[str, JsonValue]:
    """The inverse of :func:`parse_definition` (used for storage and equality)."""
    nodes: list[JsonValue] = []
    for n in definition.nodes:
        nodes.append(
            {
                "id": n.id,
                "type": n.type.value,
                "name": n.name,
                "description": n.description,
                "stage": n.stage,
                "config": dict(n.config),
                "context": dict(n.context),
                "timeout_seconds": n.timeout_seconds,
                "retry": {
                    "max_attempts": n.retry.max_attempts,
                    "initial_backoff_seconds": n.retry.initial_backoff_seconds,
                    "backoff_multiplier": n.retry.backoff_multiplier,
                    "max_backoff_seconds": n.retry.max_backoff_seconds,
                    "jitter": n.retry.jitter,
                },
                "cancellable": n.cancellable,
                **({"cleanup": True} if n.cleanup else {}),
                **({"skippable": False} if not n.skippable else {}),
            }
        )
    edges: list[JsonValue] = [
        {"from": e.source, "to": e.target, **({"when": e.when} if e.when else {})}
        for e in definition.edges
    ]
    document: dict[str, JsonValue] = {
        "name": definition.name,
        "type": definition.type,
        "description": definition.description,
        "context": dict(definition.context),
        "nodes": nodes,
        "edges": edges,
    }
    if definition.stages:
        document["stages"] = list(definition.stages)
    if definition.concurrency.max_runs:
        document["concurrency"] = {
            "max_runs": definition.concurrency.max_runs,
            "when_full": definition.concurrency.when_full.value,
        }
    if definition.retention_days:
        document["retention_days"] = definition.retention_days
    return document
