"""Webhooks (FEATURES T3): ``POST /webhooks/<workflow name>`` on the gateway's HTTP port
(``FLOWYARD_HTTP_ADDR``) starts a run of the workflow with the JSON body as trigger data.

The request must carry ``X-Flowyard-Signature: sha256=<hex>``, the HMAC-SHA256 of the raw
body keyed with the workflow's webhook secret (``flowyard workflow webhook-secret NAME``).
An optional ``X-Flowyard-Idempotency-Key`` maps to the run's idempotency key: the same key
returns the same run (also across gRPC ``StartRun``), never a second one.

Answers: 202 ``{"run_id", "created"}``; 400 body not JSON or bad header; 401 signature
missing or wrong (logged with the caller's address); 404 no such workflow, or it has no
webhook trigger; 409 the workflow is paused or a draft; 413 body over 1 MiB; 503 the
store or Kafka is unavailable. Every error body is ``{"error": "..."}``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from types import TracebackType

from aiohttp import web
from flowyard.adapters.kafka import Publisher
from flowyard.adapters.mongo import MongoStore
from flowyard.adapters.trigger_store import TriggerStore
from flowyard.config import Settings
from flowyard.domain.json import loads as strict_json
from flowyard.domain.run import TriggerInfo, TriggerKind
from flowyard.domain.triggers import idempotent_run_id
from flowyard.errors import InfrastructureError, WorkflowNotFoundError
from flowyard.metrics import ServiceMetrics
from flowyard.run_starts import refused, start_run

from flowyard_api_gateway.workflow_triggers import has_webhook

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
SIGNATURE_HEADER = "X-Flowyard-Signature"
IDEMPOTENCY_HEADER = "X-Flowyard-Idempotency-Key"
MAX_IDEMPOTENCY_KEY = 200


def _now() -> datetime:
    return datetime.now(UTC)


def sign(secret: str, body: bytes) -> str:
    """The signature header value for ``body``: ``sha256=<hex HMAC-SHA256>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signature_matches(secret: str, body: bytes, header: str) -> bool:
    return hmac.compare_digest(sign(secret, body), header.strip().lower())


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class WebhookServer:
    """The gateway's HTTP endpoint; ``port`` is the bound port (useful with port 0)."""

    def __init__(
        self,
        settings: Settings,
        store: MongoStore,
        publisher: Publisher,
        metrics: ServiceMetrics,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self._settings = settings
        self._store = store
        self._triggers = TriggerStore(store)
        self._publisher = publisher
        self._metrics = metrics
        self._clock = clock
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_post("/webhooks/{name}", self.handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        self.port = 0

    @property
    def address(self) -> str:
        host = self._settings.http_addr.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    async def __aenter__(self) -> WebhookServer:
        host, _, port = self._settings.http_addr.rpartition(":")
        await self._runner.setup()
        site = web.TCPSite(self._runner, host or "127.0.0.1", int(port or 0))
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise InfrastructureError(
                f"cannot listen for webhooks on {self._settings.http_addr}: {exc}"
            ) from exc
        self.port = int(self._runner.addresses[0][1])
        log.info("webhooks on http://%s/webhooks/<workflow>", self.address)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._runner.cleanup()

    async def handle(self, request: web.Request) -> web.Response:
        try:
            return await self._handle(request)
        except InfrastructureError as exc:
            log.warning("webhook %s: %s", request.path, exc)
            return _error(503, "Flowyard cannot reach its store or Kafka; try again later")

    async def _handle(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        source = request.remote or "unknown"
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _error(413, f"the body is larger than {MAX_BODY_BYTES} bytes")
        try:
            workflow = await self._store.latest_workflow(name)
        except WorkflowNotFoundError:
            return _error(404, f"no workflow named {name!r}")
        if not has_webhook(workflow):
            return _error(404, f"workflow {name!r} has no webhook trigger")
        secret = await self._triggers.webhook_secret(workflow.workflow_id)
        header = request.headers.get(SIGNATURE_HEADER, "")
        if secret is None or not header or not signature_matches(secret.secret, body, header):
            problem = "no" if not header else "a wrong"
            log.warning("webhook %s: %s %s header from %s; refused", name, problem,
                        SIGNATURE_HEADER, source)  # fmt: skip
            self._metrics.runs_not_started.labels(workflow=workflow.name, reason="signature").inc()
            return _error(
                401,
                f"{SIGNATURE_HEADER} must be sha256=<hex HMAC-SHA256 of the body with the "
                "workflow's webhook secret>",
            )
        try:
            data = strict_json(body)  # NaN, Infinity and 1e999 are not JSON either
        except ValueError as exc:
            return _error(400, f"the body is not valid JSON: {exc}")
        key = request.headers.get(IDEMPOTENCY_HEADER, "").strip()
        if len(key) > MAX_IDEMPOTENCY_KEY:
            return _error(400, f"{IDEMPOTENCY_HEADER} has more than {MAX_IDEMPOTENCY_KEY} chars")
        if refused(self._metrics, workflow, "webhook", f"from {source}"):
            state = workflow.state.value
            return _error(
                409,
                f"workflow {name!r} is {state} and starts no runs; "
                f"activate it with: flowyard workflow activate {name}",
            )
        trigger = TriggerInfo(
            kind=TriggerKind.WEBHOOK,
            data=data,
            detail=source,
            started_by="webhook",
            idempotency_key=key,
        )
        run_id = idempotent_run_id(workflow.workflow_id, key) if key else uuid.uuid4().hex
        started = await start_run(
            self._store,
            self._publisher,
            self._settings.topics,
            workflow,
            trigger,
            run_id,
            self._clock(),
        )
        return web.json_response({"run_id": started.run_id, "created": started.created}, status=202)
