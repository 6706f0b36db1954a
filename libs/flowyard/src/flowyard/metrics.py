"""Prometheus metrics, built against an injected registry.

Every service exports the same families, so one dashboard reads them all; each
service fills the ones it observes (the scheduler counts runs, the executor times tasks).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

TASK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)
HANDOFF_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
ALERT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)


class ServiceMetrics:
    def __init__(self, registry: CollectorRegistry, service: str) -> None:
        self.registry = registry
        self.service = service
        self.runs_started = Counter(
            "flowyard_runs_started_total",
            "Runs started, by workflow and trigger kind",
            ["workflow", "trigger"],
            registry=registry,
        )
        self.runs_finished = Counter(
            "flowyard_runs_finished_total",
            "Runs finished, by workflow and final status",
            ["workflow", "status"],
            registry=registry,
        )
        self.run_duration = Histogram(
            "flowyard_run_duration_seconds",
            "Run duration from start to finish",
            ["workflow"],
            buckets=TASK_BUCKETS,
            registry=registry,
        )
        self.tasks_finished = Counter(
            "flowyard_tasks_finished_total",
            "Task attempts finished, by node type and status",
            ["node_type", "status"],
            registry=registry,
        )
        self.task_duration = Histogram(
            "flowyard_task_duration_seconds",
            "Task attempt duration as the executor measured it",
            ["node_type"],
            buckets=TASK_BUCKETS,
            registry=registry,
        )
        self.step_handoff = Histogram(
            "flowyard_step_handoff_seconds",
            "Time from a task's end (executor clock) to the scheduler dispatching what follows",
            buckets=HANDOFF_BUCKETS,
            registry=registry,
        )
        self.consumer_lag = Gauge(
            "flowyard_kafka_consumer_lag",
            "Messages in a partition not yet consumed by this service's group",
            ["topic", "partition", "group"],
            registry=registry,
        )
        self.messages_consumed = Counter(
            "flowyard_kafka_messages_consumed_total",
            "Kafka messages consumed",
            ["topic"],
            registry=registry,
        )
        self.dead_letters = Counter(
            "flowyard_dead_letters_total",
            "Messages sent to the dead-letter topic, by the topic they came from",
            ["topic"],
            registry=registry,
        )
        self.tasks_in_flight = Gauge(
            "flowyard_tasks_in_flight",
            "Tasks this executor is running now",
            registry=registry,
        )
        self.grpc_requests = Counter(
            "flowyard_grpc_requests_total",
            "gRPC requests served, by method and status code",
            ["method", "code"],
            registry=registry,
        )
        self.timers_fired = Counter(
            "flowyard_timers_fired_total",
            "Durable timers that came due (retry, wait, lease, deadline)",
            ["kind"],
            registry=registry,
        )
        self.attempts_lost = Counter(
            "flowyard_attempts_lost_total",
            "Attempts re-dispatched because their executor stopped sending heartbeats",
            registry=registry,
        )
        self.runs_not_started = Counter(
            "flowyard_runs_not_started_total",
            "Start requests turned down, by workflow and reason (paused, draft, concurrency)",
            ["workflow", "reason"],
            registry=registry,
        )
        self.alerts_sent = Counter(
            "flowyard_alerts_sent_total",
            "Alerts delivered, by kind (failed, succeeded, runtime ...) and channel",
            ["kind", "channel"],
            registry=registry,
        )
        self.alerts_failed = Counter(
            "flowyard_alerts_failed_total",
            "Alerts given up on (retries exhausted or refused) and dead-lettered",
            ["kind", "channel"],
            registry=registry,
        )
        self.alert_delivery = Histogram(
            "flowyard_alert_delivery_seconds",
            "Time from the lifecycle event (or the runtime threshold) to the alert's delivery",
            ["kind", "channel"],
            buckets=ALERT_BUCKETS,
            registry=registry,
        )
        self.alerts_rate_limited = Counter(
            "flowyard_alerts_rate_limited_total",
            "Alert deliveries postponed by the per-destination rate limit",
            ["channel"],
            registry=registry,
        )


@dataclass
class MetricsServer:
    """A running /metrics endpoint; ``port`` is the bound port (useful with port 0)."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> MetricsServer:
    server, thread = start_http_server(port, addr=host, registry=registry)
    return MetricsServer(server, thread)
