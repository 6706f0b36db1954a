"""Every error Flowyard raises on purpose derives from :class:`FlowyardError`.

Tree::

    FlowyardError
    ├── DefinitionError          a workflow definition is invalid (lists every problem)
    ├── ExpressionError          an expression cannot be evaluated (names the missing field)
    ├── WorkflowStateError       the workflow's state forbids the request (draft, paused)
    ├── NotFoundError
    │   ├── WorkflowNotFoundError
    │   └── RunNotFoundError
    ├── InvalidTransitionError   a run or task state change the state machine forbids
    ├── ConflictError            a conditional write lost against a concurrent one
    ├── DecodeError              a Kafka message that is not a valid Flowyard envelope
    └── InfrastructureError      Kafka or MongoDB failed (driver errors are chained)

Adapters translate driver exceptions into ``InfrastructureError`` with ``raise ... from exc``
so callers never import a driver to handle a failure.
"""

from __future__ import annotations

from dataclasses import dataclass


class FlowyardError(Exception):
    """Root of all Flowyard errors."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a definition; ``where`` names the node, edge or field."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


class DefinitionError(FlowyardError):
    def __init__(self, problems: list[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("invalid workflow definition: " + "; ".join(map(str, problems)))


class ExpressionError(FlowyardError):
    """An expression failed at run time; ``code`` is the task error code to report."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


class WorkflowStateError(FlowyardError):
    pass


class NotFoundError(FlowyardError):
    pass


class WorkflowNotFoundError(NotFoundError):
    def __init__(self, name: str, version: int = 0) -> None:
        what = f"workflow {name!r}" + (f" version {version}" if version else "")
        super().__init__(f"{what} not found")


class RunNotFoundError(NotFoundError):
    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id!r} not found")


class InvalidTransitionError(FlowyardError):
    pass


class ConflictError(FlowyardError):
    pass


class DecodeError(FlowyardError):
    pass


class InfrastructureError(FlowyardError):
    pass
