"""Where the tests get Kafka and MongoDB from, in this order:

1. addresses in the environment (FLOWYARD_KAFKA_BOOTSTRAP and FLOWYARD_MONGO_URL);
2. testcontainers, when a Docker daemon answers;
3. the project's local stack (scripts/stack/start.sh: Kafka from its jars, DocumentDB).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class StackAddresses:
    kafka_bootstrap: str
    mongo_url: str
    source: str


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=2).ping()
    except Exception:
        return False
    return True


@contextmanager
def provide_stack() -> Iterator[StackAddresses]:
    kafka = os.environ.get("FLOWYARD_KAFKA_BOOTSTRAP")
    mongo = os.environ.get("FLOWYARD_MONGO_URL")
    if kafka and mongo:
        yield StackAddresses(kafka, mongo, "environment")
        return
    if _docker_answers():
        from testcontainers.kafka import KafkaContainer
        from testcontainers.mongodb import MongoDbContainer

        with ExitStack() as stack:
            kafka_container = stack.enter_context(KafkaContainer("confluentinc/cp-kafka:7.6.0"))
            mongo_container = stack.enter_context(MongoDbContainer("mongo:7"))
            yield StackAddresses(
                kafka_container.get_bootstrap_server(),
                mongo_container.get_connection_url(),
                "testcontainers",
            )
        return
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "stack" / "start.sh")],
        check=True,
        capture_output=True,
        text=True,
    )
    found: dict[str, str] = {}
    for line in result.stdout.splitlines():
        if line.startswith("export ") and "=" in line:
            name, value = line.removeprefix("export ").split("=", 1)
            found[name] = value.strip().strip("'\"")
    yield StackAddresses(
        found["FLOWYARD_KAFKA_BOOTSTRAP"], found["FLOWYARD_MONGO_URL"], "local stack"
    )
