"""``flowyard token issue|revoke|list`` (admin) and ``flowyard whoami`` (anyone)."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC

from google.protobuf import timestamp_pb2

from flowyard.cli import rpc
from flowyard.v1 import auth_pb2

ROLES = {
    "viewer": auth_pb2.ROLE_VIEWER,
    "operator": auth_pb2.ROLE_OPERATOR,
    "admin": auth_pb2.ROLE_ADMIN,
}


def role_label(role: auth_pb2.Role.ValueType) -> str:
    return auth_pb2.Role.Name(role).removeprefix("ROLE_").lower()


def _when(stamp: timestamp_pb2.Timestamp, is_set: bool) -> str:
    if not is_set:
        return "-"
    return stamp.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def render_tokens(tokens: list[auth_pb2.TokenInfo]) -> str:
    if not tokens:
        return "no tokens"
    header = ("ID", "NAME", "ROLE", "CREATED", "CREATED BY", "REVOKED")
    rows = [
        (
            t.token_id,
            t.name,
            role_label(t.role),
            _when(t.created_at, t.HasField("created_at")),
            t.created_by or "-",
            _when(t.revoked_at, t.HasField("revoked_at"))
            + (f" by {t.revoked_by}" if t.revoked_by else ""),
        )
        for t in tokens
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    )


def token_issue(args: argparse.Namespace, gateway: rpc.Gateway) -> int:
    response = gateway.tokens.IssueToken(
        auth_pb2.IssueTokenRequest(name=args.name, role=ROLES[args.role]),
        metadata=gateway.metadata,
        timeout=rpc.CALL_TIMEOUT_SECONDS,
    )
    print(response.token, flush=True)  # stdout: the token alone, for scripts
    info = response.info
    print(
        f"issued {'an' if info.role != auth_pb2.ROLE_VIEWER else 'a'} {role_label(info.role)} "
        f"token for {info.name} (id {info.token_id}); "
        "it is shown only this once",
        file=sys.stderr,
    )
    return 0


def token_revoke(args: argparse.Namespace, gateway: rpc.Gateway) -> int:
    response = gateway.tokens.RevokeToken(
        auth_pb2.RevokeTokenRequest(token_id_or_name=args.token),
        metadata=gateway.metadata,
        timeout=rpc.CALL_TIMEOUT_SECONDS,
    )
    if not response.revoked:
        print(f"nothing to revoke: {args.token}'s tokens are revoked already")
    for info in response.revoked:
        print(f"revoked token {info.token_id} of {info.name} ({role_label(info.role)})")
    return 0


def token_list(args: argparse.Namespace, gateway: rpc.Gateway) -> int:
    response = gateway.tokens.ListTokens(
        auth_pb2.ListTokensRequest(include_revoked=args.all),
        metadata=gateway.metadata,
        timeout=rpc.CALL_TIMEOUT_SECONDS,
    )
    print(render_tokens(list(response.tokens)))
    return 0


def whoami(args: argparse.Namespace, gateway: rpc.Gateway) -> int:
    response = gateway.tokens.WhoAmI(
        auth_pb2.WhoAmIRequest(), metadata=gateway.metadata, timeout=rpc.CALL_TIMEOUT_SECONDS
    )
    print(f"{response.name} ({role_label(response.role)}, token {response.token_id})")
    return 0


def add_parsers(
    groups: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    token = groups.add_parser("token", help="issue, revoke and list access tokens (admin)")
    tk = token.add_subparsers(dest="command", required=True)
    issue = tk.add_parser(
        "issue", parents=[common], help="issue a token and print it (shown only once)"
    )
    issue.add_argument("name", metavar="NAME", help="the principal: 1-64 of A-Z a-z 0-9 _ - . @")
    issue.add_argument("--role", required=True, choices=list(ROLES), help="what it may do")
    issue.set_defaults(handler=token_issue)
    revoke = tk.add_parser(
        "revoke", parents=[common], help="revoke a token by id, or all of a principal's by name"
    )
    revoke.add_argument("token", metavar="NAME|ID")
    revoke.set_defaults(handler=token_revoke)
    listing = tk.add_parser("list", parents=[common], help="list tokens (never their values)")
    listing.add_argument("--all", action="store_true", help="include revoked tokens")
    listing.set_defaults(handler=token_list)
    who = groups.add_parser("whoami", parents=[common], help="the principal and role of your token")
    who.set_defaults(handler=whoami)
