"""The trigger side of the workflow service: webhook secrets (read, rotate) and what a
workflow listing shows about each workflow's triggers (kinds, next fire time, last run).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import grpc
from flowyard import codec
from flowyard.adapters.mongo import MongoStore
from flowyard.adapters.trigger_store import TriggerStore, WebhookSecret
from flowyard.domain.triggers import next_fire_time, parse_trigger
from flowyard.domain.workflow import StoredWorkflow
from flowyard.errors import WorkflowStateError
from flowyard.v1 import gateway_pb2, workflow_pb2

from flowyard_api_gateway.errors import InvalidRequestError, translate_errors

Context = grpc.aio.ServicerContext[Any, Any]


def webhook_path(name: str) -> str:
    return f"/webhooks/{name}"


def has_webhook(workflow: StoredWorkflow) -> bool:
    return parse_trigger(workflow.definition.trigger.config).webhook


class WebhookSecretMethods:
    """``GetWebhookSecret`` and ``RotateWebhookSecret`` of the WorkflowService (a mixin
    of its servicer, which provides ``_store``)."""

    _store: MongoStore

    @translate_errors
    async def GetWebhookSecret(
        self, request: gateway_pb2.WebhookSecretRequest, context: Context
    ) -> gateway_pb2.WebhookSecret:
        workflow = await self._webhook_workflow(request)
        secret = await TriggerStore(self._store).ensure_webhook_secret(workflow.workflow_id)
        return _secret_message(workflow, secret)

    @translate_errors
    async def RotateWebhookSecret(
        self, request: gateway_pb2.WebhookSecretRequest, context: Context
    ) -> gateway_pb2.WebhookSecret:
        workflow = await self._webhook_workflow(request)
        secret = await TriggerStore(self._store).rotate_webhook_secret(workflow.workflow_id)
        return _secret_message(workflow, secret)

    async def _webhook_workflow(self, request: gateway_pb2.WebhookSecretRequest) -> StoredWorkflow:
        if not request.name:
            raise InvalidRequestError("name", "is required")
        workflow = await self._store.latest_workflow(request.name)
        if not has_webhook(workflow):
            raise WorkflowStateError(
                f"workflow {workflow.name!r} has no webhook trigger; add 'webhook: true' to "
                "its trigger node's config"
            )
        return workflow


def _secret_message(workflow: StoredWorkflow, secret: WebhookSecret) -> gateway_pb2.WebhookSecret:
    return gateway_pb2.WebhookSecret(
        workflow_name=workflow.name,
        secret=secret.secret,
        created_at=codec.time_to_proto(secret.created_at),
        path=webhook_path(workflow.name),
    )


async def describe_workflow(
    store: MongoStore, workflow: StoredWorkflow, now: datetime | None = None
) -> workflow_pb2.Workflow:
    """The workflow message with its triggers, next schedule tick and last run filled in."""
    message = codec.workflow_to_proto(workflow)
    spec = parse_trigger(workflow.definition.trigger.config)
    message.triggers.extend(spec.describe())
    if spec.schedule is not None:
        tick = next_fire_time(spec.schedule, now or datetime.now(UTC))
        if tick is not None:
            message.next_fire_at.FromDatetime(tick)
    last = await TriggerStore(store).last_run(workflow.workflow_id)
    if last is not None:
        message.last_run.CopyFrom(
            workflow_pb2.LastRun(
                run_id=last.run_id,
                status=last.status.value,
                created_at=codec.time_to_proto(last.created_at),
            )
        )
    return message


async def describe_workflows(
    store: MongoStore, workflows: list[StoredWorkflow]
) -> list[workflow_pb2.Workflow]:
    now = datetime.now(UTC)
    return list(await asyncio.gather(*(describe_workflow(store, w, now) for w in workflows)))


def manual_starts(workflow: StoredWorkflow) -> bool:
    """False when the trigger says ``manual: false``: no gRPC/CLI starts, only the
    workflow's schedule, webhook, events or upstream runs (a dry run still works)."""
    return parse_trigger(workflow.definition.trigger.config).manual
