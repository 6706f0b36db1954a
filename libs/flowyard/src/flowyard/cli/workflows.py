"""Workflow definition files in and out: loading and local validation (``apply``), the
definition document and workflow table (``get``, ``list``). Pure apart from reading files.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import tzinfo
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format, struct_pb2

from flowyard.cli.render import enum_label, format_time, render_table
from flowyard.codec import definition_to_proto, struct_to_json
from flowyard.domain.definition import RetryPolicy, parse_definition
from flowyard.errors import DefinitionError
from flowyard.v1 import workflow_pb2

STDIN = "-"


class LoadError(Exception):
    """A file that cannot be read or parsed; the message says why."""


def load_document(path: str) -> Any:
    """Parse a YAML or JSON file (``-`` = stdin): by extension, else by its first character."""
    try:
        text = sys.stdin.read() if path == STDIN else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LoadError(f"cannot read: {exc}") from exc
    suffix = Path(path).suffix.lower()
    as_json = suffix == ".json" or (
        suffix not in {".yaml", ".yml"} and text.lstrip().startswith(("{", "["))
    )
    if as_json:
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise LoadError(f"invalid JSON: {exc}") from exc
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise LoadError(f"invalid YAML{where}: {exc.problem or exc.context}") from exc
    except yaml.YAMLError as exc:
        raise LoadError(f"invalid YAML: {exc}") from exc


@dataclass
class CheckedFiles:
    """Definitions ready to send, and one ``FILE: where: message`` line per problem."""

    definitions: list[tuple[str, workflow_pb2.WorkflowDefinition]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def check_files(paths: Sequence[str]) -> CheckedFiles:
    """Load and validate every file, collecting every problem of every file."""
    checked = CheckedFiles()
    for path in paths:
        try:
            definition = parse_definition(load_document(path))
            message = definition_to_proto(definition)
        except LoadError as exc:
            checked.problems.append(f"{path}: {exc}")
        except DefinitionError as exc:
            checked.problems.extend(f"{path}: {p.where}: {p.message}" for p in exc.problems)
        except (json_format.ParseError, TypeError, ValueError) as exc:
            # e.g. a YAML date in a config: not a JSON value, so it cannot travel.
            checked.problems.append(f"{path}: a value is not plain JSON data: {exc}")
        else:
            checked.definitions.append((path, message))
    return checked


def load_input(text: str) -> Any:
    """Run input given on the command line: JSON text, or ``@FILE`` (JSON or YAML)."""
    if text.startswith("@"):
        path = text[1:]
        if not path:
            raise LoadError("'@' needs a file name, e.g. @input.json")
        try:
            return load_document(path)
        except LoadError as exc:
            raise LoadError(f"{path}: {exc}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise LoadError(f"not valid JSON: {exc} (to read a file, write @FILE)") from exc


# --- reading definitions back ------------------------------------------------------------


class _FlowMapping(dict[str, Any]):
    """A mapping dumped on one line, ``{from: a, to: b}``."""


class _Dumper(yaml.SafeDumper):
    pass


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


def _represent_flow(dumper: yaml.SafeDumper, data: _FlowMapping) -> yaml.MappingNode:
    return dumper.represent_mapping("tag:yaml.org,2002:map", data, flow_style=True)


_Dumper.add_representer(str, _represent_str)
_Dumper.add_representer(_FlowMapping, _represent_flow)


def _struct(message: struct_pb2.Struct) -> Any:
    """A Struct as plain data, keys sorted (a Struct keeps no order of its own)."""
    return json.loads(json.dumps(struct_to_json(message), sort_keys=True))


def definition_document(definition: workflow_pb2.WorkflowDefinition) -> dict[str, Any]:
    """The definition as a user writes it (defaults left out); ``apply`` accepts it back."""
    document: dict[str, Any] = {"name": definition.name}
    if definition.type:
        document["type"] = definition.type
    if definition.description:
        document["description"] = definition.description
    if definition.context.fields:
        document["context"] = _struct(definition.context)
    nodes: list[dict[str, Any]] = []
    defaults = RetryPolicy()
    for node in definition.nodes:
        entry: dict[str, Any] = {"id": node.id, "type": node.type}
        for key in ("name", "description", "stage"):
            if getattr(node, key):
                entry[key] = getattr(node, key)
        if node.timeout_seconds:
            entry["timeout_seconds"] = node.timeout_seconds
        retry = RetryPolicy(
            max_attempts=node.retry.max_attempts or defaults.max_attempts,
            initial_backoff_seconds=node.retry.initial_backoff_seconds
            or defaults.initial_backoff_seconds,
            backoff_multiplier=node.retry.backoff_multiplier or defaults.backoff_multiplier,
        )
        if retry != defaults:
            entry["retry"] = _FlowMapping(
                max_attempts=retry.max_attempts,
                initial_backoff_seconds=retry.initial_backoff_seconds,
                backoff_multiplier=retry.backoff_multiplier,
            )
        if node.non_cancellable:
            entry["cancellable"] = False
        if node.context.fields:
            entry["context"] = _struct(node.context)
        if node.config.fields:
            entry["config"] = _struct(node.config)
        nodes.append(entry)
    document["nodes"] = nodes
    document["edges"] = [_FlowMapping({"from": e.source, "to": e.target}) for e in definition.edges]
    return document


def workflow_state_label(value: int) -> str:
    return enum_label(workflow_pb2.WorkflowState.Name, value, "WORKFLOW_STATE_")


def render_workflow_yaml(workflow: workflow_pb2.Workflow, tz: tzinfo | None = None) -> str:
    """The definition document as YAML under a comment naming version, state and id."""
    header = (
        f"# workflow {workflow.definition.name} version {workflow.version} "
        f"({workflow_state_label(workflow.state)}), id {workflow.workflow_id or '-'}, "
        f"created {format_time(workflow, 'created_at', tz)}\n"
    )
    body = yaml.dump(
        definition_document(workflow.definition),
        Dumper=_Dumper,
        sort_keys=False,
        allow_unicode=True,
        width=100,
    )
    return header + body.rstrip("\n")


def render_workflow_json(workflow: workflow_pb2.Workflow) -> str:
    """The definition document as JSON (the same document ``apply -f x.json`` reads)."""
    return json.dumps(definition_document(workflow.definition), indent=2, ensure_ascii=False)


def render_workflows(workflows: Sequence[workflow_pb2.Workflow], tz: tzinfo | None = None) -> str:
    """One row per workflow: name, version, state, type, what starts it, the next
    schedule tick and the last run (status and creation time)."""
    if not workflows:
        return "no workflows yet; register one with: flowyard workflow apply -f FILE"
    rows = [
        [
            w.definition.name,
            str(w.version),
            workflow_state_label(w.state),
            w.definition.type or "-",
            ", ".join(w.triggers) or "-",
            format_time(w, "next_fire_at", tz),
            _last_run(w, tz),
        ]
        for w in sorted(workflows, key=lambda w: (w.definition.name, w.version))
    ]
    headers = ["NAME", "VERSION", "STATE", "TYPE", "TRIGGERS", "NEXT FIRE", "LAST RUN"]
    return render_table(headers, rows)


def _last_run(workflow: workflow_pb2.Workflow, tz: tzinfo | None) -> str:
    if not workflow.HasField("last_run"):
        return "-"
    last = workflow.last_run
    return f"{last.status} {format_time(last, 'created_at', tz)} {last.run_id}"
