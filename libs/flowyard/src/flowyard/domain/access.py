"""Principals, roles and bearer tokens (FEATURES P1).

A token is a random string shown once when issued; the store keeps only its SHA-256
(:func:`token_hash`) with the principal's name and role. Roles are ordered: each one may
do everything the one below it may.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum


class Role(IntEnum):
    """viewer reads; operator also acts on runs; admin also changes what runs and who may."""

    VIEWER = 1
    OPERATOR = 2
    ADMIN = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @property
    def with_article(self) -> str:
        """The label with its article: a viewer, an operator, an admin."""
        return f"{'a' if self is Role.VIEWER else 'an'} {self.label}"

    @classmethod
    def from_label(cls, label: str) -> Role:
        try:
            return cls[label.strip().upper()]
        except KeyError:
            names = ", ".join(r.label for r in cls)
            raise ValueError(f"unknown role {label!r}; one of {names}") from None


@dataclass(frozen=True)
class Principal:
    """Who a call comes from: the name and role its token carries."""

    name: str
    role: Role
    token_id: str = ""


@dataclass(frozen=True)
class TokenRecord:
    """What is stored about a token: never the token itself."""

    token_id: str
    name: str
    role: Role
    created_at: datetime
    created_by: str
    revoked_at: datetime | None = None
    revoked_by: str = ""

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    @property
    def principal(self) -> Principal:
        return Principal(self.name, self.role, self.token_id)


# Recognisable by secret scanners; the random part carries 256 bits.
TOKEN_PREFIX = "fyt_"
TOKEN_RANDOM_BYTES = 32
MAX_TOKEN_LENGTH = 256
PRINCIPAL_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_RANDOM_BYTES)


def new_token_id() -> str:
    """A short public id, unrelated to the token (it is listed and shown freely)."""
    return secrets.token_hex(6)


def token_hash(token: str) -> str:
    """The stored form of a token: its SHA-256, hex.

    A plain fast hash is right here, unlike for passwords: tokens are 256 random bits, so
    there is no dictionary to try and a preimage search is out of reach whatever the hash
    speed. A salt or a slow KDF (bcrypt, argon2) would only add latency to every call and
    rule out finding the token by its hash with one indexed read. A database leak gives
    hashes that cannot be sent as tokens.
    """
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_principal_name(name: str) -> str | None:
    """The problem with ``name`` as a principal name, or None when it is fine."""
    if not PRINCIPAL_NAME_PATTERN.match(name):
        return "1-64 characters: letters, digits, '_', '-', '.', '@' (not first)"
    return None
