"""TokenService: admins issue, revoke and list bearer tokens; anyone asks who they are."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import grpc
from flowyard.adapters.tokens import TokenStore
from flowyard.domain.access import Role, TokenRecord, check_principal_name
from flowyard.v1 import auth_pb2, auth_pb2_grpc
from google.protobuf import timestamp_pb2

from flowyard_api_gateway.auth import TokenAuthenticator, caller_name, current_principal
from flowyard_api_gateway.errors import InvalidRequestError, translate_errors

Context = grpc.aio.ServicerContext[Any, Any]

ROLE_TO_PROTO: dict[Role, auth_pb2.Role.ValueType] = {
    Role.VIEWER: auth_pb2.ROLE_VIEWER,
    Role.OPERATOR: auth_pb2.ROLE_OPERATOR,
    Role.ADMIN: auth_pb2.ROLE_ADMIN,
}
ROLE_FROM_PROTO = {v: k for k, v in ROLE_TO_PROTO.items()}


def _timestamp(when: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(when)
    return stamp


def token_info(record: TokenRecord) -> auth_pb2.TokenInfo:
    info = auth_pb2.TokenInfo(
        token_id=record.token_id,
        name=record.name,
        role=ROLE_TO_PROTO[record.role],
        created_at=_timestamp(record.created_at),
        created_by=record.created_by,
        revoked_by=record.revoked_by,
    )
    if record.revoked_at is not None:
        info.revoked_at.CopyFrom(_timestamp(record.revoked_at))
    return info


class TokenServicer(auth_pb2_grpc.TokenServiceServicer):
    def __init__(self, tokens: TokenStore, authenticator: TokenAuthenticator) -> None:
        self._tokens = tokens
        self._authenticator = authenticator

    @translate_errors
    async def IssueToken(
        self, request: auth_pb2.IssueTokenRequest, context: Context
    ) -> auth_pb2.IssueTokenResponse:
        problem = check_principal_name(request.name)
        if problem:
            raise InvalidRequestError("name", problem)
        role = ROLE_FROM_PROTO.get(request.role)
        if role is None:
            raise InvalidRequestError("role", "must be ROLE_VIEWER, ROLE_OPERATOR or ROLE_ADMIN")
        record, token = await self._tokens.issue(request.name, role, created_by=caller_name())
        return auth_pb2.IssueTokenResponse(info=token_info(record), token=token)

    @translate_errors
    async def RevokeToken(
        self, request: auth_pb2.RevokeTokenRequest, context: Context
    ) -> auth_pb2.RevokeTokenResponse:
        if not request.token_id_or_name:
            raise InvalidRequestError("token_id_or_name", "is required")
        try:
            revoked = await self._tokens.revoke(request.token_id_or_name, caller_name())
        finally:
            # Even a failed write may have landed: never trust the cache after one.
            self._authenticator.invalidate()
        return auth_pb2.RevokeTokenResponse(revoked=[token_info(r) for r in revoked])

    @translate_errors
    async def ListTokens(
        self, request: auth_pb2.ListTokensRequest, context: Context
    ) -> auth_pb2.ListTokensResponse:
        records = await self._tokens.list_tokens(include_revoked=request.include_revoked)
        return auth_pb2.ListTokensResponse(tokens=[token_info(r) for r in records])

    @translate_errors
    async def WhoAmI(
        self, request: auth_pb2.WhoAmIRequest, context: Context
    ) -> auth_pb2.WhoAmIResponse:
        principal = current_principal()
        if principal is None:  # only without the auth interceptor
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "the call carries no token")
            raise AssertionError("unreachable: abort raises")  # pragma: no cover
        return auth_pb2.WhoAmIResponse(
            name=principal.name, role=ROLE_TO_PROTO[principal.role], token_id=principal.token_id
        )
