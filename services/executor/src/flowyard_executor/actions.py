"""Runs one attempt of an action node, whatever its type, and says how it went.

Config templates (``{{ upstream.fetch.id }}``) are rendered here against the task's
input, so handlers only ever see concrete values. Code nodes get no templating: their
Python reads the same data from ``inputs``.

Credentials: the ones a node names (``{{ credentials.NAME }}`` in its config; a code node's
``credentials: [NAME]`` list, read as ``inputs["credentials"]["NAME"]``) are decrypted for
this task alone and added to its scope, never to the recorded input; every value is
redacted from the outcome before it leaves here (see :mod:`flowyard_executor.credentials`).
"""

from __future__ import annotations

from types import TracebackType

import httpx
from flowyard.adapters.credentials import CredentialStore
from flowyard.config import Settings
from flowyard.domain import expressions
from flowyard.domain.credentials import SCOPE_NAME, CredentialError
from flowyard.domain.definition import NodeType
from flowyard.domain.json import JsonObject, JsonValue
from flowyard.domain.run import TaskError
from flowyard.errors import ExpressionError

from flowyard_executor.credentials import redact_outcome, task_credentials
from flowyard_executor.nodes import EmailSender, NodeOutcome, QueryChecker, SlackPoster, run_http
from flowyard_executor.sandbox import CodeSandbox


class Actions:
    """The clients action nodes share, opened once per executor."""

    def __init__(
        self, settings: Settings, sandbox: CodeSandbox, credentials: CredentialStore | None = None
    ) -> None:
        self._sandbox = sandbox
        self._credentials = credentials
        # Redirects are followed like a browser would; TLS verification stays on.
        self._http = httpx.AsyncClient(follow_redirects=True)
        self._email = EmailSender(settings.smtp)
        self._slack = SlackPoster(settings.slack, self._http)
        self._query = QueryChecker()

    async def __aenter__(self) -> Actions:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._http.aclose()

    async def run(
        self, node_type: str, config: JsonObject, inputs: JsonValue, timeout_seconds: float | None
    ) -> NodeOutcome:
        if not isinstance(inputs, dict):
            return NodeOutcome(error=TaskError("node.invalid", "task input is not an object"))
        try:
            secrets = await task_credentials(self._credentials, config)
        except CredentialError as exc:
            return NodeOutcome(error=TaskError(exc.code, str(exc)))
        if secrets:
            inputs = {**inputs, SCOPE_NAME: dict(secrets)}
        outcome = await self._run(node_type, config, inputs, timeout_seconds)
        return redact_outcome(outcome, secrets)

    async def _run(
        self, node_type: str, config: JsonObject, inputs: JsonObject, timeout_seconds: float | None
    ) -> NodeOutcome:
        if node_type == NodeType.CODE.value:
            return await self._code(config, inputs, timeout_seconds)
        try:
            rendered = expressions.render(config, inputs)
        except ExpressionError as exc:
            return NodeOutcome(error=TaskError(exc.code, f"config: {exc}"))
        if not isinstance(rendered, dict):
            return NodeOutcome(error=TaskError("node.invalid", "config must be a mapping"))
        if node_type == NodeType.HTTP.value:
            return await run_http(rendered, self._http, timeout_seconds)
        if node_type == NodeType.EMAIL.value:
            return await self._email.send(rendered, timeout_seconds=timeout_seconds)
        if node_type == NodeType.SLACK.value:
            return await self._slack.post(rendered, timeout_seconds=timeout_seconds)
        if node_type == NodeType.QUERY.value:
            return await self._query.check(rendered, self._http, timeout_seconds=timeout_seconds)
        return NodeOutcome(
            error=TaskError("node.unsupported", f"executors do not run {node_type!r} nodes")
        )

    async def _code(
        self, config: JsonObject, inputs: JsonObject, timeout_seconds: float | None
    ) -> NodeOutcome:
        source = config.get("source")
        if not isinstance(source, str):
            return NodeOutcome(error=TaskError("node.invalid", "code node without config.source"))
        result = await self._sandbox.run(source, inputs, timeout_seconds=timeout_seconds)
        if result.ok:
            return NodeOutcome(output=result.output, logs=result.logs)
        return NodeOutcome(
            error=TaskError(result.error_code, result.error_message, result.stack_trace),
            logs=result.logs,
        )
