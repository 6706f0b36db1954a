#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Stops components of Flowyard's local stack started by start.sh: SIGTERM via the pid file,
# up to 30s (FLOWYARD_STACK_STOP_SECONDS) for a clean shutdown, then SIGKILL.
# Usage: scripts/stack/stop.sh [kafka|ferretdb|all]      (default: all). Idempotent.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

STOP_SECONDS="${FLOWYARD_STACK_STOP_SECONDS:-30}"

# stop_component NAME : prints what happened (for the summary line).
stop_component() {
	local c="$1" file pid deadline
	file="$(pid_file "$c")"
	if ! pid_alive "$c"; then
		rm -f "$file"
		echo "$c not running"
		return
	fi
	pid="$(<"$file")"
	kill -TERM "$pid" 2>/dev/null || true
	deadline=$((SECONDS + STOP_SECONDS))
	while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
		sleep 0.5
	done
	if kill -0 "$pid" 2>/dev/null; then
		kill -KILL "$pid" 2>/dev/null || true
		while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
		rm -f "$file"
		echo "$c killed (pid $pid, no clean exit within ${STOP_SECONDS}s)"
		return
	fi
	rm -f "$file"
	echo "$c stopped (pid $pid)"
}

parse_components "${1:-}"
stack_lock
summary=()
for c in "${WANTED[@]}"; do
	summary+=("$(stop_component "$c")")
done
joined="$(printf '%s, ' "${summary[@]}")"
log "${joined%, }"
