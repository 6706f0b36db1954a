"""Publish events that start workflows (FEATURES T4), from any Python program.

    from flowyard.producer import EventProducer

    with EventProducer("127.0.0.1:9092") as producer:
        event_id = producer.send("order.created", {"order": 17, "amount": 250}, source="shop")

Each event is one JSON object with CloudEvents attributes (``specversion``, ``id``,
``source``, ``type``, ``time``, ``data``) on ``<prefix>.events.ingest`` (the default prefix
is ``flowyard``), keyed by its id. Workflows whose trigger has ``event: {type: ...}`` (and
whose filter the event passes) each start one run; sending the same id again starts
nothing new, so a retry after a timeout is safe. Any other Kafka client can do the same by
writing such JSON (see the README); this module is only a convenience.

Built on kafka-python and synchronous: ``send`` returns once the broker stored the event.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError

from flowyard.config import Topics
from flowyard.domain.json import JsonValue
from flowyard.errors import InfrastructureError

SPEC_VERSION = "1.0"


def make_event(
    event_type: str,
    data: JsonValue = None,
    *,
    source: str,
    event_id: str | None = None,
    subject: str | None = None,
    time: datetime | None = None,
) -> dict[str, Any]:
    """The CloudEvents-style JSON object Flowyard reads."""
    if not event_type:
        raise ValueError("an event needs a type")
    event: dict[str, Any] = {
        "specversion": SPEC_VERSION,
        "id": event_id or uuid.uuid4().hex,
        "source": source,
        "type": event_type,
        "time": (time or datetime.now(UTC)).isoformat(),
        "data": data,
    }
    if subject is not None:
        event["subject"] = subject
    return event


class EventProducer:
    def __init__(
        self,
        bootstrap: str,
        *,
        topic_prefix: str = "flowyard",
        topic: str | None = None,
        client_id: str = "flowyard-producer",
        timeout_seconds: float = 30.0,
    ) -> None:
        self.topic = topic or Topics(topic_prefix).events_ingest
        self._timeout = timeout_seconds
        try:
            self._producer = KafkaProducer(
                bootstrap_servers=bootstrap.split(","),
                client_id=client_id,
                acks="all",
                retries=5,
            )
        except KafkaError as exc:
            raise InfrastructureError(f"cannot reach Kafka at {bootstrap}: {exc}") from exc

    def send(
        self,
        type: str,  # the CloudEvents attribute's name
        data: JsonValue = None,
        *,
        source: str = "flowyard.producer",
        id: str | None = None,  # the CloudEvents attribute's name
        subject: str | None = None,
        time: datetime | None = None,
    ) -> str:
        """Publish one event and wait for the broker; returns the event id."""
        event = make_event(type, data, source=source, event_id=id, subject=subject, time=time)
        payload = json.dumps(event, separators=(",", ":")).encode()
        try:
            future = self._producer.send(self.topic, payload, key=str(event["id"]).encode())
            future.get(timeout=self._timeout)
        except KafkaError as exc:
            raise InfrastructureError(f"event {event['id']} not published: {exc}") from exc
        return str(event["id"])

    def close(self) -> None:
        self._producer.close(timeout=self._timeout)

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
