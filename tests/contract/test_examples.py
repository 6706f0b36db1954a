"""The workflows in examples/ are valid definitions, and restock-check, the one `make run`
runs (scripts/run-local.sh), uses every node type the engine has.

Pure file checks: the same parse and validation the gateway applies on registration.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from flowyard.domain.definition import NodeType, WorkflowDefinition, parse_definition

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(
    p for pattern in ("*.yaml", "*.yml", "*.json") for p in (ROOT / "examples").glob(pattern)
)


def _load(path: Path) -> WorkflowDefinition:
    return parse_definition(yaml.safe_load(path.read_text(encoding="utf-8")))


def test_examples_exist() -> None:
    assert EXAMPLES, "examples/ holds no workflow definitions"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_parses(path: Path) -> None:
    definition = _load(path)
    assert definition.name == path.stem, "an example file is named after its workflow"


def test_restock_check_uses_every_node_type() -> None:
    definition = _load(ROOT / "examples" / "restock-check.yaml")
    missing = set(NodeType) - {node.type for node in definition.nodes}
    assert not missing, f"restock-check uses no {sorted(t.value for t in missing)} node"


def test_restock_check_has_the_approval_make_run_decides() -> None:
    definition = _load(ROOT / "examples" / "restock-check.yaml")
    assert definition.node("approve-purchase").type is NodeType.APPROVAL
    assert "approve-purchase" in (ROOT / "scripts" / "run-local.sh").read_text(encoding="utf-8")


def test_child_workflows_are_examples_too() -> None:
    names = {_load(path).name for path in EXAMPLES}
    for path in EXAMPLES:
        for node in _load(path).nodes:
            if node.type is NodeType.RUN_WORKFLOW:
                assert node.config["workflow"] in names, f"{path.name}: node {node.id!r}"
