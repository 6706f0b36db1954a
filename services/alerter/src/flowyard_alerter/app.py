"""The alerter's Kafka side: a faust app that reads ``flowyard.run-events`` and delivers
alerts (FEATURES A1-A8).

:class:`Alerter` owns one ``faust.App`` and runs it inside the caller's event loop with
an explicit async lifecycle (``async with Alerter(settings, metrics) as alerter: ...``);
faust's Worker and CLI are not used, so signals, logging and /metrics stay with
:func:`flowyard.service.run_service`.

The flow of one alert::

    run-events (keyed by run) --run-events agent--> AlertPlanner
        decides kind + recipients, stores each alert under its dedup key (MongoDB)
        --> <group>-deliveries (faust topic, keyed by destination: "email:a@b", "slack:#ops")
        --deliveries agent--> Deliverer: claim -> rate limit (faust table) -> send -> record
    poll loop (FLOWYARD_ALERT_POLL_SECONDS) --> Poller: retries and lost hand-overs that are
        due, runtime watches whose threshold passed

Why this split: exactly-once per (run, kind, recipient) needs a unique key that survives
restarts and is shared by every instance, which the alert's MongoDB ``_id`` is; retries
need durable due times, which the same document carries. The per-destination rate limit
is state only the deliveries agent touches, and the deliveries topic is keyed by
destination, so each destination's token bucket lives in one partition of a faust table
(``alert-rate``, backed by its changelog topic) owned by exactly one instance at a time.

How faust is configured, and why:

* app id = the consumer group (``<prefix>.alerter``); brokers from ``kafka_bootstrap``.
* Flowyard's topics are declared ``internal=False`` with raw key/value serializers: faust
  only creates or reconfigures topics it owns (``internal=True``), so it never touches
  ours (``ensure_topics`` creates them). The topics faust owns (``<group>-deliveries`` and
  the table's changelog) get ``topic_partitions`` partitions and replication factor 1.
* ``topic_disable_leader=True``: nothing uses ``on_leader=True`` timers (every instance
  polls; moving a due time in MongoDB is the claim), so faust does not create its
  ``<id>-__assignor-__leader`` topic.
* ``broker_session_timeout=10``: a dead instance's partitions (and so its alerts) are
  taken over after 10 s rather than faust's default 60 s.
* ``store="memory://"``: the table is rebuilt from its changelog at start; faust's data
  directory is a temporary directory removed on exit.
* no web server, no autodiscovery (no module scanning at start).

Delivery of run-events: faust commits offsets of acknowledged messages every
``broker_commit_every`` messages / ``broker_commit_interval`` seconds and once more on
stop, after flushing its producer. An event is handled (its alerts stored) before faust
acknowledges it; a crash before the commit re-delivers it and the dedup key drops the
repeats. faust acknowledges a message once the agent has moved past it, even when the
agent body raised on it, so the handler turns every failure into a dead letter carrying
the reason (after a few retries when MongoDB is unreachable).

``RunEventHandler`` holds the per-message logic without faust, so it can be driven
directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import httpx
from aiokafka.errors import KafkaError as AioKafkaError

# faust imports its modules lazily on first attribute access (~0.5 s for App and aiohttp);
# importing App here keeps that off the event loop.
from faust import App
from flowyard.adapters.alert_store import AlertStore
from flowyard.adapters.credentials import CredentialStore, cipher_from_key
from flowyard.adapters.kafka import Record
from flowyard.adapters.mongo import MongoStore
from flowyard.alert_codec import attempt_to_proto
from flowyard.codec import RUN_STATUS_FROM_PROTO, decode_envelope
from flowyard.config import Settings
from flowyard.domain.alerts import Alert, AttemptRecord, TokenBucket
from flowyard.domain.run import RunStatus
from flowyard.errors import DecodeError, InfrastructureError
from flowyard.metrics import ServiceMetrics
from flowyard.v1 import events_pb2

from flowyard_alerter.delivery import Deliverer, Poller, Senders
from flowyard_alerter.planner import AlertPlanner

# faust also loads its transport, assignor and table modules lazily, during App.start;
# loading them with this module keeps those imports off the event loop as well.
for _module in (
    "faust.assignor",
    "faust.tables",
    "faust.transport.drivers.aiokafka",
    "faust.worker",
):
    importlib.import_module(_module)

SERVICE = "alerter"
LAG_INTERVAL_SECONDS = 5.0
SESSION_TIMEOUT_SECONDS = 10.0
# Run events handled at once by one instance.
PLANNERS = 4
DRAIN_SECONDS = 10.0
# A run event whose handling hit an unreachable MongoDB is tried this often (with 1, 2,
# 4 ... s between) before it is dead-lettered.
INFRASTRUCTURE_TRIES = 5

log = logging.getLogger(__name__)

DeadLetterSink = Callable[[Record, str], Awaitable[None]]
EnvelopeSink = Callable[[events_pb2.Envelope], Awaitable[None]]


@dataclass(frozen=True)
class FinishedRun:
    """A run that reached a final status, as the alerter learned it from run-events."""

    event_id: str
    run_id: str
    workflow_id: str
    workflow_version: int
    workflow_name: str
    workflow_type: str
    status: RunStatus
    previous: RunStatus | None
    failed_node_id: str
    error_code: str
    error_message: str

    @property
    def workflow_label(self) -> str:
        return self.workflow_name or self.workflow_id or "unknown"


def dead_letter_for(record: Record, reason: str) -> events_pb2.DeadLetter:
    letter = events_pb2.DeadLetter(
        source_topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key or b"",
        value=record.value or b"",
        reason=reason,
        service=SERVICE,
    )
    letter.time.GetCurrentTime()
    return letter


def finished_run_from(envelope: events_pb2.Envelope) -> FinishedRun | None:
    """The finished run a ``run_status_changed`` envelope reports, or None if the run
    is not finished. Raises DecodeError for a status this version does not know."""
    change = envelope.run_status_changed
    status = RUN_STATUS_FROM_PROTO.get(change.status)
    if status is None:
        raise DecodeError(f"run_status_changed has an unknown status ({change.status})")
    if not status.finished:
        return None
    return FinishedRun(
        event_id=envelope.event_id,
        run_id=envelope.run_id,
        workflow_id=envelope.workflow_id,
        workflow_version=envelope.workflow_version,
        workflow_name=change.workflow_name,
        workflow_type=change.workflow_type,
        status=status,
        previous=RUN_STATUS_FROM_PROTO.get(change.previous),
        failed_node_id=change.failed_node_id,
        error_code=change.error.code,
        error_message=change.error.message,
    )


async def _ignore(envelope: events_pb2.Envelope) -> None:
    return None


class RunEventHandler:
    """Handles one run-events message; never raises for a bad message (it is
    dead-lettered through ``dead_letter`` instead). ``plan`` turns the event into alerts."""

    def __init__(
        self,
        metrics: ServiceMetrics,
        dead_letter: DeadLetterSink,
        plan: EnvelopeSink = _ignore,
        *,
        retry_base_seconds: float = 1.0,
    ) -> None:
        self._metrics = metrics
        self._dead_letter = dead_letter
        self._plan = plan
        self._retry_base = retry_base_seconds

    async def handle(self, record: Record) -> None:
        self._metrics.messages_consumed.labels(topic=record.topic).inc()
        try:
            envelope = decode_envelope(record.value)
            if envelope.WhichOneof("payload") == "run_status_changed":
                run = finished_run_from(envelope)
                if run is not None:
                    await self.run_finished(run)
            await self._plan_with_retries(envelope)
        except DecodeError as exc:
            await self._dead_letter(record, str(exc))
        except Exception as exc:
            # The message is acknowledged either way (faust acks what the agent moved
            # past); the dead letter keeps it, with the reason, for a replay.
            log.exception(
                "alerter: failed on %s[%d]@%d", record.topic, record.partition, record.offset
            )
            await self._dead_letter(record, f"alerter failed: {type(exc).__name__}: {exc}")

    async def _plan_with_retries(self, envelope: events_pb2.Envelope) -> None:
        for attempt in range(1, INFRASTRUCTURE_TRIES + 1):
            try:
                await self._plan(envelope)
                return
            except InfrastructureError as exc:
                if attempt == INFRASTRUCTURE_TRIES:
                    raise
                wait = self._retry_base * 2 ** (attempt - 1)
                log.warning("alerter: %s; trying again in %g s", exc, wait)
                await asyncio.sleep(wait)

    async def run_finished(self, run: FinishedRun) -> None:
        """One finished run: counted, and logged."""
        self._metrics.runs_finished.labels(workflow=run.workflow_label, status=run.status).inc()
        if run.status is RunStatus.FAILED:
            log.warning(
                "run %s of workflow %s (v%d) failed at node %s: %s%s",
                run.run_id,
                run.workflow_label,
                run.workflow_version,
                run.failed_node_id or "?",
                f"[{run.error_code}] " if run.error_code else "",
                run.error_message or "(no error message)",
            )
        else:
            log.info(
                "run %s of workflow %s (v%d) %s",
                run.run_id,
                run.workflow_label,
                run.workflow_version,
                run.status,
            )


class TableRateLimiter:
    """A token bucket per destination in a faust table; called only from the deliveries
    agent, whose partitions (by destination) are the table's."""

    def __init__(self, table: Any, rate_per_minute: float, burst: int) -> None:
        self._table = table
        self._rate = rate_per_minute
        self._burst = burst

    def take(self, destination: str, now: float) -> float:
        stored = self._table.get(destination)
        if isinstance(stored, list) and len(stored) == 2:
            tokens, updated = float(stored[0]), float(stored[1])
        else:
            tokens, updated = float(self._burst), now
        bucket = TokenBucket(tokens, updated, self._rate, self._burst)
        wait = bucket.take(now)
        self._table[destination] = [bucket.tokens, bucket.updated]
        return wait


