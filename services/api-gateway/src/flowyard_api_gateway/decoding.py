"""Request bytes are parsed inside the call, so a malformed message is the caller's error.

Left to grpc, a request that is not a valid protobuf message of the method's type fails
in the framework's deserialisation step and the caller gets ``UNKNOWN`` ("Unexpected
DecodeError"), as if the gateway had a bug. :class:`RequestDecodingInterceptor` takes
deserialisation over: the handler receives the raw bytes, parses them itself and aborts
with ``INVALID_ARGUMENT`` naming the expected message type. Being the innermost
interceptor, it parses only after the call was admitted (authentication and roles): an
unauthenticated caller cannot make the gateway parse anything.

The size limit (``grpc.max_receive_message_length``, see ``__main__.MAX_MESSAGE_BYTES``)
is enforced by grpc before any of this: an oversized message gets ``RESOURCE_EXHAUSTED``.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn

import grpc
from google.protobuf.message import DecodeError

Context = grpc.aio.ServicerContext[Any, Any]
Decode = Callable[[bytes], Any]


def _type_name(decode: Decode) -> str:
    owner = getattr(decode, "__self__", None)  # Message.FromString is a bound classmethod
    descriptor = getattr(owner, "DESCRIPTOR", None)
    return str(getattr(descriptor, "full_name", "the method's request message"))


async def _reject(context: Context, decode: Decode, exc: Exception) -> NoReturn:
    await context.abort(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"the request is not a valid {_type_name(decode)} message: {exc}",
    )
    raise AssertionError("unreachable: abort raises")  # pragma: no cover


async def _decode(decode: Decode, raw: bytes, context: Context) -> Any:
    try:
        return decode(raw)
    except (DecodeError, ValueError, TypeError, RecursionError) as exc:
        await _reject(context, decode, exc)


async def _decode_each(
    decode: Decode, raws: AsyncIterator[bytes], context: Context
) -> AsyncIterator[Any]:
    async for raw in raws:
        yield await _decode(decode, raw, context)


class RequestDecodingInterceptor(grpc.aio.ServerInterceptor):
    """Parses requests in the call: malformed bytes get ``INVALID_ARGUMENT``."""

    # The aio stubs type handlers as the sync API's; the wrapped behaviours are coroutines.
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler: Any = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        decode: Decode = handler.request_deserializer
        serialize = handler.response_serializer

        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary
            if not inspect.iscoroutinefunction(inner_uu):
                return handler

            async def unary_unary(raw: bytes, context: Context) -> Any:
                return await inner_uu(await _decode(decode, raw, context), context)

            return grpc.unary_unary_rpc_method_handler(unary_unary, None, serialize)
        if handler.unary_stream is not None:
            inner_us = handler.unary_stream
            if not inspect.isasyncgenfunction(inner_us):
                return handler

            async def unary_stream(raw: bytes, context: Context) -> AsyncIterator[Any]:
                async for item in inner_us(await _decode(decode, raw, context), context):
                    yield item

            return grpc.unary_stream_rpc_method_handler(unary_stream, None, serialize)
        if handler.stream_unary is not None:
            inner_su = handler.stream_unary
            if not inspect.iscoroutinefunction(inner_su):
                return handler

            async def stream_unary(raws: AsyncIterator[bytes], context: Context) -> Any:
                return await inner_su(_decode_each(decode, raws, context), context)

            return grpc.stream_unary_rpc_method_handler(stream_unary, None, serialize)
        inner_ss = handler.stream_stream
        if not inspect.isasyncgenfunction(inner_ss):
            return handler

        async def stream_stream(raws: AsyncIterator[bytes], context: Context) -> AsyncIterator[Any]:
            async for item in inner_ss(_decode_each(decode, raws, context), context):
                yield item

        return grpc.stream_stream_rpc_method_handler(stream_stream, None, serialize)
