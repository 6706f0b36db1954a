#!/usr/bin/env bash
# `make run`: start the local stack and the four services, register the examples, start
# one run and follow it to the end. The stack keeps running; `make stop` stops it.
set -euo pipefail
cd "$(dirname "$0")/.."

eval "$(scripts/stack/start.sh)"
export FLOWYARD_KAFKA_BOOTSTRAP FLOWYARD_MONGO_URL
scripts/services.sh start

flowyard() { scripts/uv.sh run --frozen --no-sync flowyard "$@"; }

echo "waiting for the gateway on ${FLOWYARD_GRPC_ADDR:-127.0.0.1:50051} ..." >&2
for _ in $(seq 1 120); do
	flowyard workflow list >/dev/null 2>&1 && break
	sleep 0.5
done
flowyard workflow list >/dev/null || {
	echo "the gateway did not come up; see the logs in the stack's state directory" >&2
	exit 1
}

for file in examples/*.yaml; do
	flowyard workflow apply -f "$file"
done
flowyard workflow list
echo
run_id=$(flowyard run start inventory-reorder \
	--input '{"sku": "WIDGET-7", "on_hand": 12, "daily_demand": 5}' | head -n 1)
echo "started inventory-reorder run $run_id"
flowyard run get "$run_id" --watch
echo
echo "The stack is running: gRPC ${FLOWYARD_GRPC_ADDR:-127.0.0.1:50051}, metrics on ports 9101-9104."
echo "Try: scripts/uv.sh run flowyard run start deploy-service --watch"
echo "Stop it with: make stop"
