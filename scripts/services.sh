#!/usr/bin/env bash
# Starts or stops the four Flowyard services as background processes of the local stack.
#
# Usage: scripts/services.sh start|stop|status
# Each service logs to $FLOWYARD_STATE_DIR/logs/<service>.log and stops cleanly on SIGTERM.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=stack/lib.sh
source scripts/stack/lib.sh

SERVICES=(scheduler executor alerter api-gateway)
LOGS="$STATE_DIR/logs"
mkdir -p "$LOGS"

alive() { [ -f "$(pid_file "$1")" ] && kill -0 "$(cat "$(pid_file "$1")")" 2>/dev/null; }

start() {
	local s
	for s in "${SERVICES[@]}"; do
		if alive "$s"; then
			log "$s already running (pid $(cat "$(pid_file "$s")"))"
			continue
		fi
		nohup scripts/uv.sh run --frozen --no-sync "flowyard-$s" >>"$LOGS/$s.log" 2>&1 &
		echo $! >"$(pid_file "$s")"
		log "$s started (pid $!, log $LOGS/$s.log)"
	done
}

stop() {
	local s pid i
	for s in "${SERVICES[@]}"; do
		alive "$s" || { rm -f "$(pid_file "$s")"; continue; }
		pid=$(cat "$(pid_file "$s")")
		kill -TERM "$pid" 2>/dev/null || true
		for i in $(seq 1 60); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.5
		done
		kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
		rm -f "$(pid_file "$s")"
		log "$s stopped"
	done
}

status() {
	local s
	for s in "${SERVICES[@]}"; do
		if alive "$s"; then echo "$s: up (pid $(cat "$(pid_file "$s")"))"; else echo "$s: down"; fi
	done
}

case "${1:-}" in
start) start ;;
stop) stop ;;
status) status ;;
*) die "usage: $0 start|stop|status" ;;
esac
