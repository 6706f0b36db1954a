"""Alert rules, pure (FEATURES A1-A8): kinds, policies, subscriptions, recipient checks,
who gets which alert, the dedup key, and the retry backoff.

* A **policy** covers the runs of one workflow type, or of one workflow, and names
  recipients (email addresses, Slack channels) and the kinds they get. Success alerts go
  out only when the policy lists ``succeeded``; with no kinds listed a policy gets every
  other kind. ``runtime_threshold_seconds`` (on the policy, not the definition) sets when
  a run counts as running too long.
* A **subscription** is one run's: its recipients get failed, succeeded, runtime, query and
  stopped alerts of that run, whatever the policies say.
* An email address must be in an allowed domain (exactly, case-insensitive: allowing
  ``example.com`` does not allow ``ops.example.com``); a Slack recipient must be a
  ``#channel``. Both are checked when a policy or subscription is saved, and again before
  each delivery (a domain may have been removed meanwhile).
* One alert per (run, kind, recipient), plus the node and level for query alerts (two
  query nodes of one run are two alerts): :func:`alert_id` is that key, stored as a
  unique ``_id``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class AlertKind(StrEnum):
    FAILED = "failed"
    SUCCEEDED = "succeeded"
    RUNTIME = "runtime"
    QUERY = "query"
    STOPPED = "stopped"
    UPSTREAM = "upstream"


class Channel(StrEnum):
    EMAIL = "email"
    SLACK = "slack"


class DeliveryStatus(StrEnum):
    """Of an alert: pending until sent or given up. Of an attempt: sent, retrying, failed."""

    PENDING = "pending"
    SENT = "sent"
    RETRYING = "retrying"
    FAILED = "failed"


# A policy that lists no kinds gets these: everything but success (A2).
DEFAULT_POLICY_KINDS = frozenset(
    {AlertKind.FAILED, AlertKind.RUNTIME, AlertKind.QUERY, AlertKind.STOPPED, AlertKind.UPSTREAM}
)
# What subscribers to a run get (A3): success always.
SUBSCRIPTION_KINDS = frozenset(
    {AlertKind.FAILED, AlertKind.SUCCEEDED, AlertKind.RUNTIME, AlertKind.QUERY, AlertKind.STOPPED}
)

POLICY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$")
# Slack channel names: lower case letters, digits, '-', '_' (and '.'), at most 80.
SLACK_CHANNEL = re.compile(r"^#[a-z0-9][a-z0-9._-]{0,79}$")
_EMAIL = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@([A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+)$")
_DOMAIN = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+$")
MAX_RECIPIENTS = 50


@dataclass(frozen=True, order=True)
class Recipient:
    channel: Channel
    address: str  # an email address or a '#channel'

    @property
    def destination(self) -> str:
        """The rate-limit key: one mailbox or one Slack channel."""
        return f"{self.channel.value}:{self.address.lower()}"


@dataclass(frozen=True)
class AlertPolicy:
    name: str
    workflow_type: str = ""
    workflow: str = ""
    emails: tuple[str, ...] = ()
    slack_channels: tuple[str, ...] = ()
    kinds: frozenset[AlertKind] = frozenset()
    runtime_threshold_seconds: float = 0.0
    created_at: datetime | None = None
    updated_at: datetime | None = None
    updated_by: str = ""

    def covers(self, workflow_name: str, workflow_type: str) -> bool:
        """Whether runs of this workflow fall under the policy (type, narrowed by name)."""
        if self.workflow and self.workflow != workflow_name:
            return False
        if self.workflow_type and self.workflow_type != workflow_type:
            return False
        return bool(self.workflow or self.workflow_type)

    def wants(self, kind: AlertKind) -> bool:
        return kind in (self.kinds or DEFAULT_POLICY_KINDS)

    @property
    def recipients(self) -> list[Recipient]:
        return recipients_of(self.emails, self.slack_channels)


@dataclass(frozen=True)
class RunSubscription:
    subscription_id: str
    run_id: str
    emails: tuple[str, ...] = ()
    slack_channels: tuple[str, ...] = ()
    subscriber: str = ""
    created_at: datetime | None = None

    @property
    def recipients(self) -> list[Recipient]:
        return recipients_of(self.emails, self.slack_channels)


def recipients_of(emails: Iterable[str], channels: Iterable[str]) -> list[Recipient]:
    return [Recipient(Channel.EMAIL, e) for e in emails] + [
        Recipient(Channel.SLACK, c) for c in channels
    ]


# --- checks when saved -----------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    field: str
    message: str


def normalize_domain(domain: str) -> str:
    return domain.strip().lower().removeprefix("@").rstrip(".")


def domain_problem(domain: str) -> str | None:
    if not _DOMAIN.match(normalize_domain(domain)):
        return f"{domain!r} is not a domain name (e.g. example.com)"
    return None


def email_problem(address: str, allowed_domains: Iterable[str]) -> str | None:
    """Why ``address`` may not receive alerts, or None."""
    match = _EMAIL.match(address)
    if not match:
        return f"{address!r} is not an email address"
    domain = match.group(1).lower()
    allowed = {normalize_domain(d) for d in allowed_domains}
    if domain not in allowed:
        listed = ", ".join(sorted(allowed)) or "none; add one with `flowyard alert domains --add`"
        return f"{address!r}: domain {domain!r} is not an allowed alert domain (allowed: {listed})"
    return None


def slack_channel_problem(channel: str) -> str | None:
    if not channel.startswith("#"):
        return (
            f"{channel!r} is not a channel: Slack alerts go to channels only, whose names "
            "start with '#' (direct messages are not allowed)"
        )
    if not SLACK_CHANNEL.match(channel):
        return (
            f"{channel!r} is not a valid Slack channel name "
            "(lower case letters, digits, '-', '_' or '.', at most 80)"
        )
    return None


def recipient_problems(
    emails: Sequence[str], channels: Sequence[str], allowed_domains: Iterable[str]
) -> list[Problem]:
    allowed = list(allowed_domains)
    problems: list[Problem] = []
    for index, address in enumerate(emails):
        problem = email_problem(address, allowed)
        if problem:
            problems.append(Problem(f"emails[{index}]", problem))
    for index, channel in enumerate(channels):
        problem = slack_channel_problem(channel)
        if problem:
            problems.append(Problem(f"slack_channels[{index}]", problem))
    if not emails and not channels:
        problems.append(Problem("emails", "name at least one email address or Slack channel"))
    if len(emails) + len(channels) > MAX_RECIPIENTS:
        problems.append(Problem("emails", f"at most {MAX_RECIPIENTS} recipients"))
    return problems


def policy_problems(policy: AlertPolicy, allowed_domains: Iterable[str]) -> list[Problem]:
    problems: list[Problem] = []
    if not POLICY_NAME.match(policy.name):
        problems.append(
            Problem("name", f"{policy.name!r}: 1-80 of A-Z a-z 0-9 _ - ., starting alphanumeric")
        )
    if not policy.workflow_type and not policy.workflow:
        problems.append(Problem("workflow_type", "name a workflow type, a workflow, or both"))
    if policy.runtime_threshold_seconds < 0:
        problems.append(Problem("runtime_threshold_seconds", "must be 0 (none) or more"))
    if AlertKind.RUNTIME in policy.kinds and policy.runtime_threshold_seconds <= 0:
        problems.append(
            Problem("runtime_threshold_seconds", "runtime alerts need a threshold above 0")
        )
    problems.extend(recipient_problems(policy.emails, policy.slack_channels, allowed_domains))
    return problems


# --- who gets what ---------------------------------------------------------------------


def recipients_for(
    kind: AlertKind,
    workflow_name: str,
    workflow_type: str,
    policies: Iterable[AlertPolicy],
    subscriptions: Iterable[RunSubscription] = (),
    *,
    include_policies: bool = True,
) -> list[Recipient]:
    """Everyone who gets a ``kind`` alert of one run, each once, in a stable order."""
    found: set[Recipient] = set()
    if include_policies:
        for policy in policies:
            if policy.covers(workflow_name, workflow_type) and policy.wants(kind):
                found.update(policy.recipients)
    if kind in SUBSCRIPTION_KINDS:
        for subscription in subscriptions:
            found.update(subscription.recipients)
    return sorted(_dedupe_case(found))


def _dedupe_case(recipients: Iterable[Recipient]) -> list[Recipient]:
    """``Ops@Example.com`` and ``ops@example.com`` are one mailbox: keep the first seen."""
    kept: dict[str, Recipient] = {}
    for recipient in sorted(recipients):
        kept.setdefault(recipient.destination, recipient)
    return list(kept.values())


def alert_id(run_id: str, kind: AlertKind, recipient: Recipient, detail: str = "") -> str:
    """The dedup key: one alert per run, kind (+ detail) and recipient."""
    parts = [run_id, kind.value, *([detail] if detail else []), recipient.destination]
    return "|".join(parts)


@dataclass(frozen=True)
class Backoff:
    initial_seconds: float = 2.0
    multiplier: float = 2.0
    max_seconds: float = 300.0

    def delay(self, failed_attempts: int) -> float:
        """Wait after the ``failed_attempts``-th failed attempt (1 = after the first)."""
        exponent = max(0, failed_attempts - 1)
        return float(min(self.max_seconds, self.initial_seconds * self.multiplier**exponent))


@dataclass
class TokenBucket:
    """A per-destination rate limit: ``rate_per_minute`` on average, ``burst`` at once."""

    tokens: float
    updated: float
    rate_per_minute: float = 30.0
    burst: int = 10

    def take(self, now: float) -> float:
        """0 when a token was taken; otherwise the seconds until one is available."""
        rate = self.rate_per_minute / 60.0
        elapsed = max(0.0, now - self.updated)
        self.tokens = min(float(self.burst), self.tokens + elapsed * rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        if rate <= 0:
            return 60.0
        return (1.0 - self.tokens) / rate


# --- what is stored --------------------------------------------------------------------


@dataclass(frozen=True)
class Alert:
    """One alert to one recipient: queued, then delivered (or given up) exactly once."""

    alert_id: str
    run_id: str
    kind: AlertKind
    recipient: Recipient
    subject: str
    body: str  # plain text, for email
    slack_text: str  # Slack mrkdwn
    workflow_name: str
    workflow_type: str
    event_at: datetime  # the lifecycle event (or the runtime threshold) behind it
    created_at: datetime
    due_at: datetime
    status: DeliveryStatus = DeliveryStatus.PENDING
    attempts: int = 0
    last_error: str = ""
    sent_at: datetime | None = None


@dataclass(frozen=True)
class AttemptRecord:
    """One delivery attempt, as the activity log keeps it (A6)."""

    attempt_id: str
    alert_id: str
    kind: AlertKind
    run_id: str
    workflow_name: str
    workflow_type: str
    channel: Channel
    recipient: str
    at: datetime
    status: DeliveryStatus
    attempt: int
    subject: str = ""
    error: str = ""
    latency_seconds: float = 0.0


@dataclass(frozen=True)
class ActivityFilter:
    run_id: str = ""
    kind: AlertKind | None = None
    status: DeliveryStatus | None = None
    channel: Channel | None = None
    workflow: str = ""
    recipient: str = ""


@dataclass(frozen=True)
class RuntimeWatch:
    """A running run with a runtime threshold: due when the threshold passes."""

    run_id: str
    policy: str
    workflow_name: str
    workflow_type: str
    started_at: datetime
    threshold_seconds: float
    due_at: datetime

    @property
    def watch_id(self) -> str:
        return f"{self.run_id}|{self.policy}"
