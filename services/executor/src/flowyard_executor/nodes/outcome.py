"""What an action node handler hands back to the executor.

Handlers never raise for an expected failure (a refused connection, a 500, a crossed
threshold): they return an outcome with a :class:`TaskError` whose ``code`` a retry policy
or an alert can match on. ``output`` may be set alongside an error (the response of a
failed HTTP call, the value of a failed check) so the run record shows what was seen.
``warnings`` are for a task that succeeded but deserves a look.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from flowyard.domain.json import JsonValue
from flowyard.domain.run import TaskError

from flowyard_executor.sandbox import LogLine

INVALID_CONFIG = "node.invalid"


@dataclass(frozen=True)
class NodeOutcome:
    output: JsonValue = None
    error: TaskError | None = None
    warnings: tuple[str, ...] = ()
    # What a code node printed (time, stream, text), stored per attempt by the executor.
    logs: tuple[LogLine, ...] = ()

    @property
    def ok(self) -> bool:
        return self.error is None


def failure(code: str, message: str, output: JsonValue = None) -> NodeOutcome:
    return NodeOutcome(output=output, error=TaskError(code, message))


def invalid_config(problems: Iterable[str]) -> NodeOutcome:
    """The rendered config broke a rule of :func:`flowyard.domain.node_config.config_problems`."""
    return failure(INVALID_CONFIG, "; ".join(problems))
