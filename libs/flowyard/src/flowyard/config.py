"""Settings shared by every Flowyard process, loaded once from the environment.

Each field names its environment variable; ``load_settings()`` is called in each
service's ``__main__`` and the frozen object is passed down, never re-read.

| env | default | meaning |
|---|---|---|
| FLOWYARD_KAFKA_BOOTSTRAP | 127.0.0.1:9092 | Kafka bootstrap servers (comma-separated) |
| FLOWYARD_MONGO_URL | mongodb://127.0.0.1:27017 | MongoDB (or DocumentDB) connection string |
| FLOWYARD_MONGO_DB | flowyard | database name |
| FLOWYARD_TOPIC_PREFIX | flowyard | prefix of every topic and consumer group name |
| FLOWYARD_TOPIC_PARTITIONS | 4 | partitions of the topics Flowyard creates |
| FLOWYARD_GRPC_ADDR | 127.0.0.1:50051 | gateway gRPC listen address |
| FLOWYARD_HTTP_ADDR | 127.0.0.1:8080 | gateway HTTP listen address (webhooks) |
| FLOWYARD_METRICS_HOST | 127.0.0.1 | address the /metrics endpoints bind to |
| FLOWYARD_METRICS_PORT | per service | /metrics port: gateway 9101, scheduler 9102, |
|   |   | executor 9103, alerter 9104; 0 = any free port |
| FLOWYARD_EXECUTOR_CONCURRENCY | 8 | tasks one executor runs at once |
| FLOWYARD_CODE_TIMEOUT_SECONDS | 300 | wall-clock limit of a code node without its own timeout |
| FLOWYARD_CODE_MEMORY_MB | 512 | address-space limit of a code node's process |
| FLOWYARD_CODE_CPU_SECONDS | 300 | CPU-time limit of a code node's process |
| FLOWYARD_CODE_DISK_MB | 64 | size of a code node's working directory (a tmpfs) |
| FLOWYARD_CODE_SANDBOX | bwrap | how code nodes are confined: bwrap (namespaces, no network, |
|   |   | a read-only view of the Python installation) or none (limits only; trusted code) |
| FLOWYARD_CODE_SANDBOX_PYTHON | (auto) | interpreter code nodes run; default: the executor's own |
|   |   | when the sandbox user can reach it, else /usr/bin/python3 |
| FLOWYARD_CODE_SANDBOX_UID | 65534 | user code nodes run as when the executor runs as root |
| FLOWYARD_HEARTBEAT_SECONDS | 5 | how often an executor reports each running task as alive |
| FLOWYARD_TASK_LEASE_SECONDS | 30 | a running task silent this long is re-dispatched |
| FLOWYARD_TIMER_POLL_SECONDS | 0.5 | how often the scheduler looks for due timers |
| FLOWYARD_CRON_POLL_SECONDS | 1 | how often the scheduler looks for due schedule ticks; |
|   |   | 0 = this instance runs no schedules (another one does) |
| FLOWYARD_SMTP_HOST | 127.0.0.1 | SMTP server for email nodes and alerts |
| FLOWYARD_SMTP_PORT | 25 | SMTP port |
| FLOWYARD_SMTP_FROM | flowyard@localhost | sender address |
| FLOWYARD_SMTP_USERNAME | (none) | SMTP login; empty = no login |
| FLOWYARD_SMTP_PASSWORD | (none) | SMTP password |
| FLOWYARD_SMTP_STARTTLS | false | upgrade the connection with STARTTLS |
| FLOWYARD_SLACK_API_URL | https://slack.com/api | Slack Web API base URL |
| FLOWYARD_SLACK_BOT_TOKEN | (none) | bot token for Slack nodes (xoxb-...) |
| FLOWYARD_RUN_LINK_BASE | http://127.0.0.1:8080/runs | alerts link to ``<base>/<run id>`` |
| FLOWYARD_ALERT_POLL_SECONDS | 0.5 | how often the alerter looks for due retries and runtime |
|   |   | thresholds |
| FLOWYARD_ALERT_MAX_ATTEMPTS | 8 | delivery attempts before an alert is dead-lettered |
| FLOWYARD_ALERT_BACKOFF_SECONDS | 2 | wait before the first retry; doubled each time |
| FLOWYARD_ALERT_BACKOFF_MAX_SECONDS | 300 | longest wait between two attempts |
| FLOWYARD_ALERT_RATE_PER_MINUTE | 30 | alerts per minute to one address or Slack channel |
| FLOWYARD_ALERT_RATE_BURST | 10 | alerts one address or channel may get at once |
| FLOWYARD_ALERT_SEND_TIMEOUT_SECONDS | 15 | limit of one SMTP or Slack delivery attempt |
| FLOWYARD_ALERT_LEASE_SECONDS | 30 | an alert claimed by an alerter that died is retried |
|   |   | after this |
| FLOWYARD_LOG_LEVEL | INFO | log level |
| FLOWYARD_CREDENTIALS_KEY | (none) | Fernet key(s), comma-separated, first encrypts: the |
|   |   | credential store's key (gateway and executors); none = no credentials |
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

DEFAULT_METRICS_PORTS = {"api-gateway": 9101, "scheduler": 9102, "executor": 9103, "alerter": 9104}


@dataclass(frozen=True)
class Topics:
    """Topic names, all derived from one prefix so tests can isolate themselves."""

    prefix: str = "flowyard"

    @property
    def triggers(self) -> str:
        return f"{self.prefix}.triggers"

    @property
    def events_ingest(self) -> str:
        return f"{self.prefix}.events.ingest"

    @property
    def commands(self) -> str:
        return f"{self.prefix}.commands"

    @property
    def tasks(self) -> str:
        return f"{self.prefix}.tasks"

    @property
    def task_events(self) -> str:
        return f"{self.prefix}.task-events"

    @property
    def run_events(self) -> str:
        return f"{self.prefix}.run-events"

    @property
    def alerts(self) -> str:
        return f"{self.prefix}.alerts"

    @property
    def dead_letter(self) -> str:
        return f"{self.prefix}.dead-letter"

    def all(self) -> tuple[str, ...]:
        return (
            self.triggers,
            self.events_ingest,
            self.commands,
            self.tasks,
            self.task_events,
            self.run_events,
            self.alerts,
            self.dead_letter,
        )

    def group(self, service: str) -> str:
        return f"{self.prefix}.{service}"


@dataclass(frozen=True)
class SmtpSettings:
    host: str = "127.0.0.1"
    port: int = 25
    sender: str = "flowyard@localhost"
    username: str = ""
    password: str = field(default="", repr=False)
    starttls: bool = False


@dataclass(frozen=True)
class SlackSettings:
    api_url: str = "https://slack.com/api"
    bot_token: str = field(default="", repr=False)


@dataclass(frozen=True)
class AlertSettings:
    """How the alerter delivers (FLOWYARD_RUN_LINK_BASE and FLOWYARD_ALERT_*)."""

    run_link_base: str = "http://127.0.0.1:8080/runs"
    poll_seconds: float = 0.5
    max_attempts: int = 8
    backoff_seconds: float = 2.0
    backoff_max_seconds: float = 300.0
    rate_per_minute: float = 30.0
    rate_burst: int = 10
    send_timeout_seconds: float = 15.0
    lease_seconds: float = 30.0


@dataclass(frozen=True)
class Settings:
    kafka_bootstrap: str = "127.0.0.1:9092"
    mongo_url: str = "mongodb://127.0.0.1:27017"
    mongo_db: str = "flowyard"
    topics: Topics = field(default_factory=Topics)
    topic_partitions: int = 4
    grpc_addr: str = "127.0.0.1:50051"
    http_addr: str = "127.0.0.1:8080"
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0
    executor_concurrency: int = 8
    code_timeout_seconds: float = 300.0
    code_memory_mb: int = 512
    code_cpu_seconds: int = 300
    code_disk_mb: int = 64
    code_sandbox: str = "bwrap"
    code_sandbox_python: str = ""
    code_sandbox_uid: int = 65534
    heartbeat_seconds: float = 5.0
    task_lease_seconds: float = 30.0
    timer_poll_seconds: float = 0.5
    cron_poll_seconds: float = 1.0
    smtp: SmtpSettings = field(default_factory=SmtpSettings)
    slack: SlackSettings = field(default_factory=SlackSettings)
    alerts: AlertSettings = field(default_factory=AlertSettings)
    log_level: str = "INFO"
    credentials_key: str = field(default="", repr=False)


def load_settings(service: str, env: Mapping[str, str] | None = None) -> Settings:
    """Read the settings for ``service`` from ``env`` (default: the process environment)."""
    env = os.environ if env is None else env

    def get(name: str, default: str) -> str:
        return env.get(name, "").strip() or default

    def get_int(name: str, default: int) -> int:
        raw = get(name, str(default))
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"{name} must be an integer, got {raw!r}") from None

    def get_float(name: str, default: float) -> float:
        raw = get(name, str(default))
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"{name} must be a number, got {raw!r}") from None

    return Settings(
        kafka_bootstrap=get("FLOWYARD_KAFKA_BOOTSTRAP", Settings.kafka_bootstrap),
        mongo_url=get("FLOWYARD_MONGO_URL", Settings.mongo_url),
        mongo_db=get("FLOWYARD_MONGO_DB", Settings.mongo_db),
        topics=Topics(get("FLOWYARD_TOPIC_PREFIX", "flowyard")),
        topic_partitions=get_int("FLOWYARD_TOPIC_PARTITIONS", Settings.topic_partitions),
        grpc_addr=get("FLOWYARD_GRPC_ADDR", Settings.grpc_addr),
        http_addr=get("FLOWYARD_HTTP_ADDR", Settings.http_addr),
        metrics_host=get("FLOWYARD_METRICS_HOST", Settings.metrics_host),
        metrics_port=get_int("FLOWYARD_METRICS_PORT", DEFAULT_METRICS_PORTS.get(service, 0)),
        executor_concurrency=get_int("FLOWYARD_EXECUTOR_CONCURRENCY", 8),
        code_timeout_seconds=float(get_int("FLOWYARD_CODE_TIMEOUT_SECONDS", 300)),
        code_memory_mb=get_int("FLOWYARD_CODE_MEMORY_MB", 512),
        code_cpu_seconds=get_int("FLOWYARD_CODE_CPU_SECONDS", 300),
        code_disk_mb=get_int("FLOWYARD_CODE_DISK_MB", Settings.code_disk_mb),
        code_sandbox=get("FLOWYARD_CODE_SANDBOX", Settings.code_sandbox).lower(),
        code_sandbox_python=get("FLOWYARD_CODE_SANDBOX_PYTHON", ""),
        code_sandbox_uid=get_int("FLOWYARD_CODE_SANDBOX_UID", Settings.code_sandbox_uid),
        heartbeat_seconds=get_float("FLOWYARD_HEARTBEAT_SECONDS", 5.0),
        task_lease_seconds=get_float("FLOWYARD_TASK_LEASE_SECONDS", 30.0),
        timer_poll_seconds=get_float("FLOWYARD_TIMER_POLL_SECONDS", 0.5),
        cron_poll_seconds=get_float("FLOWYARD_CRON_POLL_SECONDS", 1.0),
        smtp=SmtpSettings(
            host=get("FLOWYARD_SMTP_HOST", SmtpSettings.host),
            port=get_int("FLOWYARD_SMTP_PORT", SmtpSettings.port),
            sender=get("FLOWYARD_SMTP_FROM", SmtpSettings.sender),
            username=get("FLOWYARD_SMTP_USERNAME", ""),
            password=get("FLOWYARD_SMTP_PASSWORD", ""),
            starttls=get("FLOWYARD_SMTP_STARTTLS", "false").lower() in ("1", "true", "yes"),
        ),
        slack=SlackSettings(
            api_url=get("FLOWYARD_SLACK_API_URL", SlackSettings.api_url).rstrip("/"),
            bot_token=get("FLOWYARD_SLACK_BOT_TOKEN", ""),
        ),
        alerts=AlertSettings(
            run_link_base=get("FLOWYARD_RUN_LINK_BASE", AlertSettings.run_link_base).rstrip("/"),
            poll_seconds=get_float("FLOWYARD_ALERT_POLL_SECONDS", AlertSettings.poll_seconds),
            max_attempts=get_int("FLOWYARD_ALERT_MAX_ATTEMPTS", AlertSettings.max_attempts),
            backoff_seconds=get_float(
                "FLOWYARD_ALERT_BACKOFF_SECONDS", AlertSettings.backoff_seconds
            ),
            backoff_max_seconds=get_float(
                "FLOWYARD_ALERT_BACKOFF_MAX_SECONDS", AlertSettings.backoff_max_seconds
            ),
            rate_per_minute=get_float(
                "FLOWYARD_ALERT_RATE_PER_MINUTE", AlertSettings.rate_per_minute
            ),
            rate_burst=get_int("FLOWYARD_ALERT_RATE_BURST", AlertSettings.rate_burst),
            send_timeout_seconds=get_float(
                "FLOWYARD_ALERT_SEND_TIMEOUT_SECONDS", AlertSettings.send_timeout_seconds
            ),
            lease_seconds=get_float("FLOWYARD_ALERT_LEASE_SECONDS", AlertSettings.lease_seconds),
        ),
        log_level=get("FLOWYARD_LOG_LEVEL", "INFO").upper(),
        credentials_key=get("FLOWYARD_CREDENTIALS_KEY", ""),
    )
