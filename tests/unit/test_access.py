"""Roles, token hashing and the gateway's token cache (no stack needed)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

import pytest
from flowyard.domain.access import (
    Role,
    TokenRecord,
    check_principal_name,
    new_token,
    token_hash,
)
from flowyard_api_gateway.auth import TokenAuthenticator, bearer_token

NOW = datetime(2025, 1, 1, tzinfo=UTC)


def test_roles_are_ordered_and_parsed_by_label() -> None:
    assert Role.VIEWER < Role.OPERATOR < Role.ADMIN
    assert Role.from_label(" Operator ") is Role.OPERATOR
    assert [r.label for r in Role] == ["viewer", "operator", "admin"]
    with pytest.raises(ValueError, match="one of viewer, operator, admin"):
        Role.from_label("root")


def test_tokens_are_random_and_stored_as_their_sha256() -> None:
    first, second = new_token(), new_token()
    assert first != second and first.startswith("fyt_") and len(first) >= 4 + 43
    assert token_hash(first) == hashlib.sha256(first.encode()).hexdigest()
    assert token_hash(first) != token_hash(second)


@pytest.mark.parametrize("name", ["alice", "ci-bot", "a.b@example.com", "X" * 64, "7"])
def test_good_principal_names(name: str) -> None:
    assert check_principal_name(name) is None


@pytest.mark.parametrize("name", ["", "-lead", ".x", "a b", "x" * 65, "ä", "a/b"])
def test_bad_principal_names(name: str) -> None:
    assert check_principal_name(name)


@pytest.mark.parametrize(
    ("metadata", "token", "problem"),
    [
        ((("authorization", "Bearer abc"),), "abc", ""),
        ((("Authorization", "bearer  abc "),), "abc", ""),
        ((("authorization", b"Bearer abc"),), "abc", ""),
        ((), "", "missing bearer token"),
        (None, "", "missing bearer token"),
        ((("authorization", "Basic abc"),), "", "must be 'Bearer <token>'"),
        ((("authorization", "Bearer"),), "", "must be 'Bearer <token>'"),
        ((("authorization", "Bearer a"), ("authorization", "Bearer b")), "", "send one"),
    ],
)
def test_the_bearer_header(metadata: Any, token: str, problem: str) -> None:
    found, why = bearer_token(metadata)
    assert found == token
    assert (problem in why) if problem else why == ""


class FakeTokens:
    def __init__(self) -> None:
        self.records: dict[str, TokenRecord] = {}
        self.lookups = 0

    async def lookup(self, token: str) -> TokenRecord | None:
        self.lookups += 1
        return self.records.get(token)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def record(revoked: bool = False) -> TokenRecord:
    return TokenRecord("id1", "ann", Role.VIEWER, NOW, "admin", NOW if revoked else None)


async def test_active_tokens_are_cached_for_the_ttl_only() -> None:
    tokens, clock = FakeTokens(), Clock()
    tokens.records["t"] = record()
    auth = TokenAuthenticator(tokens, ttl_seconds=1.0, clock=clock)  # type: ignore[arg-type]

    assert (await auth.lookup("t")) == record()
    clock.now += 0.9
    assert (await auth.lookup("t")) == record()
    assert tokens.lookups == 1
    tokens.records["t"] = record(revoked=True)  # revoked through another gateway
    clock.now += 0.2
    found = await auth.lookup("t")
    assert found is not None and not found.active
    assert tokens.lookups == 2


async def test_invalidate_drops_cached_tokens_at_once() -> None:
    tokens, clock = FakeTokens(), Clock()
    tokens.records["t"] = record()
    auth = TokenAuthenticator(tokens, clock=clock)  # type: ignore[arg-type]
    await auth.lookup("t")
    tokens.records["t"] = record(revoked=True)
    auth.invalidate()
    found = await auth.lookup("t")
    assert found is not None and not found.active


async def test_unknown_and_revoked_tokens_are_not_cached() -> None:
    tokens, clock = FakeTokens(), Clock()
    tokens.records["old"] = record(revoked=True)
    auth = TokenAuthenticator(tokens, clock=clock)  # type: ignore[arg-type]
    for _ in range(3):
        assert await auth.lookup("nope") is None
        await auth.lookup("old")
    assert tokens.lookups == 6


async def test_the_cache_is_bounded() -> None:
    tokens, clock = FakeTokens(), Clock()
    auth = TokenAuthenticator(tokens, max_entries=2, clock=clock)  # type: ignore[arg-type]
    for name in "abc":
        tokens.records[name] = record()
        await auth.lookup(name)
    assert len(auth._cache) <= 2
