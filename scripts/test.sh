#!/usr/bin/env bash
# `make test`: lint, type-check, check generated code is current, then the whole suite
# against real Kafka and the MongoDB-compatible server (see tests/stack.py for where
# they come from).
set -euo pipefail
cd "$(dirname "$0")/.."
uv() { scripts/uv.sh "$@"; }

uv run --frozen ruff check .
uv run --frozen ruff format --check .
uv run --frozen mypy
if [ -z "${FLOWYARD_KAFKA_BOOTSTRAP:-}" ] || [ -z "${FLOWYARD_MONGO_URL:-}" ]; then
	if ! uv run --frozen python -c 'import docker; docker.from_env(timeout=2).ping()' >/dev/null 2>&1; then
		eval "$(scripts/stack/start.sh)"
		export FLOWYARD_KAFKA_BOOTSTRAP FLOWYARD_MONGO_URL
	fi
fi
uv run --frozen pytest "$@"
