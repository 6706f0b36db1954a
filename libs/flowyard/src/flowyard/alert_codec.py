"""Alert domain objects <-> their protobuf messages (flowyard/v1/alerts.proto)."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from flowyard.domain.alerts import (
    AlertKind,
    AlertPolicy,
    AttemptRecord,
    Channel,
    DeliveryStatus,
    RunSubscription,
)
from flowyard.v1 import alerts_pb2

KIND_TO_PROTO: dict[AlertKind, alerts_pb2.AlertKind.ValueType] = {
    AlertKind.FAILED: alerts_pb2.ALERT_KIND_FAILED,
    AlertKind.SUCCEEDED: alerts_pb2.ALERT_KIND_SUCCEEDED,
    AlertKind.RUNTIME: alerts_pb2.ALERT_KIND_RUNTIME,
    AlertKind.QUERY: alerts_pb2.ALERT_KIND_QUERY,
    AlertKind.STOPPED: alerts_pb2.ALERT_KIND_STOPPED,
    AlertKind.UPSTREAM: alerts_pb2.ALERT_KIND_UPSTREAM,
}
KIND_FROM_PROTO = {v: k for k, v in KIND_TO_PROTO.items()}

CHANNEL_TO_PROTO: dict[Channel, alerts_pb2.AlertChannel.ValueType] = {
    Channel.EMAIL: alerts_pb2.ALERT_CHANNEL_EMAIL,
    Channel.SLACK: alerts_pb2.ALERT_CHANNEL_SLACK,
}
CHANNEL_FROM_PROTO = {v: k for k, v in CHANNEL_TO_PROTO.items()}

STATUS_TO_PROTO: dict[DeliveryStatus, alerts_pb2.AlertDeliveryStatus.ValueType] = {
    DeliveryStatus.SENT: alerts_pb2.ALERT_DELIVERY_STATUS_SENT,
    DeliveryStatus.RETRYING: alerts_pb2.ALERT_DELIVERY_STATUS_RETRYING,
    DeliveryStatus.FAILED: alerts_pb2.ALERT_DELIVERY_STATUS_FAILED,
}
STATUS_FROM_PROTO = {v: k for k, v in STATUS_TO_PROTO.items()}


def _timestamp(moment: datetime | None) -> Timestamp | None:
    if moment is None:
        return None
    stamp = Timestamp()
    stamp.FromDatetime(moment.astimezone(UTC))
    return stamp


def time_from_proto(stamp: Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)


def policy_to_proto(policy: AlertPolicy) -> alerts_pb2.AlertPolicy:
    return alerts_pb2.AlertPolicy(
        name=policy.name,
        workflow_type=policy.workflow_type,
        workflow=policy.workflow,
        emails=list(policy.emails),
        slack_channels=list(policy.slack_channels),
        kinds=[KIND_TO_PROTO[k] for k in sorted(policy.kinds)],
        runtime_threshold_seconds=policy.runtime_threshold_seconds,
        created_at=_timestamp(policy.created_at),
        updated_at=_timestamp(policy.updated_at),
        updated_by=policy.updated_by,
    )


def policy_from_proto(message: alerts_pb2.AlertPolicy) -> AlertPolicy:
    """Raises ValueError naming an unknown kind."""
    kinds = set()
    for value in message.kinds:
        if value not in KIND_FROM_PROTO:
            raise ValueError(f"kinds: unknown alert kind {value}")
        kinds.add(KIND_FROM_PROTO[value])
    return AlertPolicy(
        name=message.name.strip(),
        workflow_type=message.workflow_type.strip(),
        workflow=message.workflow.strip(),
        emails=tuple(e.strip() for e in message.emails),
        slack_channels=tuple(c.strip() for c in message.slack_channels),
        kinds=frozenset(kinds),
        runtime_threshold_seconds=message.runtime_threshold_seconds,
        updated_by=message.updated_by,
    )


def subscription_to_proto(subscription: RunSubscription) -> alerts_pb2.RunSubscription:
    return alerts_pb2.RunSubscription(
        subscription_id=subscription.subscription_id,
        run_id=subscription.run_id,
        emails=list(subscription.emails),
        slack_channels=list(subscription.slack_channels),
        subscriber=subscription.subscriber,
        created_at=_timestamp(subscription.created_at),
    )


def attempt_to_proto(record: AttemptRecord) -> alerts_pb2.AlertAttempt:
    return alerts_pb2.AlertAttempt(
        attempt_id=record.attempt_id,
        alert_id=record.alert_id,
        kind=KIND_TO_PROTO[record.kind],
        run_id=record.run_id,
        workflow_name=record.workflow_name,
        workflow_type=record.workflow_type,
        channel=CHANNEL_TO_PROTO[record.channel],
        recipient=record.recipient,
        at=_timestamp(record.at),
        status=STATUS_TO_PROTO[record.status],
        error=record.error,
        attempt=record.attempt,
        subject=record.subject,
        latency_seconds=record.latency_seconds,
    )
