"""Translate Flowyard errors into gRPC statuses at the edge.

DefinitionError -> INVALID_ARGUMENT with a google.rpc.BadRequest listing each problem
(field = the node, edge or field named); DecodeError (a request value that is not JSON, e.g.
a NaN in a ``Value``) -> INVALID_ARGUMENT; NotFoundError -> NOT_FOUND; AlreadyExistsError ->
ALREADY_EXISTS; WorkflowStateError -> FAILED_PRECONDITION; ConflictError -> ABORTED;
InfrastructureError -> UNAVAILABLE. Anything else is a bug: INTERNAL, logged.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from flowyard.errors import (
    ConflictError,
    DecodeError,
    DefinitionError,
    FlowyardError,
    InfrastructureError,
    InvalidTransitionError,
    NotFoundError,
    WorkflowStateError,
)
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")


class InvalidRequestError(FlowyardError):
    """A request field is missing or malformed; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class AlreadyExistsError(FlowyardError):
    """What the request would create exists already (e.g. a workflow name)."""


def status_for(exc: Exception) -> status_pb2.Status:
    if isinstance(exc, DefinitionError):
        details = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=p.where, description=p.message)
                for p in exc.problems
            ]
        )
        return _status(code_pb2.INVALID_ARGUMENT, str(exc), details)
    if isinstance(exc, InvalidRequestError):
        details = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=exc.field, description=str(exc))
            ]
        )
        return _status(code_pb2.INVALID_ARGUMENT, str(exc), details)
    if isinstance(exc, DecodeError):
        return _status(code_pb2.INVALID_ARGUMENT, f"the request cannot be read: {exc}")
    if isinstance(exc, NotFoundError):
        return _status(code_pb2.NOT_FOUND, str(exc))
    if isinstance(exc, AlreadyExistsError):
        return _status(code_pb2.ALREADY_EXISTS, str(exc))
    if isinstance(exc, WorkflowStateError | InvalidTransitionError):
        return _status(code_pb2.FAILED_PRECONDITION, str(exc))
    if isinstance(exc, ConflictError):
        return _status(code_pb2.ABORTED, str(exc))
    if isinstance(exc, InfrastructureError):
        return _status(code_pb2.UNAVAILABLE, str(exc))
    log.exception("unexpected error", exc_info=exc)
    return _status(code_pb2.INTERNAL, "internal error; see the gateway log")


def _status(code: int, message: str, details: Any = None) -> status_pb2.Status:
    status = status_pb2.Status(code=code, message=message)
    if details is not None:
        packed = any_pb2.Any()
        packed.Pack(details)
        status.details.append(packed)
    return status


def translate_errors(
    method: Callable[[Any, Req, grpc.aio.ServicerContext[Req, Resp]], Awaitable[Resp]],
) -> Callable[[Any, Req, grpc.aio.ServicerContext[Req, Resp]], Awaitable[Resp]]:
    @functools.wraps(method)
    async def wrapper(
        self: Any, request: Req, context: grpc.aio.ServicerContext[Req, Resp]
    ) -> Resp:
        try:
            return await method(self, request, context)
        except Exception as exc:
            if isinstance(exc, grpc.aio.AbortError):
                raise
            await context.abort_with_status(rpc_status.to_status(status_for(exc)))
            raise  # unreachable: abort raises

    return wrapper


def translate_stream_errors(
    method: Callable[[Any, Req, grpc.aio.ServicerContext[Req, Resp]], AsyncIterator[Resp]],
) -> Callable[[Any, Req, grpc.aio.ServicerContext[Req, Resp]], AsyncIterator[Resp]]:
    @functools.wraps(method)
    async def wrapper(
        self: Any, request: Req, context: grpc.aio.ServicerContext[Req, Resp]
    ) -> AsyncIterator[Resp]:
        try:
            async for item in method(self, request, context):
                yield item
        except Exception as exc:
            if isinstance(exc, grpc.aio.AbortError):
                raise
            await context.abort_with_status(rpc_status.to_status(status_for(exc)))

    return wrapper
