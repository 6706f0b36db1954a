"""Bearer tokens in MongoDB (collection ``tokens``), stored hashed.

One document per token, ``_id`` = the token's SHA-256 (:func:`flowyard.domain.access.token_hash`),
so authenticating a call is one read by ``_id``. The token itself is returned once, by
:meth:`TokenStore.issue`, and stored nowhere. Revoking sets ``revoked_at``; the document
stays, so the list shows who had access when. Driver errors leave as InfrastructureError.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING, AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError, PyMongoError

from flowyard.adapters.indexes import ensure_indexes
from flowyard.domain.access import (
    MAX_TOKEN_LENGTH,
    Role,
    TokenRecord,
    new_token,
    new_token_id,
    token_hash,
)
from flowyard.errors import InfrastructureError, NotFoundError

Document = dict[str, Any]
COLLECTION = "tokens"


class TokenNotFoundError(NotFoundError):
    def __init__(self, token_id_or_name: str) -> None:
        super().__init__(f"no token with id or principal name {token_id_or_name!r}")


class TokenStore:
    """Tokens in ``database`` (share the gateway's MongoStore client: ``store.database``)."""

    def __init__(self, database: AsyncDatabase[Document]) -> None:
        self.tokens = database[COLLECTION]

    @classmethod
    @asynccontextmanager
    async def connect(cls, url: str, database: str) -> AsyncIterator[TokenStore]:
        """A store with its own client, for commands that run outside the gateway."""
        client: AsyncMongoClient[Document] = AsyncMongoClient(
            url, tz_aware=True, serverSelectionTimeoutMS=10_000, appname="flowyard-tokens"
        )
        try:
            store = cls(client[database])
            await store.ensure_indexes()
            yield store
        finally:
            await client.close()

    async def ensure_indexes(self) -> None:
        await ensure_indexes(self.tokens.database, ("tokens",))

    async def issue(
        self, name: str, role: Role, created_by: str, now: datetime | None = None
    ) -> tuple[TokenRecord, str]:
        """Store a new token for ``name``; returns its record and the token (shown once)."""
        record = TokenRecord(
            token_id=new_token_id(),
            name=name,
            role=role,
            created_at=now or datetime.now(UTC),
            created_by=created_by,
        )
        for _ in range(3):  # a token id collision (48 random bits) is all but impossible
            token = new_token()
            try:
                await self.tokens.insert_one({"_id": token_hash(token), **_to_doc(record)})
            except DuplicateKeyError:
                record = replace(record, token_id=new_token_id())
                continue
            except PyMongoError as exc:
                raise InfrastructureError(f"MongoDB insert failed: {exc}") from exc
            return record, token
        raise InfrastructureError("could not store a new token: ids kept colliding")

    async def lookup(self, token: str) -> TokenRecord | None:
        """The record of ``token`` (active or revoked), None when it is unknown."""
        if not token or len(token) > MAX_TOKEN_LENGTH:
            return None
        try:
            doc: Document | None = await self.tokens.find_one({"_id": token_hash(token)})
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB query failed: {exc}") from exc
        return None if doc is None else _from_doc(doc)

    async def list_tokens(self, include_revoked: bool = False) -> list[TokenRecord]:
        query: Document = {} if include_revoked else {"revoked_at": None}
        try:
            cursor = self.tokens.find(query).sort([("name", ASCENDING), ("created_at", ASCENDING)])
            return [_from_doc(doc) async for doc in cursor]
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB query failed: {exc}") from exc

    async def revoke(
        self, token_id_or_name: str, revoked_by: str, now: datetime | None = None
    ) -> list[TokenRecord]:
        """Revoke the token with that id, else every active token of that principal.

        Returns the tokens this call revoked (empty if they were revoked already);
        TokenNotFoundError when no token has that id or name.
        """
        try:
            found = [
                doc
                async for doc in self.tokens.find(
                    {"$or": [{"token_id": token_id_or_name}, {"name": token_id_or_name}]}
                )
            ]
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB query failed: {exc}") from exc
        if not found:
            raise TokenNotFoundError(token_id_or_name)
        by_id = [doc for doc in found if doc["token_id"] == token_id_or_name]
        targets = [doc for doc in (by_id or found) if doc.get("revoked_at") is None]
        if not targets:
            return []
        when = now or datetime.now(UTC)
        try:
            await self.tokens.update_many(
                {"_id": {"$in": [doc["_id"] for doc in targets]}, "revoked_at": None},
                {"$set": {"revoked_at": when, "revoked_by": revoked_by}},
            )
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB update failed: {exc}") from exc
        return [_from_doc({**doc, "revoked_at": when, "revoked_by": revoked_by}) for doc in targets]


def _to_doc(record: TokenRecord) -> Document:
    return {
        "token_id": record.token_id,
        "name": record.name,
        "role": record.role.label,
        "created_at": record.created_at,
        "created_by": record.created_by,
        "revoked_at": record.revoked_at,
        "revoked_by": record.revoked_by,
    }


def _from_doc(doc: Mapping[str, Any]) -> TokenRecord:
    return TokenRecord(
        token_id=doc["token_id"],
        name=doc["name"],
        role=Role.from_label(doc["role"]),
        created_at=doc["created_at"],
        created_by=doc.get("created_by", ""),
        revoked_at=doc.get("revoked_at"),
        revoked_by=doc.get("revoked_by", ""),
    )
