"""The credentials one task uses: fetched for it alone, and redacted from what it returns.

:func:`task_credentials` decrypts exactly the credentials the node's config names
(:func:`flowyard.domain.credentials.referenced_credentials`), at the time the task runs, so
a rotated value is used from the next task on. :func:`redact_outcome` replaces those values
in everything the task hands back (output, error message and stack trace, warnings, log
lines) before the executor records or publishes any of it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from flowyard.adapters.credentials import KEY_ENV, CredentialStore
from flowyard.domain.credentials import (
    UNAVAILABLE,
    CredentialError,
    Redactor,
    referenced_credentials,
)
from flowyard.domain.json import JsonObject

from flowyard_executor.nodes import NodeOutcome


async def task_credentials(store: CredentialStore | None, config: JsonObject) -> dict[str, str]:
    """Name -> value of every credential ``config`` references; CredentialError if any
    cannot be had (not found, no key on this executor, not decryptable)."""
    names = referenced_credentials(config)
    if not names:
        return {}
    if store is None:
        raise CredentialError(UNAVAILABLE, f"{KEY_ENV} is not set on this executor")
    return await store.values(names)


def _redact_fields(item: Any, redactor: Redactor) -> Any:
    """A dataclass (e.g. a log line) with each of its string fields redacted."""
    if not dataclasses.is_dataclass(item) or isinstance(item, type):
        return redactor.text(item) if isinstance(item, str) else item
    changes = {
        f.name: redactor.text(value)
        for f in dataclasses.fields(item)
        if isinstance(value := getattr(item, f.name), str)
    }
    return dataclasses.replace(item, **changes)


def redact_outcome(outcome: NodeOutcome, values: dict[str, str]) -> NodeOutcome:
    if not values:
        return outcome
    redactor = Redactor(values)
    changes: dict[str, Any] = {
        "output": redactor.json(outcome.output),
        "warnings": tuple(redactor.text(w) for w in outcome.warnings),
    }
    if outcome.error is not None:
        changes["error"] = _redact_fields(outcome.error, redactor)
    # Log lines, where the outcome carries them (what a code node printed).
    logs = getattr(outcome, "logs", None)
    if logs:
        changes["logs"] = tuple(_redact_fields(line, redactor) for line in logs)
    return dataclasses.replace(outcome, **changes)
