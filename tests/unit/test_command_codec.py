"""Operators' commands survive the trip gateway -> Kafka -> scheduler unchanged."""

from __future__ import annotations

import pytest
from flowyard import codec
from flowyard.domain.control import Command


@pytest.mark.parametrize(
    "command",
    [
        Command("stop", "dana", command_id="c1", comment="wrong input", cleanup=True),
        Command("stop", "dana", command_id="c2"),
        Command("retry_task", "lee", command_id="c3", node_id="fetch"),
        Command(
            "retry_task",
            "lee",
            command_id="c4",
            node_id="check",
            config_override={"failure_threshold": 50, "warning_threshold": 2.5},
        ),
        Command("restart", "ops", command_id="c5", workflow_version=3),
        Command("rerun_from", "ops", command_id="c6", node_id="b"),
        Command("skip_task", "ops", command_id="c7", node_id="x", output={"region": "eu"}),
        Command("skip_task", "ops", command_id="c8", node_id="x"),
        Command("resume", "ops", command_id="c9", comment="go on"),
    ],
)
def test_a_command_reads_back_as_it_was_sent(command: Command) -> None:
    message = codec.command_to_proto(command)
    assert codec.command_from_proto(message) == command


def test_an_unknown_action_is_not_encoded() -> None:
    with pytest.raises(ValueError, match="teleport"):
        codec.command_to_proto(Command("teleport", "x"))
