"""``flowyard workflow webhook-secret NAME [--rotate]`` against a fake gateway."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from flowyard.cli import main as cli
from flowyard.cli import rpc
from flowyard.v1 import gateway_pb2


class SecretGateway:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.workflows = self
        self.metadata: rpc.Metadata = ()

    def _secret(self, method: str, request: gateway_pb2.WebhookSecretRequest) -> Any:
        self.calls.append((method, request.name))
        return gateway_pb2.WebhookSecret(
            workflow_name=request.name, secret=f"whsec_{method}", path=f"/webhooks/{request.name}"
        )

    def GetWebhookSecret(self, request: gateway_pb2.WebhookSecretRequest, **_: Any) -> Any:
        return self._secret("get", request)

    def RotateWebhookSecret(self, request: gateway_pb2.WebhookSecretRequest, **_: Any) -> Any:
        return self._secret("rotate", request)


@pytest.fixture
def gateway(monkeypatch: pytest.MonkeyPatch) -> SecretGateway:
    fake = SecretGateway()

    @contextmanager
    def connect(*_: Any, **__: Any) -> Iterator[Any]:
        yield fake

    monkeypatch.setattr(rpc, "connect", connect)
    return fake


def test_webhook_secret_prints_the_secret_and_how_to_sign(
    gateway: SecretGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["workflow", "webhook-secret", "orders"]) == 0
    out, err = capsys.readouterr()
    assert out == "whsec_get\n"
    assert "POST /webhooks/orders" in err and "X-Flowyard-Signature: sha256=<hex>" in err
    assert gateway.calls == [("get", "orders")]


def test_webhook_secret_rotate(gateway: SecretGateway, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["workflow", "webhook-secret", "orders", "--rotate"]) == 0
    out, err = capsys.readouterr()
    assert out == "whsec_rotate\n" and "old secret no longer works" in err
    assert gateway.calls == [("rotate", "orders")]
