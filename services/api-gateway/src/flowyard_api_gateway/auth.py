"""Every gateway call carries ``authorization: Bearer <token>``; its role must suffice.

The interceptor admits a call when the token is known and not revoked (else
UNAUTHENTICATED) and its role is at least the one :data:`METHOD_ROLES` names for the method
(else PERMISSION_DENIED, naming the role needed). A method missing from that table is
refused to everyone. Health and reflection are open.

The caller is then :func:`current_principal` for the servicers: they record its name as who
started a run or decided an approval, never a name the client sent.

Token lookups are cached for at most :data:`TOKEN_CACHE_SECONDS` (1 s), and the cache is
dropped whenever this gateway revokes a token: a revocation holds on the very next call
to this gateway, and on other gateway instances within that second.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextvars import ContextVar
from typing import Any, NoReturn

import grpc
from flowyard.adapters.tokens import TokenStore
from flowyard.domain.access import Principal, Role, TokenRecord, token_hash
from flowyard.errors import InfrastructureError

from flowyard_api_gateway.roles import METHOD_ROLES

TOKEN_CACHE_SECONDS = 1.0
TOKEN_CACHE_MAX_ENTRIES = 10_000
OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

Context = grpc.aio.ServicerContext[Any, Any]

_principal: ContextVar[Principal | None] = ContextVar("flowyard_principal", default=None)


def current_principal() -> Principal | None:
    """Who the current call comes from; None outside an authenticated call."""
    return _principal.get()


def caller_name(fallback: str = "anonymous") -> str:
    """The authenticated principal's name; ``fallback`` only when the call was not
    authenticated (servicers used without the interceptor, e.g. in-process tools)."""
    principal = _principal.get()
    return principal.name if principal is not None else fallback


class TokenAuthenticator:
    """Finds the record of a bearer token, caching active ones for ``ttl_seconds``."""

    def __init__(
        self,
        tokens: TokenStore,
        ttl_seconds: float = TOKEN_CACHE_SECONDS,
        max_entries: int = TOKEN_CACHE_MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._tokens = tokens
        self._ttl = ttl_seconds
        self._max_entries = max_entries
        self._clock = clock
        self._cache: dict[str, tuple[TokenRecord, float]] = {}

    async def lookup(self, token: str) -> TokenRecord | None:
        key = token_hash(token)
        now = self._clock()
        hit = self._cache.get(key)
        if hit is not None and hit[1] > now:
            return hit[0]
        record = await self._tokens.lookup(token)
        if record is not None and record.active and self._ttl > 0:
            if len(self._cache) >= self._max_entries:
                self._cache.clear()
            self._cache[key] = (record, now + self._ttl)
        else:
            self._cache.pop(key, None)
        return record

    def invalidate(self) -> None:
        """Forget every cached token (after a revocation)."""
        self._cache.clear()


def bearer_token(metadata: Iterable[tuple[str, Any]] | None) -> tuple[str, str]:
    """(token, "") from ``authorization: Bearer <token>``, or ("", the problem)."""
    values = [value for key, value in metadata or () if key.lower() == "authorization"]
    if not values:
        return "", (
            "missing bearer token: send 'authorization: Bearer <token>' metadata "
            "(flowyard CLI: $FLOWYARD_TOKEN or `token` in its config file)"
        )
    if len(values) > 1:
        return "", "send one authorization header, not several"
    value = values[0].decode() if isinstance(values[0], bytes) else str(values[0])
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return "", "the authorization header must be 'Bearer <token>'"
    return token.strip(), ""


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Admits each call by its bearer token and the method's role (see the module doc)."""

    def __init__(
        self, authenticator: TokenAuthenticator, method_roles: Mapping[str, Role] = METHOD_ROLES
    ) -> None:
        self._authenticator = authenticator
        self._roles = method_roles

    async def admit(self, method: str, context: Context) -> Principal:
        """The caller of ``method``, or the call is aborted with the reason."""
        token, problem = bearer_token(context.invocation_metadata())
        if problem:
            await _refuse(context, grpc.StatusCode.UNAUTHENTICATED, problem)
        try:
            record = await self._authenticator.lookup(token)
        except InfrastructureError as exc:
            await _refuse(context, grpc.StatusCode.UNAVAILABLE, f"cannot check the token: {exc}")
        if record is None:
            await _refuse(context, grpc.StatusCode.UNAUTHENTICATED, "unknown bearer token")
        if not record.active:
            await _refuse(
                context,
                grpc.StatusCode.UNAUTHENTICATED,
                f"token {record.token_id} of {record.name} was revoked",
            )
        needed = self._roles.get(method)
        if needed is None:
            await _refuse(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                f"{method} has no role in the gateway's table (roles.METHOD_ROLES); "
                "it is refused to everyone",
            )
        if record.role < needed:
            await _refuse(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                f"{needed.label} role required for {method}; you are {record.role.label}",
            )
        return record.principal

    # The aio stubs type handlers as the sync API's; the wrapped behaviours are coroutines.
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler: Any = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or method.startswith(OPEN_METHOD_PREFIXES):
            return handler
        admit = self.admit

        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: Context) -> Any:
                reset = _principal.set(await admit(method, context))
                try:
                    return await inner_uu(request, context)
                finally:
                    _principal.reset(reset)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream is not None:
            inner_us = handler.unary_stream

            async def unary_stream(request: Any, context: Context) -> AsyncIterator[Any]:
                # Each call runs in its own task: the value set here is this call's alone.
                _principal.set(await admit(method, context))
                async for item in inner_us(request, context):
                    yield item

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, handler.request_deserializer, handler.response_serializer
            )
        if handler.stream_unary is not None:
            inner_su = handler.stream_unary

            async def stream_unary(requests: Any, context: Context) -> Any:
                _principal.set(await admit(method, context))
                return await inner_su(requests, context)

            return grpc.stream_unary_rpc_method_handler(
                stream_unary, handler.request_deserializer, handler.response_serializer
            )
        inner_ss = handler.stream_stream

        async def stream_stream(requests: Any, context: Context) -> AsyncIterator[Any]:
            _principal.set(await admit(method, context))
            async for item in inner_ss(requests, context):
                yield item

        return grpc.stream_stream_rpc_method_handler(
            stream_stream, handler.request_deserializer, handler.response_serializer
        )


async def _refuse(context: Context, code: grpc.StatusCode, message: str) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("unreachable: abort raises")  # pragma: no cover
