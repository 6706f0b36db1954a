"""Credentials as nodes see them: which ones a node uses, and keeping values out of records.

A node names the credentials it uses in its config: in templates, ``{{ credentials.NAME }}``
(or ``{{ credentials["NAME"] }}``), and a code node in a ``credentials: [NAME, ...]`` list.
Only those, named literally, are fetched for its task: a name computed from run data
(``credentials[trigger.which]``) finds nothing, so trigger data can never pick a secret.

Whatever a task produces (output, error, warnings, log lines) passes through a
:class:`Redactor` before it is recorded or sent on, which replaces each value it used by
``[credential NAME]``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from flowyard.domain.json import JsonValue
from flowyard.errors import FlowyardError

SCOPE_NAME = "credentials"
NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
MAX_VALUE_BYTES = 64 * 1024
# Shorter values are redacted only where a whole string equals them: replacing every "ab"
# inside every string would mangle records and would tell nothing anyway.
MIN_SUBSTRING_REDACTION = 4

_SEGMENT = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_REFERENCE = re.compile(
    r"\bcredentials\s*(?:\.\s*([A-Za-z_][A-Za-z0-9_]*)|\[\s*(['\"])([A-Za-z0-9_]+)\2\s*\])"
)

NOT_FOUND = "credential.not_found"
UNAVAILABLE = "credential.unavailable"
UNDECRYPTABLE = "credential.undecryptable"
INVALID = "credential.invalid"


class CredentialError(FlowyardError):
    """A credential a task needs cannot be had; ``code`` is the task's error code."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(message)


def check_credential_name(name: str) -> str | None:
    """The problem with ``name`` as a credential name, or None when it is fine."""
    if not NAME_PATTERN.match(name):
        return "1-64 characters: letters, digits and '_', not starting with a digit"
    return None


def referenced_credentials(config: JsonValue) -> set[str]:
    """The credential names ``config`` uses: literal references in its templates, plus a
    top-level ``credentials`` list (code nodes)."""
    found: set[str] = set()

    def walk(value: JsonValue) -> None:
        if isinstance(value, str):
            for segment in _SEGMENT.finditer(value):
                for match in _REFERENCE.finditer(segment.group(1)):
                    found.add(match.group(1) or match.group(3))
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)

    walk(config)
    if isinstance(config, dict):
        listed = config.get(SCOPE_NAME)
        if isinstance(listed, list):
            found.update(name for name in listed if isinstance(name, str))
    return found


@dataclass(frozen=True)
class Redactor:
    """Replaces credential values in text and JSON by ``[credential NAME]``."""

    values: Mapping[str, str]

    def _pairs(self) -> list[tuple[str, str]]:
        # Longest first, so a value containing another is replaced whole.
        pairs = [(value, name) for name, value in self.values.items() if value]
        return sorted(pairs, key=lambda pair: -len(pair[0]))

    def text(self, text: str) -> str:
        for value, name in self._pairs():
            if text == value:
                return f"[credential {name}]"
            if len(value) >= MIN_SUBSTRING_REDACTION and value in text:
                text = text.replace(value, f"[credential {name}]")
        return text

    def json(self, value: JsonValue) -> JsonValue:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self.json(item) for item in value]
        if isinstance(value, dict):
            return {self.text(key): self.json(item) for key, item in value.items()}
        return value
