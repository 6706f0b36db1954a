"""Async gRPC clients of the gateway with a bearer token on every call.

``bearer_channel(address, token)`` is an insecure channel (as the gateway serves) whose
calls carry ``authorization: Bearer <token>`` unless a call sets its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

AUTHORIZATION = "authorization"


def bearer_metadata(token: str) -> tuple[tuple[str, str]]:
    return ((AUTHORIZATION, f"Bearer {token}"),)


class _BearerToken:
    def __init__(self, token: str) -> None:
        self._header = bearer_metadata(token)[0]

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        if metadata.get(AUTHORIZATION) is None:
            metadata.add(*self._header)
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )


class _UnaryUnary(_BearerToken, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        return await continuation(self._details(client_call_details), request)


class _UnaryStream(_BearerToken, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        return await continuation(self._details(client_call_details), request)


def bearer_interceptors(token: str) -> list[grpc.aio.ClientInterceptor]:
    return [_UnaryUnary(token), _UnaryStream(token)]


def bearer_channel(address: str, token: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address, interceptors=bearer_interceptors(token))
