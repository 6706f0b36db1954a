"""CredentialService: admins set, rotate, delete and list credentials; no call returns a value.

Values arrive in requests and go straight to the encrypted store; nothing here logs a
request. Storing needs FLOWYARD_CREDENTIALS_KEY on the gateway (FAILED_PRECONDITION
without it); listing and deleting do not.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, NoReturn

import grpc
from flowyard.adapters.credentials import KEY_ENV, CredentialRecord, CredentialStore
from flowyard.domain.credentials import MAX_VALUE_BYTES, check_credential_name
from flowyard.v1 import credentials_pb2, credentials_pb2_grpc
from google.protobuf import timestamp_pb2

from flowyard_api_gateway.auth import caller_name
from flowyard_api_gateway.errors import InvalidRequestError, translate_errors

Context = grpc.aio.ServicerContext[Any, Any]
MAX_DESCRIPTION = 500


def _timestamp(when: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(when)
    return stamp


def credential_info(record: CredentialRecord) -> credentials_pb2.Credential:
    return credentials_pb2.Credential(
        name=record.name,
        description=record.description,
        version=record.version,
        created_at=_timestamp(record.created_at),
        created_by=record.created_by,
        updated_at=_timestamp(record.updated_at),
        updated_by=record.updated_by,
    )


def _check_name(name: str) -> None:
    problem = check_credential_name(name)
    if problem:
        raise InvalidRequestError("name", problem)


def _check_value(value: str) -> None:
    if not value:
        raise InvalidRequestError("value", "is required")
    if len(value.encode()) > MAX_VALUE_BYTES:
        raise InvalidRequestError("value", f"at most {MAX_VALUE_BYTES // 1024} KiB")


class CredentialServicer(credentials_pb2_grpc.CredentialServiceServicer):
    def __init__(self, credentials: CredentialStore) -> None:
        self._credentials = credentials

    async def _need_key(self, context: Context) -> None:
        if not self._credentials.can_encrypt:
            await _abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{KEY_ENV} is not set on the gateway: credentials cannot be stored",
            )

    @translate_errors
    async def SetCredential(
        self, request: credentials_pb2.SetCredentialRequest, context: Context
    ) -> credentials_pb2.SetCredentialResponse:
        _check_name(request.name)
        _check_value(request.value)
        if len(request.description) > MAX_DESCRIPTION:
            raise InvalidRequestError("description", f"at most {MAX_DESCRIPTION} characters")
        await self._need_key(context)
        record, created = await self._credentials.set(
            request.name, request.value, request.description, caller_name()
        )
        return credentials_pb2.SetCredentialResponse(
            credential=credential_info(record), created=created
        )

    @translate_errors
    async def RotateCredential(
        self, request: credentials_pb2.RotateCredentialRequest, context: Context
    ) -> credentials_pb2.Credential:
        _check_name(request.name)
        _check_value(request.value)
        await self._need_key(context)
        record = await self._credentials.rotate(request.name, request.value, caller_name())
        return credential_info(record)

    @translate_errors
    async def DeleteCredential(
        self, request: credentials_pb2.DeleteCredentialRequest, context: Context
    ) -> credentials_pb2.DeleteCredentialResponse:
        _check_name(request.name)
        await self._credentials.delete(request.name)
        return credentials_pb2.DeleteCredentialResponse()

    @translate_errors
    async def ListCredentials(
        self, request: credentials_pb2.ListCredentialsRequest, context: Context
    ) -> credentials_pb2.ListCredentialsResponse:
        records = await self._credentials.list_credentials()
        return credentials_pb2.ListCredentialsResponse(
            credentials=[credential_info(r) for r in records]
        )


async def _abort(context: Context, code: grpc.StatusCode, message: str) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("unreachable: abort raises")  # pragma: no cover
