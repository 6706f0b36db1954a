"""Alert state in MongoDB: policies, settings, run
subscriptions, the alert queue, the activity log and runtime watches.

Collections:

| collection | ``_id`` | what |
|---|---|---|
| alert_policies | policy name | :class:`AlertPolicy` |
| alert_settings | "alerts" | allowed email domains; the Slack workspace (its bot token is |
|   |   | a credential, named here) |
| alert_subscriptions | uuid | :class:`RunSubscription`, indexed by run |
| alerts | the dedup key (:func:`alert_id`) | one alert to one recipient, its status, attempts, |
|   |   | next due time: the unique ``_id`` is what makes it exactly one |
| alert_activity | uuid | one document per delivery attempt (A6), newest first by ``at`` |
| alert_runtime_watches | run + policy | running runs with their threshold's due time |
| alert_claims | alert id + "#" + attempt | who makes an attempt, until when (its lease) |
| alert_due | alert id | pending alerts only, with their next due time (what the poller |
|   |   | reads: it stays small however many alerts were sent) |

Every write is single-document. What must happen once rests on unique keys: the alert's
``_id`` (one alert per run, kind and recipient) and each
attempt's claim in ``alert_claims``, so two alerter instances, or a message delivered
twice, never make the same attempt twice. Driver errors leave this module as
:class:`InfrastructureError`.
"""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError, PyMongoError

from flowyard.adapters.indexes import ensure_indexes
from flowyard.domain.alerts import (
    ActivityFilter,
    Alert,
    AlertKind,
    AlertPolicy,
    AttemptRecord,
    Channel,
    DeliveryStatus,
    Recipient,
    RunSubscription,
    RuntimeWatch,
    normalize_domain,
)
from flowyard.errors import InfrastructureError

Document = dict[str, Any]
SETTINGS_ID = "alerts"
MAX_ACTIVITY_PAGE = 500
# Expired claims of one alert taken over in a row before giving up until the next poll.
MAX_CLAIM_TAKEOVERS = 5


@dataclass(frozen=True)
class StoredSlack:
    """The installation's Slack workspace; the bot token is a credential, named here."""

    workspace: str
    api_url: str
    token_credential: str


@dataclass(frozen=True)
class StoredAlertSettings:
    allowed_domains: tuple[str, ...] = ()
    slack: StoredSlack | None = None


