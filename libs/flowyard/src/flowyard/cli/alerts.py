"""``flowyard alert ...``: alert policies, allowed email domains, the Slack workspace, run
subscriptions and the activity log (AlertService). Commands open their own channel to the
gateway's address and send the same bearer token as every other command.

    flowyard alert domains --add example.com
    flowyard alert policy set billing-ops --type billing --email ops@example.com \\
        --slack '#billing' --kinds failed,runtime,query --runtime-threshold 900
    flowyard alert policy list
    flowyard alert subscribe RUN_ID --email me@example.com
    flowyard alert log --run RUN_ID --status failed
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC
from typing import Any

import grpc
from google.protobuf import json_format, timestamp_pb2

from flowyard.cli import rpc
from flowyard.v1 import alerts_pb2, alerts_pb2_grpc

KINDS = {
    "failed": alerts_pb2.ALERT_KIND_FAILED,
    "succeeded": alerts_pb2.ALERT_KIND_SUCCEEDED,
    "runtime": alerts_pb2.ALERT_KIND_RUNTIME,
    "query": alerts_pb2.ALERT_KIND_QUERY,
    "stopped": alerts_pb2.ALERT_KIND_STOPPED,
    "upstream": alerts_pb2.ALERT_KIND_UPSTREAM,
}
STATUSES = {
    "sent": alerts_pb2.ALERT_DELIVERY_STATUS_SENT,
    "retrying": alerts_pb2.ALERT_DELIVERY_STATUS_RETRYING,
    "failed": alerts_pb2.ALERT_DELIVERY_STATUS_FAILED,
}
CHANNELS = {"email": alerts_pb2.ALERT_CHANNEL_EMAIL, "slack": alerts_pb2.ALERT_CHANNEL_SLACK}
_KIND_LABELS = {v: k for k, v in KINDS.items()}
_STATUS_LABELS = {v: k for k, v in STATUSES.items()}
_CHANNEL_LABELS = {v: k for k, v in CHANNELS.items()}


class AlertUsageError(Exception):
    """Bad arguments; printed as ``error: ...`` with exit code 2."""


@contextmanager
def alert_stub(gateway: rpc.Gateway) -> Iterator[alerts_pb2_grpc.AlertServiceStub]:
    with grpc.insecure_channel(gateway.address) as channel:
        yield alerts_pb2_grpc.AlertServiceStub(channel)


def _out(text: str) -> None:
    print(text, flush=True)


def _user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return ""


def _when(stamp: timestamp_pb2.Timestamp) -> str:
    if not stamp.seconds and not stamp.nanos:
        return "-"
    return stamp.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    )


def parse_kinds(values: Sequence[str] | None) -> list[alerts_pb2.AlertKind.ValueType]:
    """``--kinds failed,runtime`` (repeatable) as protobuf kinds; unknown names refused."""
    kinds: list[alerts_pb2.AlertKind.ValueType] = []
    for value in values or ():
        for name in filter(None, (part.strip().lower() for part in value.split(","))):
            if name not in KINDS:
                raise AlertUsageError(
                    f"--kinds: unknown kind {name!r} (choose from {', '.join(KINDS)})"
                )
            if KINDS[name] not in kinds:
                kinds.append(KINDS[name])
    return kinds


def kind_label(kind: alerts_pb2.AlertKind.ValueType) -> str:
    return _KIND_LABELS.get(kind, "?")


# --- rendering -------------------------------------------------------------------------


def render_policies(policies: Sequence[alerts_pb2.AlertPolicy]) -> str:
    if not policies:
        return "no alert policies"
    rows = []
    for p in policies:
        covers = p.workflow_type or "*"
        if p.workflow:
            covers = f"{covers} / {p.workflow}"
        kinds = ",".join(kind_label(k) for k in p.kinds) or "default (all but succeeded)"
        recipients = ", ".join([*p.emails, *p.slack_channels])
        runtime = f"{p.runtime_threshold_seconds:g}s" if p.runtime_threshold_seconds else "-"
        rows.append((p.name, covers, kinds, runtime, recipients))
    return table(("NAME", "TYPE / WORKFLOW", "KINDS", "RUNTIME", "RECIPIENTS"), rows)


def render_settings(settings: alerts_pb2.AlertSettings) -> str:
    domains = ", ".join(settings.allowed_domains) or "(none: no email alerts can be sent)"
    slack = settings.slack
    token = "configured" if slack.token_configured else "NOT configured"
    if slack.token_credential:
        token += f" (credential {slack.token_credential})"
    workspace = slack.workspace or "-"
    return "\n".join(
        [
            f"allowed email domains: {domains}",
            f"slack: workspace {workspace}, api {slack.api_url or '-'}, bot token {token} "
            f"(from {slack.source or 'environment'})",
        ]
    )


def render_subscriptions(subscriptions: Sequence[alerts_pb2.RunSubscription]) -> str:
    if not subscriptions:
        return "no subscriptions"
    rows = [
        (
            s.subscription_id,
            s.subscriber or "-",
            ", ".join([*s.emails, *s.slack_channels]),
            _when(s.created_at),
        )
        for s in subscriptions
    ]
    return table(("ID", "SUBSCRIBER", "RECIPIENTS", "CREATED"), rows)


def render_activity(attempts: Sequence[alerts_pb2.AlertAttempt]) -> str:
    if not attempts:
        return "no alert activity"
    rows = [
        (
            _when(a.at),
            kind_label(a.kind),
            a.run_id,
            _CHANNEL_LABELS.get(a.channel, "?"),
            a.recipient,
            _STATUS_LABELS.get(a.status, "?"),
            str(a.attempt),
            a.error or "",
        )
        for a in attempts
    ]
    return table(
        ("TIME", "KIND", "RUN", "CHANNEL", "RECIPIENT", "STATUS", "ATTEMPT", "ERROR"), rows
    )


# --- commands --------------------------------------------------------------------------


def _call(gateway: rpc.Gateway, method: str, request: Any) -> Any:
    with alert_stub(gateway) as stub:
        return getattr(stub, method)(
            request, metadata=gateway.metadata, timeout=rpc.CALL_TIMEOUT_SECONDS
        )


def policy_set(args: argparse.Namespace, gateway: rpc.Gateway) -> int:
    policy = alerts_pb2.AlertPolicy(
        name=args.name,
        workflow_type=args.type or "",
        workflow=args.workflow or "",
        emails=args.email or [],
        slack_channels=args.slack or [],
        kinds=parse_kinds(args.kinds),
        runtime_threshold_seconds=args.runtime_threshold or 0.0,
        updated_by=_user(),
    )
    stored = _call(gateway, "SetAlertPolicy", alerts_pb2.SetAlertPolicyRequest(policy=policy))
    _out(f"alert policy {stored.name} saved")
    _out(render_policies([stored]))
    return 0


def policy_list(args: argparse.Namespace, gateway: rpc.Gateway) -> int:
    response = _call(
        gateway,
        "ListAlertPolicies",
        alerts_pb2.ListAlertPoliciesRequest(
            workflow_type=args.type or "", workflow=args.workflow or ""
        ),
    )
    if args.output == "json":
        _out(json_format.MessageToJson(response))
    else:
        _out(render_policies(response.policies))
    return 0


def policy_delete(args: argparse.Namespace, gateway: rpc.Gateway) -> int:
    _call(gateway, "DeleteAlertPolicy", alerts_pb2.DeleteAlertPolicyRequest(name=args.name))
    _out(f"alert policy {args.name} deleted")
    return 0


def domains(args: argparse.Namespace, gateway: rpc.Gateway) -> int:
    if args.add or args.remove:
        settings = _call(
            gateway,
            "SetAllowedDomains",
            alerts_pb2.SetAllowedDomainsRequest(add=args.add or [], remove=args.remove or []),
        )
    else:
        settings = _call(gateway, "GetAlertSettings", alerts_pb2.GetAlertSettingsRequest())
    _out(render_settings(settings))
    return 0


def slack(args: argparse.Namespace, gateway: rpc.Gateway) -> int:
    token = ""
    if args.token_stdin:
        token = sys.stdin.readline().strip()
        if not token:
            raise AlertUsageError("--token-stdin: no token on standard input")
    elif args.token_env:
        token = os.environ.get(args.token_env, "").strip()
        if not token:
            raise AlertUsageError(f"--token-env: ${args.token_env} is not set")
    changing = args.clear or token or args.token_credential or args.workspace or args.api_url
    if not changing:
        settings = _call(gateway, "GetAlertSettings", alerts_pb2.GetAlertSettingsRequest())
    else:
        settings = _call(
            gateway,
            "SetSlackSettings",
            alerts_pb2.SetSlackSettingsRequest(
                workspace=args.workspace or "",
                bot_token=token,
                bot_token_credential=args.token_credential or "",
                api_url=args.api_url or "",
                clear=args.clear,
            ),
        )
    _out(render_settings(settings))
    return 0


def subscribe(args: argparse.Namespace, gateway: rpc.Gateway) -> int:
    if not args.email and not args.slack:
        raise AlertUsageError("name at least one --email or --slack recipient")
    subscription = _call(
        gateway,
        "SubscribeToRun",
        alerts_pb2.SubscribeToRunRequest(
            run_id=args.run_id,
            emails=args.email or [],
            slack_channels=args.slack or [],
            subscriber=_user(),
        ),
    )
    recipients = ", ".join([*subscription.emails, *subscription.slack_channels])
    _out(f"subscribed {recipients} to run {subscription.run_id}")
    _out(f"subscription {subscription.subscription_id}: failed, succeeded, runtime, query, stopped")
    return 0


def subscriptions(args: argparse.Namespace, gateway: rpc.Gateway) -> int:
    response = _call(
        gateway, "ListRunSubscriptions", alerts_pb2.ListRunSubscriptionsRequest(run_id=args.run_id)
    )
    _out(render_subscriptions(response.subscriptions))
    return 0


def unsubscribe(args: argparse.Namespace, gateway: rpc.Gateway) -> int:
    _call(
        gateway,
        "UnsubscribeFromRun",
        alerts_pb2.UnsubscribeFromRunRequest(subscription_id=args.subscription_id),
    )
    _out(f"subscription {args.subscription_id} removed")
    return 0


def log(args: argparse.Namespace, gateway: rpc.Gateway) -> int:
    request = alerts_pb2.ListAlertActivityRequest(
        run_id=args.run or "",
        workflow=args.workflow or "",
        recipient=args.recipient or "",
        limit=args.limit,
        page_token=args.page_token or "",
    )
    if args.kind:
        request.kind = KINDS[args.kind]
    if args.status:
        request.status = STATUSES[args.status]
    if args.channel:
        request.channel = CHANNELS[args.channel]
    response = _call(gateway, "ListAlertActivity", request)
    if args.output == "json":
        _out(json_format.MessageToJson(response))
        return 0
    _out(render_activity(response.attempts))
    if response.next_page_token:
        print(f"more: --page-token {response.next_page_token}", file=sys.stderr, flush=True)
    return 0


def _guarded(handler: Any) -> Any:
    def run(args: argparse.Namespace, gateway: rpc.Gateway) -> int:
        try:
            code: int = handler(args, gateway)
            return code
        except AlertUsageError as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            return 2

    return run


# --- the parser ------------------------------------------------------------------------


def add_alert_commands(groups: Any, common: argparse.ArgumentParser) -> None:
    alert = groups.add_parser(
        "alert", help="alert policies, allowed domains, Slack, run subscriptions, activity log"
    )
    commands = alert.add_subparsers(dest="command", required=True)

    policy = commands.add_parser("policy", help="manage alert policies (admin to change)")
    policies = policy.add_subparsers(dest="policy_command", required=True)
    put = policies.add_parser(
        "set",
        parents=[common],
        help="create or replace a policy",
        description="Recipients of a policy get the listed kinds of alert for every run of "
        "the workflow type (or the one workflow). Emails must be in an allowed domain "
        "(flowyard alert domains); Slack recipients must be #channels.",
    )
    put.add_argument("name", help="the policy's name (unique)")
    put.add_argument("--type", metavar="WORKFLOW_TYPE", help="runs of workflows of this type")
    put.add_argument("--workflow", metavar="NAME", help="only runs of this workflow")
    put.add_argument("--email", action="append", metavar="ADDRESS", help="repeat for several")
    put.add_argument("--slack", action="append", metavar="#CHANNEL", help="repeat for several")
    put.add_argument(
        "--kinds",
        action="append",
        metavar="KIND[,KIND]",
        help=f"of {', '.join(KINDS)}; default: all but succeeded",
    )
    put.add_argument(
        "--runtime-threshold",
        type=float,
        metavar="SECONDS",
        help="alert when a run is still running this long after it started",
    )
    put.set_defaults(handler=_guarded(policy_set))
    listing = policies.add_parser("list", parents=[common], help="list policies")
    listing.add_argument("--type", metavar="WORKFLOW_TYPE")
    listing.add_argument("--workflow", metavar="NAME")
    listing.add_argument("-o", "--output", choices=["table", "json"], default="table")
    listing.set_defaults(handler=policy_list)
    delete = policies.add_parser("delete", parents=[common], help="delete a policy")
    delete.add_argument("name")
    delete.set_defaults(handler=policy_delete)

    doms = commands.add_parser(
        "domains",
        parents=[common],
        help="show or change the email domains alerts may go to",
    )
    doms.add_argument("--add", action="append", metavar="DOMAIN", help="repeat for several")
    doms.add_argument("--remove", action="append", metavar="DOMAIN", help="repeat for several")
    doms.set_defaults(handler=domains)

    sl = commands.add_parser(
        "slack",
        parents=[common],
        help="show or set the Slack workspace alerts post to (one per installation)",
        description="Without options, shows the settings. The bot token (xoxb-...) is read "
        "from standard input or an environment variable, never from the command line, and "
        "is stored encrypted as the credential alerts_slack_bot_token (never shown again); "
        "or name a credential that holds it.",
    )
    sl.add_argument("--workspace", metavar="NAME")
    given = sl.add_mutually_exclusive_group()
    given.add_argument("--token-stdin", action="store_true", help="read the bot token from stdin")
    given.add_argument("--token-env", metavar="VAR", help="read the bot token from $VAR")
    given.add_argument(
        "--token-credential",
        metavar="NAME",
        help="use the bot token stored as credential NAME (flowyard credential set)",
    )
    sl.add_argument("--api-url", metavar="URL", help="default https://slack.com/api")
    sl.add_argument("--clear", action="store_true", help="forget the stored workspace")
    sl.set_defaults(handler=_guarded(slack))

    sub = commands.add_parser(
        "subscribe",
        parents=[common],
        help="get failed, succeeded, runtime, query and stopped alerts of one run",
    )
    sub.add_argument("run_id", metavar="RUN_ID")
    sub.add_argument("--email", action="append", metavar="ADDRESS")
    sub.add_argument("--slack", action="append", metavar="#CHANNEL")
    sub.set_defaults(handler=_guarded(subscribe))
    subs = commands.add_parser("subscriptions", parents=[common], help="a run's subscriptions")
    subs.add_argument("run_id", metavar="RUN_ID")
    subs.set_defaults(handler=subscriptions)
    unsub = commands.add_parser("unsubscribe", parents=[common], help="remove a subscription")
    unsub.add_argument("subscription_id", metavar="SUBSCRIPTION_ID")
    unsub.set_defaults(handler=unsubscribe)

    activity = commands.add_parser(
        "log", parents=[common], help="every alert delivery attempt, newest first"
    )
    activity.add_argument("--run", metavar="RUN_ID")
    activity.add_argument("--kind", choices=list(KINDS))
    activity.add_argument("--status", choices=list(STATUSES))
    activity.add_argument("--channel", choices=list(CHANNELS))
    activity.add_argument("--workflow", metavar="NAME")
    activity.add_argument("--recipient", metavar="ADDRESS_OR_CHANNEL")
    activity.add_argument("--limit", type=int, default=50, help="at most 500 (default 50)")
    activity.add_argument("--page-token", metavar="TOKEN", help="the next page of a listing")
    activity.add_argument("-o", "--output", choices=["table", "json"], default="table")
    activity.set_defaults(handler=log)
