#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Stops components of Flowyard's local stack started by start.sh: SIGTERM via the pid file,
# up to 30s (FLOWYARD_STACK_STOP_SECONDS) for a clean shutdown, then SIGKILL.
# documentdb: the gateway, then PostgreSQL (pg_ctl stop -m fast).
# Usage: scripts/stack/stop.sh [kafka|documentdb|all]      (default: all). Idempotent.
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

# stop_postgres : PostgreSQL under the DocumentDB gateway, when its data dir has one running.
stop_postgres() {
	local pg_ctl
	[[ -s "$DOCUMENTDB_DATA/postmaster.pid" ]] || return 0
	pg_ctl="$(pg_bin pg_ctl)" || return 0
	if [[ "$(id -u)" == 0 ]]; then
		runuser -u "$PG_OS_USER" -- "$pg_ctl" stop -D "$DOCUMENTDB_DATA" -m fast -w -t "$STOP_SECONDS" >/dev/null 2>&1 || true
	else
		"$pg_ctl" stop -D "$DOCUMENTDB_DATA" -m fast -w -t "$STOP_SECONDS" >/dev/null 2>&1 || true
	fi
}

parse_components "${1:-}"
stack_lock
summary=()
for c in "${WANTED[@]}"; do
	summary+=("$(stop_component "$c")")
	[[ "$c" != documentdb ]] || stop_postgres
done
joined="$(printf '%s, ' "${summary[@]}")"
log "${joined%, }"