class AlertStore:
    """Alert collections of one database; shares the client of whoever opened it (the
    gateway's :class:`MongoStore`) or owns one (:meth:`connect`, the alerter)."""

    def __init__(self, database: AsyncDatabase[Document]) -> None:
        self.policies: AsyncCollection[Document] = database["alert_policies"]
        self.settings: AsyncCollection[Document] = database["alert_settings"]
        self.subscriptions: AsyncCollection[Document] = database["alert_subscriptions"]
        self.alerts: AsyncCollection[Document] = database["alerts"]
        self.activity: AsyncCollection[Document] = database["alert_activity"]
        self.watches: AsyncCollection[Document] = database["alert_runtime_watches"]
        self.claims: AsyncCollection[Document] = database["alert_claims"]
        self.due: AsyncCollection[Document] = database["alert_due"]

    @classmethod
    @asynccontextmanager
    async def connect(cls, url: str, database: str) -> AsyncIterator[AlertStore]:
        """A store with its own client, indexes ensured; the client closes on exit."""
        client: AsyncMongoClient[Document] = AsyncMongoClient(
            url, tz_aware=True, serverSelectionTimeoutMS=10_000, appname="flowyard-alerts"
        )
        try:
            store = cls(client[database])
            await store.ensure_indexes()
            yield store
        finally:
            await client.close()

    async def ensure_indexes(self) -> None:
        await ensure_indexes(
            self.policies.database,
            (
                "alert_policies",
                "alert_subscriptions",
                "alert_due",
                "alert_activity",
                "alert_runtime_watches",
            ),
        )

    # --- policies ----------------------------------------------------------------------

    async def put_policy(self, policy: AlertPolicy) -> AlertPolicy:
        """Create or replace the policy of that name; ``created_at`` survives a replace."""
        doc = _policy_to_doc(policy)
        created = doc.pop("created_at")
        try:
            stored = await self.policies.find_one_and_update(
                {"_id": policy.name},
                {"$set": doc, "$setOnInsert": {"created_at": created}},
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB update failed: {exc}") from exc
        if stored is None:  # not with upsert=True; for the type checker
            raise InfrastructureError(f"MongoDB lost policy {policy.name!r} while storing it")
        return _policy_from_doc(stored)

    async def list_policies(self, workflow_type: str = "", workflow: str = "") -> list[AlertPolicy]:
        query: Document = {}
        if workflow_type:
            query["workflow_type"] = workflow_type
        if workflow:
            query["workflow"] = workflow
        docs = await self._find(self.policies, query, sort=[("_id", ASCENDING)])
        return [_policy_from_doc(d) for d in docs]

    async def policies_covering(self, workflow_name: str, workflow_type: str) -> list[AlertPolicy]:
        """Policies that may cover runs of this workflow (``covers`` decides exactly)."""
        alternatives: list[Document] = [{"workflow": workflow_name}]
        if workflow_type:
            alternatives.append({"workflow_type": workflow_type})
        docs = await self._find(self.policies, {"$or": alternatives})
        policies = [_policy_from_doc(d) for d in docs]
        return [p for p in policies if p.covers(workflow_name, workflow_type)]

    async def delete_policy(self, name: str) -> bool:
        try:
            result = await self.policies.delete_one({"_id": name})
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB delete failed: {exc}") from exc
        return result.deleted_count == 1

    # --- settings ----------------------------------------------------------------------

    async def get_settings(self) -> StoredAlertSettings:
        doc = await self._find_one(self.settings, {"_id": SETTINGS_ID})
        if doc is None:
            return StoredAlertSettings()
        slack = doc.get("slack")
        return StoredAlertSettings(
            allowed_domains=tuple(sorted(doc.get("allowed_domains") or ())),
            slack=StoredSlack(
                workspace=slack.get("workspace", ""),
                api_url=slack.get("api_url", ""),
                token_credential=slack.get("token_credential", ""),
            )
            if slack
            else None,
        )

    async def change_domains(self, add: Iterable[str], remove: Iterable[str]) -> None:
        added = sorted({normalize_domain(d) for d in add})
        removed = sorted({normalize_domain(d) for d in remove})
        try:
            if added:
                await self.settings.update_one(
                    {"_id": SETTINGS_ID},
                    {"$addToSet": {"allowed_domains": {"$each": added}}},
                    upsert=True,
                )
            if removed:
                await self.settings.update_one(
                    {"_id": SETTINGS_ID}, {"$pullAll": {"allowed_domains": removed}}, upsert=True
                )
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB update failed: {exc}") from exc

    async def users_of_domain(self, domain: str) -> list[str]:
        """Policies (``policy NAME``) and subscriptions (``subscription ID of run R``)
        with an address in ``domain``."""
        pattern = {"$regex": f"@{re.escape(normalize_domain(domain))}$", "$options": "i"}
        users = [f"policy {d['_id']}" for d in await self._find(self.policies, {"emails": pattern})]
        users.extend(
            f"subscription {d['_id']} of run {d['run_id']}"
            for d in await self._find(self.subscriptions, {"emails": pattern})
        )
        return users

    async def set_slack(self, slack: StoredSlack | None) -> None:
        try:
            if slack is None:
                await self.settings.update_one(
                    {"_id": SETTINGS_ID}, {"$unset": {"slack": ""}}, upsert=True
                )
            else:
                value = {
                    "workspace": slack.workspace,
                    "api_url": slack.api_url,
                    "token_credential": slack.token_credential,
                }
                await self.settings.update_one(
                    {"_id": SETTINGS_ID}, {"$set": {"slack": value}}, upsert=True
                )
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB update failed: {exc}") from exc

    # --- subscriptions -----------------------------------------------------------------

    async def add_subscription(self, subscription: RunSubscription) -> RunSubscription:
        doc: Document = {
            "_id": subscription.subscription_id,
            "run_id": subscription.run_id,
            "emails": list(subscription.emails),
            "slack_channels": list(subscription.slack_channels),
            "subscriber": subscription.subscriber,
            "created_at": subscription.created_at or datetime.now(UTC),
        }
        await self._insert(self.subscriptions, doc)
        return _subscription_from_doc(doc)

    async def subscriptions_of(self, run_id: str) -> list[RunSubscription]:
        docs = await self._find(
            self.subscriptions, {"run_id": run_id}, sort=[("created_at", ASCENDING)]
        )
        return [_subscription_from_doc(d) for d in docs]

    async def delete_subscription(self, subscription_id: str) -> bool:
        try:
            result = await self.subscriptions.delete_one({"_id": subscription_id})
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB delete failed: {exc}") from exc
        return result.deleted_count == 1

    # --- the alert queue ---------------------------------------------------------------

    async def insert_alert(self, alert: Alert) -> bool:
        """Queue ``alert``; False when an alert with that key exists (a redelivered event,
        another instance, a recipient in two policies): the key is what dedups."""
        try:
            await self.alerts.insert_one(_alert_to_doc(alert))
        except DuplicateKeyError:
            return False
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB insert failed: {exc}") from exc
        await self._set_due(alert.alert_id, alert.due_at)
        return True

    async def ensure_queued(self, alert: Alert) -> None:
        """Give a stored pending alert its due entry if it lacks one (an instance died
        between storing the alert and its due time)."""
        try:
            await self.due.update_one(
                {"_id": alert.alert_id}, {"$setOnInsert": {"due_at": alert.due_at}}, upsert=True
            )
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB update failed: {exc}") from exc

    async def _set_due(self, alert_id: str, due_at: datetime) -> None:
        try:
            await self.due.update_one({"_id": alert_id}, {"$set": {"due_at": due_at}}, upsert=True)
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB update failed: {exc}") from exc

    async def get_alert(self, alert_id: str) -> Alert | None:
        doc = await self._find_one(self.alerts, {"_id": alert_id})
        return None if doc is None else _alert_from_doc(doc)

    async def _pending(self, alert_id: str, attempts: int) -> bool:
        alert = await self.get_alert(alert_id)
        return (
            alert is not None
            and alert.status is DeliveryStatus.PENDING
            and alert.attempts == attempts
        )

    async def claim_alert(
        self, alert_id: str, attempts: int, lease_until: datetime, now: datetime
    ) -> Alert | None:
        """Take the next attempt of a pending alert that has had ``attempts`` attempts;
        None when it is not pending any more, the hand-over is stale, or someone else is
        making that attempt. Until ``lease_until`` nobody else makes it.

        The claim is the insert of ``<alert id>#<attempt>`` into ``alert_claims``: a unique
        key makes exactly one instance the maker of that attempt. A claim whose
        lease passed belongs to an instance presumed dead: the next number is taken.
        """
        if not await self._pending(alert_id, attempts):
            return None  # finished, unknown, or an older hand-over (a newer one exists)
        if attempts and await self._live_claim(f"{alert_id}#{attempts}", now):
            return None  # the latest attempt is still being made
        number = attempts + 1
        for _ in range(MAX_CLAIM_TAKEOVERS):
            claim: Document = {
                "_id": f"{alert_id}#{number}",
                "alert_id": alert_id,
                "attempt": number,
                "claimed_at": now,
                "lease_until": lease_until,
            }
            try:
                await self.claims.insert_one(claim)
            except DuplicateKeyError:
                if await self._live_claim(claim["_id"], now):
                    return None
                number += 1  # that attempt ended, or its instance died
                continue
            except PyMongoError as exc:
                raise InfrastructureError(f"MongoDB insert failed: {exc}") from exc
            await self._update(
                self.alerts,
                {"_id": alert_id},
                {"$set": {"attempts": number, "due_at": lease_until}},
            )
            await self._set_due(alert_id, lease_until)
            # Finished meanwhile (by the attempt whose lease we saw pass)? Then not again.
            current = await self.get_alert(alert_id)
            if current is None or current.status is not DeliveryStatus.PENDING:
                return None
            return current
        return None

    async def _live_claim(self, claim_id: str, now: datetime) -> bool:
        claim = await self._find_one(self.claims, {"_id": claim_id})
        return claim is not None and not claim.get("done") and claim["lease_until"] > now

    async def end_claim(self, alert_id: str, attempt: int) -> None:
        """The attempt is over (its outcome recorded): the next one need not wait for its
        lease."""
        await self._update(self.claims, {"_id": f"{alert_id}#{attempt}"}, {"$set": {"done": True}})

    # Writes below look documents up by ``_id`` alone (after checking, by reading, that the
    # attempt is the current one): the claim already made the writer the only one.

    async def postpone_alert(self, alert_id: str, attempts: int, due_at: datetime) -> bool:
        """Move a pending alert's next try, unless an attempt was taken meanwhile."""
        if not await self._pending(alert_id, attempts):
            return False
        await self._update(self.alerts, {"_id": alert_id}, {"$set": {"due_at": due_at}})
        await self._set_due(alert_id, due_at)
        return True

    async def retry_alert(self, alert_id: str, attempts: int, due_at: datetime, error: str) -> None:
        if not await self._pending(alert_id, attempts):
            return
        await self._update(
            self.alerts, {"_id": alert_id}, {"$set": {"due_at": due_at, "last_error": error}}
        )
        await self._set_due(alert_id, due_at)

    async def finish_alert(
        self, alert_id: str, attempts: int, status: DeliveryStatus, now: datetime, error: str = ""
    ) -> bool:
        if not await self._pending(alert_id, attempts):
            return False
        update: Document = {"status": status.value, "last_error": error, "finished_at": now}
        if status is DeliveryStatus.SENT:
            update["sent_at"] = now
        await self._update(self.alerts, {"_id": alert_id}, {"$set": update})
        try:
            await self.due.delete_one({"_id": alert_id})
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB delete failed: {exc}") from exc
        return True

    async def due_alerts(self, now: datetime, limit: int = 200) -> list[Alert]:
        """Pending alerts whose due time passed (from ``alert_due``, which holds pending
        alerts only, so the poll stays small however many alerts were ever sent)."""
        entries = await self._find(
            self.due, {"due_at": {"$lte": now}}, sort=[("due_at", ASCENDING)], limit=limit
        )
        found: list[Alert] = []
        for entry in entries:
            alert = await self.get_alert(entry["_id"])
            if alert is None or alert.status is not DeliveryStatus.PENDING:
                await self._delete(self.due, entry["_id"])  # finished: a leftover entry
                continue
            found.append(replace(alert, due_at=entry["due_at"]))
        return found

    async def move_due(self, alert: Alert, due_at: datetime) -> bool:
        """The poller's claim: move a due alert's due time; False when it moved meanwhile
        (another instance's poller)."""
        return await self._update(
            self.due, {"_id": alert.alert_id, "due_at": alert.due_at}, {"$set": {"due_at": due_at}}
        )

    # --- activity log ------------------------------------------------------------------

    async def record_attempt(self, record: AttemptRecord) -> None:
        await self._insert(self.activity, _attempt_to_doc(record))

    async def list_activity(
        self, where: ActivityFilter, limit: int = 50, page_token: str = ""
    ) -> tuple[list[AttemptRecord], str]:
        """Attempts newest first, and the token of the next page ("" at the end)."""
        limit = max(1, min(limit or 50, MAX_ACTIVITY_PAGE))
        query: Document = {}
        if where.run_id:
            query["run_id"] = where.run_id
        if where.kind is not None:
            query["kind"] = where.kind.value
        if where.status is not None:
            query["status"] = where.status.value
        if where.channel is not None:
            query["channel"] = where.channel.value
        if where.workflow:
            query["workflow_name"] = where.workflow
        if where.recipient:
            query["recipient"] = where.recipient
        if page_token:
            at, last_id = _parse_page_token(page_token)
            query["$or"] = [{"at": {"$lt": at}}, {"at": at, "_id": {"$lt": last_id}}]
        docs = await self._find(
            self.activity, query, sort=[("at", DESCENDING), ("_id", DESCENDING)], limit=limit + 1
        )
        records = [_attempt_from_doc(d) for d in docs[:limit]]
        token = ""
        if len(docs) > limit:
            last = records[-1]
            token = _page_token(last.at, last.attempt_id)
        return records, token

    # --- runtime watches ---------------------------------------------------------------

    async def watch_runtime(self, watch: RuntimeWatch) -> None:
        """Store the watch unless it exists (a redelivered start keeps the first due time)."""
        doc: Document = {
            "_id": watch.watch_id,
            "run_id": watch.run_id,
            "policy": watch.policy,
            "workflow_name": watch.workflow_name,
            "workflow_type": watch.workflow_type,
            "started_at": watch.started_at,
            "threshold_seconds": watch.threshold_seconds,
            "due_at": watch.due_at,
        }
        try:
            await self.watches.update_one({"_id": doc["_id"]}, {"$setOnInsert": doc}, upsert=True)
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB update failed: {exc}") from exc

    async def due_watches(self, now: datetime, limit: int = 200) -> list[RuntimeWatch]:
        docs = await self._find(
            self.watches, {"due_at": {"$lte": now}}, sort=[("due_at", ASCENDING)], limit=limit
        )
        return [_watch_from_doc(d) for d in docs]

    async def move_watch(self, watch: RuntimeWatch, due_at: datetime) -> bool:
        """Claim a due watch by moving its due time; True for the instance that moved it."""
        return await self._update(
            self.watches,
            {"_id": watch.watch_id, "due_at": watch.due_at},
            {"$set": {"due_at": due_at}},
        )

    async def delete_watch(self, watch: RuntimeWatch) -> None:
        try:
            await self.watches.delete_one({"_id": watch.watch_id})
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB delete failed: {exc}") from exc

    async def end_watches(self, run_id: str) -> None:
        try:
            await self.watches.delete_many({"run_id": run_id})
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB delete failed: {exc}") from exc

    # --- helpers -----------------------------------------------------------------------

    async def _find(
        self,
        collection: AsyncCollection[Document],
        query: Mapping[str, Any],
        *,
        sort: Sequence[tuple[str, int]] | None = None,
        limit: int = 0,
        projection: Mapping[str, Any] | None = None,
    ) -> list[Document]:
        try:
            cursor = collection.find(query, projection)
            if sort:
                cursor = cursor.sort(list(sort))
            if limit:
                cursor = cursor.limit(limit)
            return [doc async for doc in cursor]
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB query failed: {exc}") from exc

    async def _find_one(
        self, collection: AsyncCollection[Document], query: Mapping[str, Any]
    ) -> Document | None:
        try:
            return await collection.find_one(query)
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB query failed: {exc}") from exc

    async def _insert(self, collection: AsyncCollection[Document], doc: Document) -> None:
        try:
            await collection.insert_one(doc)
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB insert failed: {exc}") from exc

    async def _delete(self, collection: AsyncCollection[Document], doc_id: str) -> None:
        try:
            await collection.delete_one({"_id": doc_id})
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB delete failed: {exc}") from exc

    async def _update(
        self, collection: AsyncCollection[Document], query: Document, update: Document
    ) -> bool:
        try:
            result = await collection.update_one(query, update)
        except PyMongoError as exc:
            raise InfrastructureError(f"MongoDB update failed: {exc}") from exc
        return result.matched_count == 1


def new_subscription_id() -> str:
    return uuid.uuid4().hex


# --- document mapping ------------------------------------------------------------------


def _policy_to_doc(policy: AlertPolicy) -> Document:
    now = datetime.now(UTC)
    return {
        "_id": policy.name,
        "workflow_type": policy.workflow_type,
        "workflow": policy.workflow,
        "emails": list(policy.emails),
        "slack_channels": list(policy.slack_channels),
        "kinds": sorted(k.value for k in policy.kinds),
        "runtime_threshold_seconds": policy.runtime_threshold_seconds,
        "created_at": policy.created_at or now,
        "updated_at": policy.updated_at or now,
        "updated_by": policy.updated_by,
    }


def _policy_from_doc(doc: Document) -> AlertPolicy:
    return AlertPolicy(
        name=doc["_id"],
        workflow_type=doc.get("workflow_type", ""),
        workflow=doc.get("workflow", ""),
        emails=tuple(doc.get("emails") or ()),
        slack_channels=tuple(doc.get("slack_channels") or ()),
        kinds=frozenset(AlertKind(k) for k in doc.get("kinds") or () if k in _KINDS),
        runtime_threshold_seconds=float(doc.get("runtime_threshold_seconds") or 0.0),
        created_at=doc.get("created_at"),
        updated_at=doc.get("updated_at"),
        updated_by=doc.get("updated_by", ""),
    )


_KINDS = {k.value for k in AlertKind}


def _subscription_from_doc(doc: Document) -> RunSubscription:
    return RunSubscription(
        subscription_id=doc["_id"],
        run_id=doc["run_id"],
        emails=tuple(doc.get("emails") or ()),
        slack_channels=tuple(doc.get("slack_channels") or ()),
        subscriber=doc.get("subscriber", ""),
        created_at=doc.get("created_at"),
    )


def _alert_to_doc(alert: Alert) -> Document:
    return {
        "_id": alert.alert_id,
        "run_id": alert.run_id,
        "kind": alert.kind.value,
        "channel": alert.recipient.channel.value,
        "recipient": alert.recipient.address,
        "subject": alert.subject,
        "body": alert.body,
        "slack_text": alert.slack_text,
        "workflow_name": alert.workflow_name,
        "workflow_type": alert.workflow_type,
        "event_at": alert.event_at,
        "created_at": alert.created_at,
        "due_at": alert.due_at,
        "status": alert.status.value,
        "attempts": alert.attempts,
        "last_error": alert.last_error,
        "sent_at": alert.sent_at,
    }


def _alert_from_doc(doc: Document) -> Alert:
    return Alert(
        alert_id=doc["_id"],
        run_id=doc["run_id"],
        kind=AlertKind(doc["kind"]),
        recipient=Recipient(Channel(doc["channel"]), doc["recipient"]),
        subject=doc.get("subject", ""),
        body=doc.get("body", ""),
        slack_text=doc.get("slack_text", ""),
        workflow_name=doc.get("workflow_name", ""),
        workflow_type=doc.get("workflow_type", ""),
        event_at=doc["event_at"],
        created_at=doc["created_at"],
        due_at=doc["due_at"],
        status=DeliveryStatus(doc["status"]),
        attempts=int(doc.get("attempts", 0)),
        last_error=doc.get("last_error", ""),
        sent_at=doc.get("sent_at"),
    )


def _attempt_to_doc(record: AttemptRecord) -> Document:
    return {
        "_id": record.attempt_id,
        "alert_id": record.alert_id,
        "kind": record.kind.value,
        "run_id": record.run_id,
        "workflow_name": record.workflow_name,
        "workflow_type": record.workflow_type,
        "channel": record.channel.value,
        "recipient": record.recipient,
        "at": record.at,
        "status": record.status.value,
        "attempt": record.attempt,
        "subject": record.subject,
        "error": record.error,
        "latency_seconds": record.latency_seconds,
    }


def _attempt_from_doc(doc: Document) -> AttemptRecord:
    return AttemptRecord(
        attempt_id=doc["_id"],
        alert_id=doc.get("alert_id", ""),
        kind=AlertKind(doc["kind"]),
        run_id=doc.get("run_id", ""),
        workflow_name=doc.get("workflow_name", ""),
        workflow_type=doc.get("workflow_type", ""),
        channel=Channel(doc["channel"]),
        recipient=doc.get("recipient", ""),
        at=doc["at"],
        status=DeliveryStatus(doc["status"]),
        attempt=int(doc.get("attempt", 0)),
        subject=doc.get("subject", ""),
        error=doc.get("error", ""),
        latency_seconds=float(doc.get("latency_seconds") or 0.0),
    )


def _watch_from_doc(doc: Document) -> RuntimeWatch:
    return RuntimeWatch(
        run_id=doc["run_id"],
        policy=doc.get("policy", ""),
        workflow_name=doc.get("workflow_name", ""),
        workflow_type=doc.get("workflow_type", ""),
        started_at=doc["started_at"],
        threshold_seconds=float(doc.get("threshold_seconds") or 0.0),
        due_at=doc["due_at"],
    )


def _page_token(at: datetime, attempt_id: str) -> str:
    return base64.urlsafe_b64encode(f"{at.isoformat()}|{attempt_id}".encode()).decode()


def _parse_page_token(token: str) -> tuple[datetime, str]:
    try:
        at, attempt_id = base64.urlsafe_b64decode(token.encode()).decode().split("|", 1)
        return datetime.fromisoformat(at), attempt_id
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"page_token {token!r} is not one this service handed out") from exc
