"""``flowyard-alerter``: consumes run lifecycle events and hands finished runs to alerting."""

from __future__ import annotations

import asyncio

from flowyard.adapters.kafka import ensure_topics
from flowyard.config import Settings
from flowyard.metrics import ServiceMetrics
from flowyard.service import run_service

from flowyard_alerter.app import SERVICE, Alerter


async def serve(settings: Settings, metrics: ServiceMetrics, stop: asyncio.Event) -> None:
    await ensure_topics(settings)
    async with Alerter(settings, metrics) as alerter:
        await alerter.run_until(stop)


def main() -> None:
    run_service(SERVICE, serve)


if __name__ == "__main__":
    main()
