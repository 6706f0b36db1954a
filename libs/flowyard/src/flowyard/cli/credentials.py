"""``flowyard credential set|rotate|delete|list`` (admin).

A value is never a command-line argument (shell history, ``ps``): it is read from
``--from-file FILE``, from ``--from-env VAR``, or from stdin (prompted, unechoed, on a
terminal). One trailing newline is dropped.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from datetime import UTC
from pathlib import Path

from flowyard.cli import rpc
from flowyard.v1 import credentials_pb2

EXIT_USAGE = 2


class ValueSourceError(Exception):
    """The value could not be read; printed as ``error: ...`` with exit code 2."""


def read_value(args: argparse.Namespace) -> str:
    if args.from_file:
        try:
            text = Path(args.from_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueSourceError(f"--from-file {args.from_file}: {exc.strerror or exc}") from exc
    elif args.from_env:
        if args.from_env not in os.environ:
            raise ValueSourceError(f"--from-env: ${args.from_env} is not set")
        text = os.environ[args.from_env]
    elif sys.stdin.isatty():
        text = getpass.getpass(f"value of {args.name} (not echoed): ")
    else:
        text = sys.stdin.read()
    value = text.removesuffix("\n").removesuffix("\r")
    if not value:
        raise ValueSourceError("the value is empty")
    return value


def _version(credential: credentials_pb2.Credential) -> str:
    when = credential.updated_at.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    return f"version {credential.version}, {when} by {credential.updated_by or '-'}"


def _value_or_usage_error(args: argparse.Namespace) -> str | None:
    try:
        return read_value(args)
    except ValueSourceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def credential_set(args: argparse.Namespace, gateway: rpc.Gateway) -> int:
    value = _value_or_usage_error(args)
    if value is None:
        return EXIT_USAGE
    response = gateway.credentials.SetCredential(
        credentials_pb2.SetCredentialRequest(
            name=args.name, value=value, description=args.description or ""
        ),
        metadata=gateway.metadata,
        timeout=rpc.CALL_TIMEOUT_SECONDS,
    )
    verb = "created" if response.created else "replaced the value of"
    print(f"{verb} credential {args.name} ({_version(response.credential)})")
    return 0


def credential_rotate(args: argparse.Namespace, gateway: rpc.Gateway) -> int:
    value = _value_or_usage_error(args)
    if value is None:
        return EXIT_USAGE
    credential = gateway.credentials.RotateCredential(
        credentials_pb2.RotateCredentialRequest(name=args.name, value=value),
        metadata=gateway.metadata,
        timeout=rpc.CALL_TIMEOUT_SECONDS,
    )
    print(f"rotated credential {args.name} ({_version(credential)}); the next task uses it")
    return 0


def credential_delete(args: argparse.Namespace, gateway: rpc.Gateway) -> int:
    gateway.credentials.DeleteCredential(
        credentials_pb2.DeleteCredentialRequest(name=args.name),
        metadata=gateway.metadata,
        timeout=rpc.CALL_TIMEOUT_SECONDS,
    )
    print(f"deleted credential {args.name}")
    return 0


def credential_list(args: argparse.Namespace, gateway: rpc.Gateway) -> int:
    response = gateway.credentials.ListCredentials(
        credentials_pb2.ListCredentialsRequest(),
        metadata=gateway.metadata,
        timeout=rpc.CALL_TIMEOUT_SECONDS,
    )
    if not response.credentials:
        print("no credentials")
        return 0
    rows = [("NAME", "VERSION", "UPDATED", "BY", "DESCRIPTION")] + [
        (
            c.name,
            str(c.version),
            c.updated_at.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%SZ"),
            c.updated_by or "-",
            c.description,
        )
        for c in response.credentials
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _with_value_source(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--from-file", metavar="FILE", help="read the value from FILE")
    source.add_argument("--from-env", metavar="VAR", help="read the value from $VAR")


def add_parsers(
    groups: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    credential = groups.add_parser(
        "credential", help="store secrets nodes use as {{ credentials.NAME }} (admin)"
    )
    cr = credential.add_subparsers(dest="command", required=True)
    put = cr.add_parser(
        "set", parents=[common], help="create a credential or replace its value (stdin)"
    )
    put.add_argument("name", metavar="NAME", help="letters, digits and '_'")
    put.add_argument("--description", help="what it is for")
    _with_value_source(put)
    put.set_defaults(handler=credential_set)
    rotate = cr.add_parser(
        "rotate", parents=[common], help="replace the value of an existing credential"
    )
    rotate.add_argument("name", metavar="NAME")
    _with_value_source(rotate)
    rotate.set_defaults(handler=credential_rotate)
    delete = cr.add_parser("delete", parents=[common], help="delete a credential")
    delete.add_argument("name", metavar="NAME")
    delete.set_defaults(handler=credential_delete)
    listing = cr.add_parser("list", parents=[common], help="list credentials (never values)")
    listing.set_defaults(handler=credential_list)
