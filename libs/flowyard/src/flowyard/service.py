"""Process lifecycle shared by the services: settings loaded once, logging, signals,
a /metrics endpoint, and a graceful stop (stop intake, let in-flight work finish,
then cancel what is left).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Coroutine
from typing import Any

from prometheus_client import CollectorRegistry

from flowyard.config import Settings, load_settings
from flowyard.metrics import ServiceMetrics, serve_metrics

ServiceBody = Callable[[Settings, ServiceMetrics, asyncio.Event], Coroutine[Any, Any, None]]

log = logging.getLogger(__name__)


def run_service(service: str, body: ServiceBody) -> None:
    """Entry point of a service process: runs ``body`` until SIGTERM or SIGINT.

    ``body`` must return soon after the stop event is set; it is cancelled if it has not
    returned within 30 seconds.
    """
    settings = load_settings(service)
    logging.basicConfig(
        level=settings.log_level,
        format=f"%(asctime)s %(levelname)s {service} %(name)s: %(message)s",
    )
    # aiokafka is chatty at INFO about every group join; its warnings still show.
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    asyncio.run(_main(service, settings, body))


async def _main(service: str, settings: Settings, body: ServiceBody) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    registry = CollectorRegistry()
    metrics = ServiceMetrics(registry, service)
    server = serve_metrics(registry, settings.metrics_host, settings.metrics_port)
    log.info("%s: metrics on http://%s:%d/metrics", service, settings.metrics_host, server.port)
    task = asyncio.create_task(body(settings, metrics, stop))
    try:
        await asyncio.wait([task, asyncio.create_task(stop.wait())], return_when="FIRST_COMPLETED")
        if not task.done():
            log.info("%s: stopping", service)
            done, _ = await asyncio.wait([task], timeout=30)
            if not done:
                log.warning("%s: still busy after 30 s, cancelling", service)
                task.cancel()
        await asyncio.gather(task, return_exceptions=False)
    except asyncio.CancelledError:
        pass
    finally:
        server.close()
        log.info("%s: stopped", service)