def delivery_message(alert: Alert) -> tuple[bytes, bytes]:
    """Key (the destination) and value of the hand-over of ``alert`` to delivery."""
    value = json.dumps({"id": alert.alert_id, "attempts": alert.attempts}).encode()
    return alert.recipient.destination.encode(), value


def parse_delivery_message(value: bytes | None) -> tuple[str, int]:
    try:
        decoded = json.loads(value or b"")
        return str(decoded["id"]), int(decoded["attempts"])
    except (ValueError, KeyError, TypeError) as exc:
        raise DecodeError(f"not an alert hand-over: {exc}") from exc


def alert_dead_letter_value(alert: Alert) -> bytes:
    return json.dumps(
        {
            "alert_id": alert.alert_id,
            "kind": alert.kind.value,
            "run_id": alert.run_id,
            "workflow": alert.workflow_name,
            "channel": alert.recipient.channel.value,
            "recipient": alert.recipient.address,
            "subject": alert.subject,
            "body": alert.body,
            "attempts": alert.attempts,
        }
    ).encode()


class Alerter:
    """The alerter's faust app and its stores, started and stopped inside the running
    event loop."""

    def __init__(
        self,
        settings: Settings,
        metrics: ServiceMetrics,
        *,
        lag_interval: float = LAG_INTERVAL_SECONDS,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.group = settings.topics.group(SERVICE)
        self.deliveries_topic_name = f"{self.group}-deliveries"
        self.handler = RunEventHandler(metrics, self.dead_letter, self._plan)
        self._lag_interval = lag_interval
        self._lag_labels: set[tuple[str, str]] = set()
        self._datadir: str | None = None
        self._app: Any = None
        self._dead_letter_topic: Any = None
        self._deliveries_topic: Any = None
        self._alerts_topic: Any = None
        self._stopped: asyncio.Task[Any] | None = None
        self._resources = contextlib.AsyncExitStack()
        self._planner: AlertPlanner | None = None
        self._deliverer: Deliverer | None = None
        self._poller: Poller | None = None
        self._store: AlertStore | None = None
        self._credentials: CredentialStore | None = None
        self._polling: asyncio.Task[None] | None = None
        self._senders: Senders | None = None

    @property
    def app(self) -> Any:
        if self._app is None:
            raise RuntimeError("Alerter is not started: use `async with Alerter(...)`")
        return self._app

    async def __aenter__(self) -> Alerter:
        self._datadir = tempfile.mkdtemp(prefix="flowyard-alerter-")
        try:
            await self._open_resources()
            self._app = self._build_app(asyncio.get_running_loop())
            # Returns once the consumer has joined the group and got its partitions.
            await self._app.start()
        except BaseException as exc:
            await self._close()
            if isinstance(exc, AioKafkaError):
                raise InfrastructureError(f"alerter cannot start faust: {exc}") from exc
            raise
        # Resolves when faust stops or crashes (a crash in any of its services or in the
        # consumer thread marks the whole app crashed); awaited again in _close.
        self._stopped = asyncio.create_task(self._app.wait_until_stopped())
        # Our own loop rather than a faust timer: a slow poll (a backlog of retries) delays
        # the next one instead of overlapping it.
        self._polling = asyncio.create_task(self._poll_loop())
        log.info("alerter: consuming %s as group %s", self.settings.topics.run_events, self.group)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._close()

    async def _open_resources(self) -> None:
        settings = self.settings
        stack = self._resources
        runs = await stack.enter_async_context(MongoStore(settings.mongo_url, settings.mongo_db))
        alerts = AlertStore(runs.database)
        await alerts.ensure_indexes()
        # Only to read the Slack bot token credential (FLOWYARD_CREDENTIALS_KEY).
        self._credentials = CredentialStore(
            runs.database, cipher_from_key(settings.credentials_key)
        )
        http = await stack.enter_async_context(httpx.AsyncClient())
        self._store = alerts
        self._planner = AlertPlanner(alerts, runs, settings.alerts, self.enqueue)
        self._senders = Senders(settings.smtp, settings.slack, http)
        self._poller = Poller(alerts, settings.alerts, self.enqueue, self._planner.runtime_due)

    async def run_until(self, stop: asyncio.Event) -> None:
        """Return when ``stop`` is set; raise InfrastructureError if faust stops first."""
        assert self._stopped is not None, "Alerter is not started"
        stop_requested = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait([stop_requested, self._stopped], return_when="FIRST_COMPLETED")
        finally:
            stop_requested.cancel()
        if not stop.is_set():
            app = self.app
            reason = app.crash_reason if app.crashed else "stopped"
            raise InfrastructureError(f"alerter: faust app ended unexpectedly: {reason!r}")

    async def _close(self) -> None:
        if self._polling is not None:
            self._polling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._polling
            self._polling = None
        try:
            if self._app is not None and self._deliverer is not None:
                # Attempts in flight publish their records while faust's producer runs.
                await self._deliverer.drain(DRAIN_SECONDS)
            if self._app is not None:
                # Stops intake, waits for the message in flight, flushes the producer,
                # commits, then stops the consumer thread and cancels faust's tasks.
                await self._app.stop()
            if self._stopped is not None:
                await self._stopped
            if self._deliverer is not None:
                # Attempts still going: a few seconds to finish, else retried after the
                # lease by whichever instance polls next.
                await self._deliverer.drain(DRAIN_SECONDS)
        finally:
            self._app = None
            self._stopped = None
            self._dead_letter_topic = None
            self._deliveries_topic = None
            self._alerts_topic = None
            for topic, partition in self._lag_labels:
                self.metrics.consumer_lag.remove(topic, partition, self.group)
            self._lag_labels.clear()
            await self._resources.aclose()
            if self._datadir is not None:
                shutil.rmtree(self._datadir, ignore_errors=True)
                self._datadir = None

    def _build_app(self, loop: asyncio.AbstractEventLoop) -> Any:
        settings = self.settings
        app = App(
            self.group,
            broker=[f"kafka://{host.strip()}" for host in settings.kafka_bootstrap.split(",")],
            broker_client_id=f"flowyard-{SERVICE}",
            loop=loop,
            autodiscover=False,
            web_enabled=False,
            store="memory://",
            datadir=self._datadir,
            consumer_auto_offset_reset="earliest",
            topic_replication_factor=1,
            topic_partitions=settings.topic_partitions,
            topic_disable_leader=True,
            # A killed instance's partitions move to the survivors after this (faust's
            # default of 60 s would hold alerts back for a minute).
            broker_session_timeout=SESSION_TIMEOUT_SECONDS,
            broker_heartbeat_interval=3.0,
        )

        def ours(name: str) -> Any:
            return app.topic(name, internal=False, key_serializer="raw", value_serializer="raw")

        run_events = ours(settings.topics.run_events)
        self._dead_letter_topic = ours(settings.topics.dead_letter)
        self._alerts_topic = ours(settings.topics.alerts)
        deliveries = app.topic(
            self.deliveries_topic_name,
            internal=True,
            partitions=settings.topic_partitions,
            key_serializer="raw",
            value_serializer="raw",
        )
        self._deliveries_topic = deliveries
        rate_table = app.Table("alert-rate", default=None, partitions=settings.topic_partitions)
        assert self._store is not None and self._senders is not None
        assert self._credentials is not None
        self._deliverer = Deliverer(
            self._store,
            self._senders,
            settings.alerts,
            self.metrics,
            TableRateLimiter(
                rate_table, settings.alerts.rate_per_minute, settings.alerts.rate_burst
            ),
            on_attempt=self._publish_attempt,
            dead_letter=self._dead_letter_alert,
            credentials=self._credentials,
        )
        handler = self.handler
        deliverer = self._deliverer

        async def run_events_agent(stream: Any) -> None:
            async for event in stream.events():
                message = event.message
                await handler.handle(
                    Record(
                        message.topic, message.partition, message.offset, message.key, message.value
                    )
                )

        async def deliveries_agent(stream: Any) -> None:
            async for event in stream.events():
                message = event.message
                record = Record(
                    message.topic, message.partition, message.offset, message.key, message.value
                )
                try:
                    alert_id, attempts = parse_delivery_message(message.value)
                    destination = (message.key or b"").decode(errors="replace")
                    await deliverer.deliver(alert_id, attempts, destination)
                except DecodeError as exc:
                    await self.dead_letter(record, str(exc))
                except Exception:
                    # The alert stays pending with a due time: the poller brings it back.
                    log.exception(
                        "alerter: delivery of %r failed; the poller retries it", message.value
                    )

        # Events of different runs are independent (each alert has its own key), so a few
        # are planned at once; faust commits offsets only up to the oldest unfinished one.
        app.agent(run_events, name=f"{self.group}.run-events", concurrency=PLANNERS)(
            run_events_agent
        )
        app.agent(deliveries, name=f"{self.group}.deliveries")(deliveries_agent)
        app.timer(self._lag_interval)(self._record_lag)
        return app

    # --- hand-overs --------------------------------------------------------------------

    async def _plan(self, envelope: events_pb2.Envelope) -> None:
        assert self._planner is not None
        await self._planner.on_envelope(envelope)

    async def enqueue(self, alert: Alert) -> None:
        """Hand ``alert`` to the deliveries agent owning its destination."""
        key, value = delivery_message(alert)
        # force=True: send now, not as an attachment released at commit time; and wait for
        # the broker, so a run event is acknowledged only once its alerts are handed over.
        sent = await self._deliveries_topic.send(key=key, value=value, force=True)
        await sent

    async def _poll_loop(self) -> None:
        assert self._poller is not None
        while True:
            await asyncio.sleep(self.settings.alerts.poll_seconds)
            try:
                await self._poller.poll()
            except Exception:
                log.exception("alerter: polling for due alerts failed; trying again")

    async def _publish_attempt(self, record: AttemptRecord) -> None:
        if self._alerts_topic is None:  # stopping: the activity log has it anyway
            return
        value = attempt_to_proto(record).SerializeToString()
        await self._alerts_topic.send(key=record.run_id.encode(), value=value, force=True)

    async def _dead_letter_alert(self, alert: Alert, reason: str) -> None:
        if self._dead_letter_topic is None:
            log.error("alerter: stopping; alert %s failed but is not dead-lettered", alert.alert_id)
            return
        letter = events_pb2.DeadLetter(
            source_topic=self.deliveries_topic_name,
            partition=-1,
            offset=-1,
            key=alert.recipient.destination.encode(),
            value=alert_dead_letter_value(alert),
            reason=f"alert undeliverable: {reason}",
            service=SERVICE,
        )
        letter.time.GetCurrentTime()
        sent = await self._dead_letter_topic.send(
            key=alert.run_id.encode(), value=letter.SerializeToString(), force=True
        )
        await sent
        self.metrics.dead_letters.labels(topic=self.deliveries_topic_name).inc()

    async def dead_letter(self, record: Record, reason: str) -> None:
        """Publish ``record`` to the dead-letter topic and wait for the broker's ack."""
        log.warning(
            "alerter: dead-lettering %s[%d]@%d: %s",
            record.topic,
            record.partition,
            record.offset,
            reason,
        )
        letter = dead_letter_for(record, reason)
        # force=True: send now, not as an attachment released at commit time.
        sent = await self._dead_letter_topic.send(
            key=record.key, value=letter.SerializeToString(), force=True
        )
        await sent
        self.metrics.dead_letters.labels(topic=record.topic).inc()

    async def _record_lag(self) -> None:
        try:
            self.record_lag()
        except Exception:
            # Monitoring must never take the agent down; try again at the next tick.
            log.exception("alerter: cannot compute consumer lag")

    def record_lag(self) -> None:
        """consumer_lag = high watermark - committed offset, per assigned partition of
        run-events; gauges of partitions no longer assigned are removed."""
        consumer = self.app.consumer
        topic = self.settings.topics.run_events
        # faust keeps the committed offsets it read at assignment and the ones it has
        # committed since (None for "nothing committed"); it has no public accessor.
        committed: dict[Any, int | None] = consumer._committed_offset
        assigned: set[tuple[str, str]] = set()
        for tp in consumer.assignment():
            if tp.topic != topic:
                continue
            labels = (tp.topic, str(tp.partition))
            assigned.add(labels)
            highwater = consumer.highwater(tp)
            if highwater is None:  # nothing fetched from this partition yet
                continue
            lag = max(0, highwater - (committed.get(tp) or 0))
            self.metrics.consumer_lag.labels(*labels, self.group).set(lag)
            self._lag_labels.add(labels)
        for topic_name, partition in self._lag_labels - assigned:
            self.metrics.consumer_lag.remove(topic_name, partition, self.group)
        self._lag_labels &= assigned
