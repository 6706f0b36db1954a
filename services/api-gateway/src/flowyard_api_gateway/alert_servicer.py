"""AlertService (FEATURES A2-A6): policies, allowed domains, the Slack workspace, run
subscriptions and the activity log. The alerter delivers; this only reads and writes
what it acts on, refusing bad recipients when they are saved, not when an alert is due.

Refusals are INVALID_ARGUMENT with a google.rpc.BadRequest naming each field, e.g.
``emails[1]: 'bob@gmail.com': domain 'gmail.com' is not an allowed alert domain``.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, TypeVar

import grpc
from flowyard.adapters.alert_store import AlertStore, StoredSlack, new_subscription_id
from flowyard.adapters.credentials import CredentialStore, cipher_from_key
from flowyard.adapters.mongo import MongoStore
from flowyard.alert_codec import (
    CHANNEL_FROM_PROTO,
    KIND_FROM_PROTO,
    STATUS_FROM_PROTO,
    attempt_to_proto,
    policy_from_proto,
    policy_to_proto,
    subscription_to_proto,
)
from flowyard.config import Settings, SlackSettings
from flowyard.domain.alerts import (
    ActivityFilter,
    Problem,
    RunSubscription,
    domain_problem,
    normalize_domain,
    policy_problems,
    recipient_problems,
)
from flowyard.domain.credentials import check_credential_name
from flowyard.errors import NotFoundError, RunNotFoundError, WorkflowStateError
from flowyard.v1 import alerts_pb2, alerts_pb2_grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from flowyard_api_gateway.auth import caller_name
from flowyard_api_gateway.errors import InvalidRequestError, translate_errors

Context = grpc.aio.ServicerContext[Any, Any]
Req = TypeVar("Req")
Resp = TypeVar("Resp")

SLACK_TOKEN_PREFIXES = ("xoxb-",)
# The credential an inline bot token is stored as.
SLACK_TOKEN_CREDENTIAL = "alerts_slack_bot_token"


class AlertProblemsError(Exception):
    """Every problem of a request at once (INVALID_ARGUMENT with field violations)."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(f"{p.field}: {p.message}" for p in problems))


