"""The gateway connection: address, bearer token, stubs, and gRPC errors as user text."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import cast

import grpc

from flowyard.cli.config import CliConfig
from flowyard.v1 import auth_pb2_grpc, credentials_pb2_grpc, gateway_pb2_grpc

try:  # grpcio-status gives the google.rpc.BadRequest details; without it, details text only.
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status
except ImportError:  # pragma: no cover - grpcio-status is a dependency of flowyard
    rpc_status = None
    error_details_pb2 = None

DEFAULT_ADDRESS = "127.0.0.1:50051"
ADDRESS_ENV = "FLOWYARD_GRPC_ADDR"
TOKEN_ENV = "FLOWYARD_TOKEN"
CALL_TIMEOUT_SECONDS = 30.0
_DETAILS_KEY = "grpc-status-details-bin"

EXIT_ERROR = 1
EXIT_UNREACHABLE = 3

Metadata = tuple[tuple[str, str], ...]


def server_address(
    flag: str | None, environ: Mapping[str, str] = os.environ, config: CliConfig | None = None
) -> str:
    """``--server``, else ``$FLOWYARD_GRPC_ADDR``, else the config file's ``server``,
    else 127.0.0.1:50051."""
    return flag or environ.get(ADDRESS_ENV) or (config.server if config else "") or DEFAULT_ADDRESS


def call_metadata(
    environ: Mapping[str, str] = os.environ, config: CliConfig | None = None
) -> Metadata:
    """``authorization: Bearer <token>`` with ``$FLOWYARD_TOKEN``, else the config file's
    ``token``; nothing when neither is set (the gateway then answers UNAUTHENTICATED)."""
    token = environ.get(TOKEN_ENV, "").strip() or (config.token if config else "")
    return (("authorization", f"Bearer {token}"),) if token else ()


@dataclass(frozen=True)
class Gateway:
    address: str
    metadata: Metadata
    workflows: gateway_pb2_grpc.WorkflowServiceStub
    runs: gateway_pb2_grpc.RunServiceStub
    tokens: auth_pb2_grpc.TokenServiceStub
    credentials: credentials_pb2_grpc.CredentialServiceStub
    control: gateway_pb2_grpc.RunControlServiceStub


@contextmanager
def connect(address: str, metadata: Metadata) -> Iterator[Gateway]:
    """A synchronous channel to the gateway, closed on exit. Connects on the first call."""
    with grpc.insecure_channel(address) as channel:
        yield Gateway(
            address=address,
            metadata=metadata,
            workflows=gateway_pb2_grpc.WorkflowServiceStub(channel),
            runs=gateway_pb2_grpc.RunServiceStub(channel),
            tokens=auth_pb2_grpc.TokenServiceStub(channel),
            credentials=credentials_pb2_grpc.CredentialServiceStub(channel),
            control=gateway_pb2_grpc.RunControlServiceStub(channel),
        )


# --- errors ----------------------------------------------------------------------------


def field_violations(exc: grpc.RpcError) -> list[tuple[str, str]]:
    """(field, description) pairs of a google.rpc.BadRequest in the error's status."""
    if rpc_status is None or not isinstance(exc, grpc.Call):
        return []
    try:
        status = rpc_status.from_call(exc)
    except ValueError:
        return []
    if status is None:
        return []
    found: list[tuple[str, str]] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            request = error_details_pb2.BadRequest()
            detail.Unpack(request)
            found.extend((v.field, v.description) for v in request.field_violations)
    return found


def _violation_text(field: str, description: str) -> str:
    # The gateway often repeats the field in the description ("workflow: is required").
    if not field or description.startswith(f"{field}:"):
        return description
    return f"{field}: {description}"


def render_rpc_error(code: str, details: str, violations: Sequence[tuple[str, str]] = ()) -> str:
    """``error: NOT_FOUND: run 'x' not found``, then one line per field violation.

    When the message merely lists the violations again, only its lead-in is kept.
    """
    lines = [_violation_text(f, d) for f, d in violations]
    message = details.strip() or "(no details)"
    listed = "; ".join(lines)
    if lines and message.endswith(listed):
        message = message[: -len(listed)].rstrip(": ;") or "invalid request"
    return "\n".join([f"error: {code}: {message}", *(f"  {line}" for line in lines)])


def is_unreachable(exc: grpc.RpcError) -> bool:
    """UNAVAILABLE raised by the client itself (no server-sent status): nobody answered."""
    if exc.code() is not grpc.StatusCode.UNAVAILABLE:
        return False
    # Each item is a (key, value) pair; the stubs call it an opaque _Metadatum.
    trailing = cast(tuple[tuple[str, bytes], ...], exc.trailing_metadata() or ())
    return not any(key == _DETAILS_KEY for key, _ in trailing)


def describe_rpc_error(exc: grpc.RpcError, address: str) -> tuple[int, str]:
    """Exit code and message for a failed call: 3 when the gateway was unreachable, else 1."""
    code = exc.code()
    code_name = code.name if isinstance(code, grpc.StatusCode) else str(code)
    details = exc.details() or ""
    if is_unreachable(exc):
        return EXIT_UNREACHABLE, (
            f"error: cannot reach the Flowyard gateway at {address}: {details or code_name}\n"
            f"  (is it running? choose another with --server or ${ADDRESS_ENV})"
        )
    violations = field_violations(exc) if code is grpc.StatusCode.INVALID_ARGUMENT else []
    message = render_rpc_error(code_name, details, violations)
    hint = _ACCESS_HINTS.get(code) if isinstance(code, grpc.StatusCode) else None
    return EXIT_ERROR, f"{message}\n  ({hint})" if hint else message


_ACCESS_HINTS = {
    grpc.StatusCode.UNAUTHENTICATED: (
        f"set ${TOKEN_ENV}, or `token` in the config file (~/.config/flowyard/config.toml "
        "or $FLOWYARD_CONFIG); an admin issues tokens with `flowyard token issue`"
    ),
    grpc.StatusCode.PERMISSION_DENIED: (
        "ask an admin for a token with that role: flowyard token issue NAME --role ROLE"
    ),
}
