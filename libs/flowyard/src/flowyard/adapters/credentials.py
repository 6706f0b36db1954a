"""Credentials in MongoDB (collection ``credentials``), encrypted at rest with Fernet.

``FLOWYARD_CREDENTIALS_KEY`` holds one or more Fernet keys, comma-separated (make one with
``python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"``).
The first key encrypts; every key decrypts, so a new key is rolled in by putting it first
and keeping the old ones until every credential has been set or rotated again. Fernet is
AES-128-CBC with an HMAC-SHA256 over the ciphertext (``cryptography``'s vetted recipe).

Each ciphertext holds the credential's name with its value and the name is checked when
decrypting, so a ciphertext copied onto another credential's document is refused rather
than handing one secret to nodes that asked for another. Documents: ``_id`` = name,
``ciphertext``, ``version``, ``description``, who and when created and last updated.
Driver errors leave as InfrastructureError.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from pymongo import ASCENDING
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError, PyMongoError

from flowyard.adapters.indexes import ensure_indexes
from flowyard.domain.credentials import (
    NOT_FOUND,
    UNAVAILABLE,
    UNDECRYPTABLE,
    CredentialError,
)
from flowyard.errors import InfrastructureError, NotFoundError

Document = dict[str, Any]
COLLECTION = "credentials"
KEY_ENV = "FLOWYARD_CREDENTIALS_KEY"


class CredentialNotFoundError(NotFoundError):
    def __init__(self, name: str) -> None:
        super().__init__(f"credential {name!r} not found")


class CredentialCipher:
    """Encrypts with the first of ``keys`` (comma-separated Fernet keys), decrypts with any."""

    def __init__(self, keys: str) -> None:
        parts = [part.strip() for part in keys.split(",") if part.strip()]
        if not parts:
            raise ValueError(f"{KEY_ENV} is empty")
        fernets = []
        for number, part in enumerate(parts, 1):
            try:
                fernets.append(Fernet(part))
            except ValueError:
                raise ValueError(
                    f"{KEY_ENV}: key {number} is not a Fernet key (32 url-safe base64 bytes)"
                ) from None
        self._fernet = MultiFernet(fernets)

    @staticmethod
    def new_key() -> str:
        return Fernet.generate_key().decode()

    def encrypt(self, name: str, value: str) -> str:
        plain = json.dumps({"name": name, "value": value}).encode()
        return self._fernet.encrypt(plain).decode()

    def decrypt(self, name: str, ciphertext: str) -> str:
        try:
            plain = json.loads(self._fernet.decrypt(ciphertext.encode()))
        except (InvalidToken, ValueError):
            raise CredentialError(
                UNDECRYPTABLE,
                f"credential {name!r} cannot be decrypted with {KEY_ENV} "
                "(was it stored with another key?)",
            ) from None
        if not isinstance(plain, dict) or plain.get("name") != name:
            raise CredentialError(
                UNDECRYPTABLE, f"the stored ciphertext of credential {name!r} is not its own"
            )
        value = plain.get("value")
        if not isinstance(value, str):
            raise CredentialError(UNDECRYPTABLE, f"credential {name!r} holds no value")
        return value


def cipher_from_key(key: str) -> CredentialCipher | None:
    """The cipher for a configured key; None when no key is configured."""
    return CredentialCipher(key) if key.strip() else None


@dataclass(frozen=True)
class CredentialRecord:
    """A credential without its value."""

    name: str
    description: str
    version: int
    created_at: datetime
    created_by: str
    updated_at: datetime
    updated_by: str


class CredentialStore:
    """Credentials in ``database``; without a cipher only names can be listed or deleted."""

    def __init__(self, database: AsyncDatabase[Document], cipher: CredentialCipher | None) -> None:
        self.credentials = database[COLLECTION]
        self._cipher = cipher

    @property
    def can_encrypt(self) -> bool:
        return self._cipher is not None

    def _need_cipher(self) -> CredentialCipher:
        if self._cipher is None:
            raise CredentialError(UNAVAILABLE, f"{KEY_ENV} is not set on this service")
        return self._cipher

    async def ensure_indexes(self) -> None:
        await ensure_indexes(self.credentials.database, ("credentials",))

    async def set(
        self, name: str, value: str, description: str, by: str, now: datetime | None = None
    ) -> tuple[CredentialRecord, bool]:
        """Create ``name`` or replace its value; (record, created)."""
        ciphertext = self._need_cipher().encrypt(name, value)
        when = now or datetime.now(UTC)
        doc: Document = {
            "_id": name,
            "ciphertext": ciphertext,
            "description": description,
            "version": 1,
            "created_at": when,
            "created_by": by,
            "updated_at": when,
            "updated_by": by,
        }
        try:
            await self.credentials.insert_one(doc)
            return _record(doc), True
        except DuplicateKeyError:
            pass
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB insert failed: {exc}") from exc
        changes: Document = {"ciphertext": ciphertext, "updated_at": when, "updated_by": by}
        if description:
            changes["description"] = description
        return await self._update(name, changes), False

    async def rotate(
        self, name: str, value: str, by: str, now: datetime | None = None
    ) -> CredentialRecord:
        """Replace the value of an existing credential; CredentialNotFoundError otherwise."""
        ciphertext = self._need_cipher().encrypt(name, value)
        when = now or datetime.now(UTC)
        return await self._update(
            name, {"ciphertext": ciphertext, "updated_at": when, "updated_by": by}
        )

    async def _update(self, name: str, changes: Document) -> CredentialRecord:
        try:
            doc: Document | None = await self.credentials.find_one_and_update(
                {"_id": name},
                {"$set": changes, "$inc": {"version": 1}},
                return_document=True,
            )
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB update failed: {exc}") from exc
        if doc is None:
            raise CredentialNotFoundError(name)
        return _record(doc)

    async def delete(self, name: str) -> None:
        try:
            result = await self.credentials.delete_one({"_id": name})
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB delete failed: {exc}") from exc
        if result.deleted_count != 1:
            raise CredentialNotFoundError(name)

    async def list_credentials(self) -> list[CredentialRecord]:
        try:
            cursor = self.credentials.find({}, {"ciphertext": 0}).sort("_id", ASCENDING)
            return [_record(doc) async for doc in cursor]
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB query failed: {exc}") from exc

    async def values(self, names: Iterable[str]) -> dict[str, str]:
        """The decrypted values of ``names``; CredentialError naming any that is missing."""
        wanted = sorted(set(names))
        if not wanted:
            return {}
        cipher = self._need_cipher()
        try:
            docs = {
                doc["_id"]: doc
                async for doc in self.credentials.find({"_id": {"$in": wanted}}, {"ciphertext": 1})
            }
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB query failed: {exc}") from exc
        missing = [name for name in wanted if name not in docs]
        if missing:
            listed = ", ".join(missing)
            plural = "s" if len(missing) > 1 else ""
            raise CredentialError(NOT_FOUND, f"no credential{plural} named {listed}")
        return {name: cipher.decrypt(name, str(docs[name]["ciphertext"])) for name in wanted}


def _record(doc: Mapping[str, Any]) -> CredentialRecord:
    return CredentialRecord(
        name=doc["_id"],
        description=doc.get("description", ""),
        version=int(doc.get("version", 1)),
        created_at=doc["created_at"],
        created_by=doc.get("created_by", ""),
        updated_at=doc.get("updated_at", doc["created_at"]),
        updated_by=doc.get("updated_by", ""),
    )
