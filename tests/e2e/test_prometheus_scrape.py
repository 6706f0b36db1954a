"""A real Prometheus (Debian's ``prometheus`` package) scrapes all four services, started
as processes on free ports, and ``promtool check metrics`` accepts what each serves
(FEATURES H6). Skipped, saying why, where prometheus/promtool are not installed."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from flowyard.config import Settings

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not (shutil.which("prometheus") and shutil.which("promtool")),
        reason="prometheus/promtool not on PATH (Debian: apt-get install prometheus)",
    ),
]

SERVICES = ("api-gateway", "scheduler", "executor", "alerter")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


@pytest.fixture
def services(settings: Settings, tmp_path: Path) -> Iterator[dict[str, int]]:
    """The four services as processes; service name -> metrics port."""
    ports = {name: free_port() for name in SERVICES}
    bin_dir = Path(sys.executable).parent
    processes = []
    for name, port in ports.items():
        env = {
            **os.environ,
            "FLOWYARD_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
            "FLOWYARD_MONGO_URL": settings.mongo_url,
            "FLOWYARD_MONGO_DB": settings.mongo_db,
            "FLOWYARD_TOPIC_PREFIX": settings.topics.prefix,
            "FLOWYARD_GRPC_ADDR": f"127.0.0.1:{free_port()}",
            "FLOWYARD_HTTP_ADDR": f"127.0.0.1:{free_port()}",
            "FLOWYARD_METRICS_HOST": "127.0.0.1",
            "FLOWYARD_METRICS_PORT": str(port),
            "FLOWYARD_LOG_LEVEL": "WARNING",
        }
        log = (tmp_path / f"{name}.log").open("wb")
        processes.append(
            subprocess.Popen(
                [str(bin_dir / f"flowyard-{name}")], env=env, stdout=log, stderr=log, cwd=tmp_path
            )
        )
    try:
        yield ports
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture
def prometheus(services: dict[str, int], tmp_path: Path) -> Iterator[str]:
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": [
            {"job_name": f"flowyard-{name}", "static_configs": [{"targets": [f"127.0.0.1:{p}"]}]}
            for name, p in services.items()
        ],
    }
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    log = (tmp_path / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={path}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=log,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


async def test_prometheus_scrapes_every_service_and_promtool_accepts_the_metrics(
    services: dict[str, int], prometheus: str
) -> None:
    jobs = {f"flowyard-{name}" for name in services}

    async def targets_up() -> dict[str, str]:
        while True:
            try:
                data = json.loads(await asyncio.to_thread(fetch, f"{prometheus}/api/v1/targets"))
                health = {t["labels"]["job"]: t["health"] for t in data["data"]["activeTargets"]}
                if set(health) == jobs and set(health.values()) == {"up"}:
                    return health
            except OSError:
                pass  # Prometheus (or a service) is still starting
            await asyncio.sleep(0.5)

    await asyncio.wait_for(targets_up(), timeout=90)

    # Every service's flowyard_* series are in Prometheus.
    query = "count by (job) ({__name__=~'flowyard_.+'})"

    async def series_per_job() -> dict[str, int]:
        while True:
            url = f"{prometheus}/api/v1/query?query={urllib.request.quote(query)}"
            data = json.loads(await asyncio.to_thread(fetch, url))
            found = {r["metric"]["job"]: int(r["value"][1]) for r in data["data"]["result"]}
            if set(found) == jobs:
                return found
            await asyncio.sleep(0.5)

    counts = await asyncio.wait_for(series_per_job(), timeout=30)
    assert all(count > 0 for count in counts.values()), counts

    for name, port in services.items():
        text = await asyncio.to_thread(fetch, f"http://127.0.0.1:{port}/metrics")
        assert "flowyard_" in text, name
        checked = await asyncio.to_thread(
            subprocess.run,
            ["promtool", "check", "metrics"],
            input=text,
            capture_output=True,
            text=True,
        )
        assert checked.returncode == 0, f"{name}: {checked.stdout}{checked.stderr}"


def test_the_dashboard_charts_timers_lost_attempts_and_refused_starts() -> None:
    dashboard = Path(__file__).resolve().parents[2] / "deploy/grafana/dashboards/flowyard.json"
    exprs = "\n".join(
        target["expr"]
        for panel in json.loads(dashboard.read_text())["panels"]
        for target in panel.get("targets", [])
    )
    for metric in (
        "flowyard_timers_fired_total",
        "flowyard_attempts_lost_total",
        "flowyard_runs_not_started_total",
    ):
        assert metric in exprs, metric
