"""Credential references, encryption and redaction (no stack needed)."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.fernet import Fernet
from flowyard.adapters.credentials import CredentialCipher
from flowyard.domain.credentials import (
    UNDECRYPTABLE,
    CredentialError,
    Redactor,
    check_credential_name,
    referenced_credentials,
)
from flowyard.domain.run import TaskError
from flowyard_executor.credentials import redact_outcome
from flowyard_executor.nodes import NodeOutcome


def test_references_are_literal_names_in_templates_and_a_code_nodes_list() -> None:
    config = {
        "url": "https://api.example/{{ credentials.api_key }}/x",
        "headers": {"Authorization": "Bearer {{ credentials['bearer'] }}"},
        "json": ['{{ credentials [ "in_list" ] }}', "{{ upstream.a.credentials }}"],
        "body": "credentials.not_a_template and {{ credentials[trigger.which] }}",
        "credentials": ["listed", 5],
    }
    assert referenced_credentials(config) == {"api_key", "bearer", "in_list", "listed"}
    assert referenced_credentials({"text": "no templates"}) == set()
    assert referenced_credentials("{{ credentials.top }}") == {"top"}


@pytest.mark.parametrize("name", ["api_key", "_x", "SMTP_PASSWORD", "a" * 64])
def test_good_credential_names(name: str) -> None:
    assert check_credential_name(name) is None


@pytest.mark.parametrize("name", ["", "1key", "api-key", "a.b", "a" * 65, "ключ"])
def test_bad_credential_names(name: str) -> None:
    assert check_credential_name(name)


def test_values_are_encrypted_and_bound_to_their_name() -> None:
    cipher = CredentialCipher(Fernet.generate_key().decode())
    token = cipher.encrypt("api_key", "s3cr3t-value")
    assert "s3cr3t" not in token
    assert cipher.decrypt("api_key", token) == "s3cr3t-value"
    with pytest.raises(CredentialError, match="not its own") as swapped:
        cipher.decrypt("other", token)
    assert swapped.value.code == UNDECRYPTABLE


def test_the_first_key_encrypts_and_every_key_decrypts() -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    stored = CredentialCipher(old).encrypt("k", "v1")
    rolled = CredentialCipher(f"{new}, {old}")
    assert rolled.decrypt("k", stored) == "v1"
    fresh = rolled.encrypt("k", "v2")
    assert CredentialCipher(new).decrypt("k", fresh) == "v2"
    with pytest.raises(CredentialError, match="another key") as wrong:
        CredentialCipher(Fernet.generate_key().decode()).decrypt("k", stored)
    assert wrong.value.code == UNDECRYPTABLE


@pytest.mark.parametrize("keys", ["", " , ", "not-a-key", f"{Fernet.generate_key().decode()},x"])
def test_a_bad_key_setting_is_refused_naming_the_variable(keys: str) -> None:
    with pytest.raises(ValueError, match="FLOWYARD_CREDENTIALS_KEY"):
        CredentialCipher(keys)


def test_redaction_replaces_values_everywhere_longest_first() -> None:
    redactor = Redactor({"key": "abcd1234", "longer": "abcd1234-and-more", "pin": "42"})
    assert redactor.text("x abcd1234-and-more y abcd1234") == (
        "x [credential longer] y [credential key]"
    )
    assert redactor.text("42") == "[credential pin]"
    assert redactor.text("1429") == "1429"  # short values only as whole strings
    assert redactor.json({"abcd1234": ["abcd1234", 42, None, {"n": "42"}]}) == {
        "[credential key]": ["[credential key]", 42, None, {"n": "[credential pin]"}]
    }


def test_an_outcome_is_redacted_in_output_error_and_warnings() -> None:
    outcome = NodeOutcome(
        output={"echo": "token=abcd1234"},
        error=TaskError("http.status", "GET https://x/abcd1234 gave 500", "at abcd1234"),
        warnings=("slow abcd1234",),
    )
    redacted = redact_outcome(outcome, {"key": "abcd1234"})
    assert redacted.output == {"echo": "token=[credential key]"}
    assert redacted.error == TaskError(
        "http.status", "GET https://x/[credential key] gave 500", "at [credential key]"
    )
    assert redacted.warnings == ("slow [credential key]",)
    assert "abcd1234" not in repr(redacted)
    assert redact_outcome(outcome, {}) is outcome


def test_log_lines_a_code_node_printed_are_redacted() -> None:
    from datetime import UTC, datetime

    from flowyard_executor.sandbox import LogLine

    when = datetime(2025, 1, 1, tzinfo=UTC)
    outcome = NodeOutcome(output=None, logs=(LogLine(when, "stdout", "key is abcd1234"),))
    (line,) = redact_outcome(outcome, {"key": "abcd1234"}).logs
    assert line == LogLine(when, "stdout", "key is [credential key]")


class FakeCredentials:
    def __init__(self, values: dict[str, str]) -> None:
        self.stored = values
        self.asked: list[set[str]] = []

    async def values(self, names: set[str]) -> dict[str, str]:
        self.asked.append(set(names))
        missing = sorted(set(names) - self.stored.keys())
        if missing:
            raise CredentialError("credential.not_found", f"no credential named {missing[0]}")
        return {name: self.stored[name] for name in names}


def actions(store: object | None) -> Any:
    from flowyard.config import Settings
    from flowyard_executor.actions import Actions

    return Actions(Settings(), sandbox=None, credentials=store)  # type: ignore[arg-type]


async def test_a_task_is_given_only_the_credentials_it_names() -> None:
    store = FakeCredentials({"a_key": "value-aaaa", "other": "value-bbbb"})
    config = {"url": "http://127.0.0.1:1/{{ credentials.a_key }}", "method": "GET"}
    outcome = await actions(store).run("http", config, {"trigger": {}}, 5)
    assert store.asked == [{"a_key"}]
    assert outcome.error is not None and outcome.error.code == "http.connection"
    assert "value-aaaa" not in repr(outcome)


async def test_a_name_computed_from_run_data_finds_no_credential() -> None:
    store = FakeCredentials({"a_key": "value-aaaa"})
    config = {"url": "http://x/{{ credentials[trigger.which] }}"}
    outcome = await actions(store).run("http", config, {"trigger": {"which": "a_key"}}, 5)
    assert store.asked == []
    assert outcome.error is not None and outcome.error.code == "expression.missing_field"
    assert "'credentials' is missing" in outcome.error.message


async def test_an_executor_without_the_key_fails_tasks_that_need_credentials() -> None:
    config = {"url": "http://x/{{ credentials.a_key }}"}
    outcome = await actions(None).run("http", config, {"trigger": {}}, 5)
    assert outcome.error is not None
    assert outcome.error.code == "credential.unavailable"
    assert "FLOWYARD_CREDENTIALS_KEY is not set on this executor" in outcome.error.message