def _refuse_problems(
    method: Callable[[Any, Req, Context], Awaitable[Resp]],
) -> Callable[[Any, Req, Context], Awaitable[Resp]]:
    """AlertProblemsError -> INVALID_ARGUMENT listing every problem; the rest as usual."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Req, context: Context) -> Resp:
        try:
            return await method(self, request, context)
        except AlertProblemsError as exc:
            details = error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=p.field, description=p.message
                    )
                    for p in exc.problems
                ]
            )
            packed = any_pb2.Any()
            packed.Pack(details)
            status = status_pb2.Status(
                code=code_pb2.INVALID_ARGUMENT, message=str(exc), details=[packed]
            )
            await context.abort_with_status(rpc_status.to_status(status))
            raise  # unreachable: abort raises

    return wrapper


def add_alert_service(server: grpc.aio.Server, store: MongoStore, settings: Settings) -> str:
    """Register AlertService on ``server``; its full name (for health and reflection)."""
    credentials = CredentialStore(store.database, cipher_from_key(settings.credentials_key))
    servicer = AlertServicer(AlertStore(store.database), store, settings.slack, credentials)
    alerts_pb2_grpc.add_AlertServiceServicer_to_server(servicer, server)
    return alerts_pb2.DESCRIPTOR.services_by_name["AlertService"].full_name


async def prepare_alerts(store: MongoStore) -> None:
    """Indexes of the alert collections (at gateway start)."""
    await AlertStore(store.database).ensure_indexes()


class AlertServicer(alerts_pb2_grpc.AlertServiceServicer):
    def __init__(
        self,
        alerts: AlertStore,
        runs: MongoStore,
        slack: SlackSettings,
        credentials: CredentialStore,
    ) -> None:
        self._alerts = alerts
        self._runs = runs
        self._slack_env = slack
        self._credentials = credentials

    # --- policies ----------------------------------------------------------------------

    @translate_errors
    @_refuse_problems
    async def SetAlertPolicy(
        self, request: alerts_pb2.SetAlertPolicyRequest, context: Context
    ) -> alerts_pb2.AlertPolicy:
        if not request.HasField("policy"):
            raise InvalidRequestError("policy", "is required")
        try:
            policy = policy_from_proto(request.policy)
        except ValueError as exc:
            raise InvalidRequestError("policy.kinds", str(exc)) from exc
        settings = await self._alerts.get_settings()
        problems = policy_problems(policy, settings.allowed_domains)
        if problems:
            raise AlertProblemsError([replace(p, field=f"policy.{p.field}") for p in problems])
        now = datetime.now(UTC)
        who = caller_name(fallback=policy.updated_by or "anonymous")
        stored = await self._alerts.put_policy(
            replace(policy, created_at=now, updated_at=now, updated_by=who)
        )
        return policy_to_proto(stored)

    @translate_errors
    async def ListAlertPolicies(
        self, request: alerts_pb2.ListAlertPoliciesRequest, context: Context
    ) -> alerts_pb2.ListAlertPoliciesResponse:
        policies = await self._alerts.list_policies(request.workflow_type, request.workflow)
        return alerts_pb2.ListAlertPoliciesResponse(policies=[policy_to_proto(p) for p in policies])

    @translate_errors
    async def DeleteAlertPolicy(
        self, request: alerts_pb2.DeleteAlertPolicyRequest, context: Context
    ) -> alerts_pb2.DeleteAlertPolicyResponse:
        if not request.name:
            raise InvalidRequestError("name", "is required")
        if not await self._alerts.delete_policy(request.name):
            raise NotFoundError(f"alert policy {request.name!r} not found")
        return alerts_pb2.DeleteAlertPolicyResponse()

    # --- settings ----------------------------------------------------------------------

    async def _settings(self) -> alerts_pb2.AlertSettings:
        stored = await self._alerts.get_settings()
        if stored.slack is not None:
            slack = alerts_pb2.SlackWorkspace(
                workspace=stored.slack.workspace,
                api_url=stored.slack.api_url or self._slack_env.api_url,
                token_configured=bool(stored.slack.token_credential),
                source="stored",
                token_credential=stored.slack.token_credential,
            )
        else:
            slack = alerts_pb2.SlackWorkspace(
                api_url=self._slack_env.api_url,
                token_configured=bool(self._slack_env.bot_token),
                source="environment",
            )
        return alerts_pb2.AlertSettings(allowed_domains=stored.allowed_domains, slack=slack)

    @translate_errors
    async def GetAlertSettings(
        self, request: alerts_pb2.GetAlertSettingsRequest, context: Context
    ) -> alerts_pb2.AlertSettings:
        return await self._settings()

    @translate_errors
    @_refuse_problems
    async def SetAllowedDomains(
        self, request: alerts_pb2.SetAllowedDomainsRequest, context: Context
    ) -> alerts_pb2.AlertSettings:
        problems = [
            Problem(f"{name}[{index}]", problem)
            for name, values in (("add", request.add), ("remove", request.remove))
            for index, domain in enumerate(values)
            if (problem := domain_problem(domain))
        ]
        if problems:
            raise AlertProblemsError(problems)
        if not request.add and not request.remove:
            raise InvalidRequestError("add", "name domains to add or remove")
        in_use = []
        for domain in sorted({normalize_domain(d) for d in request.remove}):
            users = await self._alerts.users_of_domain(domain)
            if users:
                in_use.append(f"{domain} (used by {', '.join(users)})")
        if in_use:
            raise WorkflowStateError(
                "cannot remove domains still used by alert recipients: "
                + "; ".join(in_use)
                + ". Change those policies or subscriptions first."
            )
        await self._alerts.change_domains(request.add, request.remove)
        return await self._settings()

    @translate_errors
    async def SetSlackSettings(
        self, request: alerts_pb2.SetSlackSettingsRequest, context: Context
    ) -> alerts_pb2.AlertSettings:
        """The bot token is kept as a credential (encrypted, never returned): given inline
        it is stored as ``alerts_slack_bot_token``; or an existing credential is named."""
        if request.clear:
            await self._alerts.set_slack(None)
            return await self._settings()
        current = (await self._alerts.get_settings()).slack
        token = request.bot_token.strip()
        named = request.bot_token_credential.strip()
        if token and named:
            raise InvalidRequestError("bot_token", "give bot_token or bot_token_credential")
        if token and not token.startswith(SLACK_TOKEN_PREFIXES):
            raise InvalidRequestError(
                "bot_token", "must be a bot token (xoxb-...): alerts post as a bot, never as a user"
            )
        if named:
            problem = check_credential_name(named)
            if problem:
                raise InvalidRequestError("bot_token_credential", f"{named!r}: {problem}")
            if named not in {c.name for c in await self._credentials.list_credentials()}:
                raise InvalidRequestError(
                    "bot_token_credential",
                    f"no credential named {named!r} (flowyard credential set {named})",
                )
        elif token:
            if not self._credentials.can_encrypt:
                raise WorkflowStateError(
                    "the gateway has no FLOWYARD_CREDENTIALS_KEY to store the bot token "
                    "encrypted; set it, or name an existing credential"
                )
            await self._credentials.set(
                SLACK_TOKEN_CREDENTIAL,
                token,
                description="Slack bot token for alerts",
                by=caller_name(),
            )
            named = SLACK_TOKEN_CREDENTIAL
        else:
            named = current.token_credential if current else ""
        if not named:
            raise InvalidRequestError(
                "bot_token", "is required (a Slack bot token, xoxb-..., or bot_token_credential)"
            )
        api_url = request.api_url.strip().rstrip("/")
        if api_url and not api_url.startswith(("http://", "https://")):
            raise InvalidRequestError("api_url", f"{api_url!r} is not an http(s) URL")
        await self._alerts.set_slack(
            StoredSlack(
                workspace=request.workspace.strip() or (current.workspace if current else ""),
                api_url=api_url or (current.api_url if current else ""),
                token_credential=named,
            )
        )
        return await self._settings()

    # --- subscriptions -----------------------------------------------------------------

    @translate_errors
    @_refuse_problems
    async def SubscribeToRun(
        self, request: alerts_pb2.SubscribeToRunRequest, context: Context
    ) -> alerts_pb2.RunSubscription:
        if not request.run_id:
            raise InvalidRequestError("run_id", "is required")
        emails = [e.strip() for e in request.emails]
        channels = [c.strip() for c in request.slack_channels]
        settings = await self._alerts.get_settings()
        problems = recipient_problems(emails, channels, settings.allowed_domains)
        if problems:
            raise AlertProblemsError(problems)
        run = await self._runs.find_run(request.run_id)
        if run is None:
            raise RunNotFoundError(request.run_id)
        if run.status.finished:
            raise WorkflowStateError(
                f"run {run.run_id} is {run.status.value} already; it raises no more alerts"
            )
        subscription = await self._alerts.add_subscription(
            RunSubscription(
                subscription_id=new_subscription_id(),
                run_id=run.run_id,
                emails=tuple(emails),
                slack_channels=tuple(channels),
                subscriber=caller_name(fallback=request.subscriber or "anonymous"),
                created_at=datetime.now(UTC),
            )
        )
        return subscription_to_proto(subscription)

    @translate_errors
    async def ListRunSubscriptions(
        self, request: alerts_pb2.ListRunSubscriptionsRequest, context: Context
    ) -> alerts_pb2.ListRunSubscriptionsResponse:
        if not request.run_id:
            raise InvalidRequestError("run_id", "is required")
        subscriptions = await self._alerts.subscriptions_of(request.run_id)
        return alerts_pb2.ListRunSubscriptionsResponse(
            subscriptions=[subscription_to_proto(s) for s in subscriptions]
        )

    @translate_errors
    async def UnsubscribeFromRun(
        self, request: alerts_pb2.UnsubscribeFromRunRequest, context: Context
    ) -> alerts_pb2.UnsubscribeFromRunResponse:
        if not request.subscription_id:
            raise InvalidRequestError("subscription_id", "is required")
        if not await self._alerts.delete_subscription(request.subscription_id):
            raise NotFoundError(f"subscription {request.subscription_id!r} not found")
        return alerts_pb2.UnsubscribeFromRunResponse()

    # --- activity ----------------------------------------------------------------------

    @translate_errors
    async def ListAlertActivity(
        self, request: alerts_pb2.ListAlertActivityRequest, context: Context
    ) -> alerts_pb2.ListAlertActivityResponse:
        def pick(field: str, value: int, table: dict[Any, Any]) -> Any:
            if not value:
                return None
            if value not in table:
                raise InvalidRequestError(field, f"unknown value {value}")
            return table[value]

        where = ActivityFilter(
            run_id=request.run_id,
            kind=pick("kind", request.kind, KIND_FROM_PROTO),
            status=pick("status", request.status, STATUS_FROM_PROTO),
            channel=pick("channel", request.channel, CHANNEL_FROM_PROTO),
            workflow=request.workflow,
            recipient=request.recipient,
        )
        if request.limit < 0:
            raise InvalidRequestError("limit", "must be 0 (default 50) or more")
        try:
            records, token = await self._alerts.list_activity(
                where, request.limit or 50, request.page_token
            )
        except ValueError as exc:
            raise InvalidRequestError("page_token", str(exc)) from exc
        return alerts_pb2.ListAlertActivityResponse(
            attempts=[attempt_to_proto(r) for r in records], next_page_token=token
        )
