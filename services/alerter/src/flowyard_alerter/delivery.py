"""One delivery attempt of one queued alert (A8), and the poller that brings alerts back.

:meth:`Deliverer.deliver` is called by the deliveries agent with an alert id, the number
of attempts the alert had when it was handed over, and its destination (the message key):

1. the destination's rate limit is asked for a token; without one the alert's due time
   moves to when there will be one, and the poller hands it over again then;
2. in the background (at most ``max_in_flight`` at once) the attempt is claimed
   (``attempts + 1``, conditional on ``attempts`` and the alert still pending), so one
   attempt is made once whatever the number of instances or duplicate hand-overs; a
   stale hand-over (sent meanwhile, or taken by another) claims nothing and ends there;
3. the recipient is checked again (a domain may have been removed since it was saved),
   the message goes out, and the attempt is recorded in the activity log (and published
   on ``flowyard.alerts``): ``sent``; ``retrying`` with the next try after an exponential
   backoff; or ``failed`` (refused for good, or out of attempts) with a dead letter.

A claimed alert's due time is the claim's lease: if the instance dies mid-attempt the
poller hands the alert over again once the lease has passed. The one case that can send
twice is a crash after the server took the message and before it was recorded; the
email's Message-ID, derived from the alert id, marks such a duplicate.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

import httpx
from flowyard.adapters.alert_store import AlertStore, StoredAlertSettings, StoredSlack
from flowyard.adapters.credentials import CredentialStore
from flowyard.config import AlertSettings, SlackSettings, SmtpSettings
from flowyard.domain.alerts import (
    Alert,
    AttemptRecord,
    Backoff,
    Channel,
    DeliveryStatus,
    email_problem,
)
from flowyard.domain.credentials import CredentialError
from flowyard.metrics import ServiceMetrics

from flowyard_alerter.senders import Outcome, SlackTarget, post_slack, send_email

log = logging.getLogger(__name__)

# Stored settings (allowed domains, the Slack workspace and its token) are re-read at
# most this often.
CACHE_SECONDS = 2.0
# A claimed attempt's lease covers its send timeout plus this, for recording the outcome.
CLAIM_MARGIN_SECONDS = 10.0
# Attempts one alerter instance makes at once (each is one SMTP or Slack conversation).
MAX_IN_FLIGHT = 16


class RateLimiter(Protocol):
    def take(self, destination: str, now: float) -> float:
        """0 when the destination may get one more alert now, else seconds to wait."""
        ...


Clock = Callable[[], datetime]
RecordSink = Callable[[AttemptRecord], Awaitable[None]]
DeadLetterSink = Callable[[Alert, str], Awaitable[None]]
Enqueue = Callable[[Alert], Awaitable[None]]


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Senders:
    smtp: SmtpSettings
    slack: SlackSettings
    http: httpx.AsyncClient


class Deliverer:
    def __init__(
        self,
        store: AlertStore,
        senders: Senders,
        settings: AlertSettings,
        metrics: ServiceMetrics,
        limiter: RateLimiter,
        *,
        on_attempt: RecordSink,
        dead_letter: DeadLetterSink,
        credentials: CredentialStore | None = None,
        clock: Clock = _now,
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> None:
        self._store = store
        self._credentials = credentials
        self._senders = senders
        self._settings = settings
        self._metrics = metrics
        self._limiter = limiter
        self._on_attempt = on_attempt
        self._dead_letter = dead_letter
        self._clock = clock
        self._backoff = Backoff(settings.backoff_seconds, 2.0, settings.backoff_max_seconds)
        # A claim must outlive the attempt it covers (the send, bounded by its timeout,
        # then the record), or a live attempt would be taken over and sent twice.
        self.claim_lease_seconds = max(
            settings.lease_seconds, settings.send_timeout_seconds + CLAIM_MARGIN_SECONDS
        )
        self._cached: tuple[float, StoredAlertSettings] | None = None
        self._slack_cache: tuple[float, StoredSlack, SlackTarget] | None = None
        self._slots = asyncio.Semaphore(max_in_flight)
        self._in_flight: set[asyncio.Task[None]] = set()

    async def deliver(self, alert_id: str, attempts: int, destination: str) -> None:
        """Take a rate-limit token for ``destination`` here, in the deliveries agent (the
        faust table changes only there); claim, send and record in the background, at
        most ``max_in_flight`` at once."""
        wait = self._limiter.take(destination, time.time())
        if wait > 0:
            # Not an attempt: due again when the destination has a token (plus a little
            # spread so a backlog does not come back all at once).
            due = self._clock() + timedelta(seconds=wait + random.uniform(0, wait))
            if await self._store.postpone_alert(alert_id, attempts, due):
                channel = destination.split(":", 1)[0]
                self._metrics.alerts_rate_limited.labels(channel).inc()
            return
        await self._slots.acquire()
        task = asyncio.create_task(self._attempt(alert_id, attempts))
        self._in_flight.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None:
            # The alert stays claimed until its lease passes; then the poller retries it.
            log.error("alerter: an attempt failed unexpectedly", exc_info=task.exception())

    async def _attempt(self, alert_id: str, attempts: int) -> None:
        now = self._clock()
        lease = now + timedelta(seconds=self.claim_lease_seconds)
        claimed = await self._store.claim_alert(alert_id, attempts, lease, now)
        if claimed is None:  # sent meanwhile, or another hand-over took this attempt
            return
        outcome = await self._send(claimed)
        await self._record(claimed, outcome)

    async def drain(self, within: float) -> None:
        """Wait up to ``within`` seconds for attempts in flight, then cancel the rest
        (their alerts are retried after the lease)."""
        if not self._in_flight:
            return
        _done, pending = await asyncio.wait(set(self._in_flight), timeout=within)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)

    async def _send(self, alert: Alert) -> Outcome:
        stored = await self._stored_settings()
        timeout = self._settings.send_timeout_seconds
        recipient = alert.recipient
        try:
            if recipient.channel is Channel.EMAIL:
                problem = email_problem(recipient.address, stored.allowed_domains)
                if problem:
                    return Outcome.refuse(f"not sent: {problem}")
                return await send_email(
                    self._senders.smtp,
                    alert.alert_id,
                    recipient.address,
                    alert.subject,
                    alert.body,
                    limit_seconds=timeout,
                )
            target = await self._slack_target(stored)
            if isinstance(target, Outcome):
                return target
            return await post_slack(
                self._senders.http,
                target,
                recipient.address,
                alert.slack_text,
                limit_seconds=timeout,
            )
        except Exception as exc:  # a bug in a sender must not lose the alert
            log.exception("alerter: sending %s failed unexpectedly", alert.alert_id)
            return Outcome.retry(f"unexpected {type(exc).__name__}: {exc}")

    async def _slack_target(self, stored: StoredAlertSettings) -> SlackTarget | Outcome:
        """The stored workspace with its bot token credential, else the environment's."""
        if stored.slack is None or not stored.slack.token_credential:
            return SlackTarget(self._senders.slack.api_url, self._senders.slack.bot_token)
        name = stored.slack.token_credential
        now = time.monotonic()
        cached = self._slack_cache
        if cached is not None and cached[1] == stored.slack and now - cached[0] < CACHE_SECONDS:
            return cached[2]
        if self._credentials is None:
            return Outcome.retry(f"no credential store to read Slack's bot token {name!r}")
        try:
            token = (await self._credentials.values([name]))[name]
        except CredentialError as exc:
            # Worth retrying: the key or the credential may be fixed meanwhile.
            return Outcome.retry(f"Slack bot token credential {name!r}: {exc}")
        target = SlackTarget(
            api_url=stored.slack.api_url or self._senders.slack.api_url,
            bot_token=token,
            workspace=stored.slack.workspace,
        )
        self._slack_cache = (now, stored.slack, target)
        return target

    async def _stored_settings(self) -> StoredAlertSettings:
        now = time.monotonic()
        if self._cached is None or now - self._cached[0] > CACHE_SECONDS:
            self._cached = (now, await self._store.get_settings())
        return self._cached[1]

    async def _record(self, alert: Alert, outcome: Outcome) -> None:
        now = self._clock()
        attempt = alert.attempts  # the claim counted this attempt already
        channel = alert.recipient.channel.value
        latency = max(0.0, (now - alert.event_at).total_seconds())
        undeliverable = ""
        update: Awaitable[object]
        if outcome.delivered:
            status = DeliveryStatus.SENT
            update = self._store.finish_alert(alert.alert_id, attempt, status, now)
            self._metrics.alerts_sent.labels(alert.kind.value, channel).inc()
            self._metrics.alert_delivery.labels(alert.kind.value, channel).observe(latency)
        elif not outcome.permanent and attempt < self._settings.max_attempts:
            status = DeliveryStatus.RETRYING
            due = now + timedelta(seconds=self._backoff.delay(attempt))
            update = self._store.retry_alert(alert.alert_id, attempt, due, outcome.error)
            log.warning(
                "alerter: attempt %d of %s failed, next at %s: %s",
                attempt,
                alert.alert_id,
                due.isoformat(timespec="seconds"),
                outcome.error,
            )
        else:
            status = DeliveryStatus.FAILED
            undeliverable = outcome.error
            if not outcome.permanent:
                undeliverable = f"gave up after {attempt} attempts: {undeliverable}"
            update = self._store.finish_alert(alert.alert_id, attempt, status, now, undeliverable)
            self._metrics.alerts_failed.labels(alert.kind.value, channel).inc()
            log.error("alerter: alert %s undeliverable: %s", alert.alert_id, undeliverable)
        record = AttemptRecord(
            attempt_id=uuid.uuid4().hex,
            alert_id=alert.alert_id,
            kind=alert.kind,
            run_id=alert.run_id,
            workflow_name=alert.workflow_name,
            workflow_type=alert.workflow_type,
            channel=alert.recipient.channel,
            recipient=alert.recipient.address,
            at=now,
            status=status,
            attempt=attempt,
            subject=alert.subject,
            error="" if outcome.delivered else outcome.error,
            latency_seconds=latency,
        )
        # The alert's new state and the activity record are independent documents.
        await asyncio.gather(update, self._store.record_attempt(record))
        await self._store.end_claim(alert.alert_id, attempt)
        if undeliverable:
            await self._dead_letter(alert, undeliverable)
        await self._on_attempt(record)


class Poller:
    """Brings back what is due: alerts whose retry time (or lost hand-over's lease) has
    come, and runtime watches whose threshold has passed. Every instance polls; moving a
    due time is the claim, so each due item is taken by one of them."""

    def __init__(
        self,
        store: AlertStore,
        settings: AlertSettings,
        enqueue: Enqueue,
        runtime_due: Callable[..., Awaitable[None]],
        clock: Clock = _now,
    ) -> None:
        self._store = store
        self._settings = settings
        self._enqueue = enqueue
        self._runtime_due = runtime_due
        self._clock = clock

    async def poll(self) -> int:
        """Hand over what is due; the number of items handled."""
        now = self._clock()
        lease = now + timedelta(seconds=self._settings.lease_seconds)
        handled = 0
        for alert in await self._store.due_alerts(now):
            if await self._store.move_due(alert, lease):
                await self._enqueue(alert)
                handled += 1
        for watch in await self._store.due_watches(now):
            if await self._store.move_watch(watch, lease):
                await self._runtime_due(watch)
                handled += 1
        return handled
