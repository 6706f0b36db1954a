#!/usr/bin/env bash
# Starts or stops the four Flowyard services as background processes of the local stack,
# together with scripts/stack/dev_services.py: local stand-ins for SMTP, Slack's Web API
# and a demo supplier API, so the examples' email, Slack and HTTP nodes work with no accounts.
#
# Usage: scripts/services.sh start|stop|status
# Each service logs to $FLOWYARD_STATE_DIR/logs/<service>.log and stops cleanly on SIGTERM.
# The stand-ins listen on 127.0.0.1:$FLOWYARD_DEV_SMTP_PORT (8025) and
# 127.0.0.1:$FLOWYARD_DEV_HTTP_PORT (8086). The services are pointed at them
# (FLOWYARD_SMTP_HOST/PORT, FLOWYARD_SLACK_API_URL, FLOWYARD_SLACK_BOT_TOKEN) unless those
# are already set: set FLOWYARD_SMTP_HOST or FLOWYARD_SLACK_API_URL to use real servers.
# The credential store's key (FLOWYARD_CREDENTIALS_KEY), unless set, is made once for the
# local stack and kept in $FLOWYARD_STATE_DIR/credentials-key (mode 600).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=stack/lib.sh
source scripts/stack/lib.sh

SERVICES=(scheduler executor alerter api-gateway)
DEV=dev-services
DEV_SMTP_PORT="${FLOWYARD_DEV_SMTP_PORT:-8025}"
DEV_HTTP_PORT="${FLOWYARD_DEV_HTTP_PORT:-8086}"
LOGS="$STATE_DIR/logs"
mkdir -p "$LOGS"

# The local store's URL (with the login start.sh made for this state dir), unless given.
if [[ -z "${FLOWYARD_MONGO_URL:-}" && -s "$DOCUMENTDB_URL_FILE" ]]; then
	FLOWYARD_MONGO_URL=$(<"$DOCUMENTDB_URL_FILE")
	export FLOWYARD_MONGO_URL
fi
if [[ -z "${FLOWYARD_SMTP_HOST:-}" ]]; then
	export FLOWYARD_SMTP_HOST="$STACK_HOST"
	export FLOWYARD_SMTP_PORT="${FLOWYARD_SMTP_PORT:-$DEV_SMTP_PORT}"
fi
if [[ -z "${FLOWYARD_SLACK_API_URL:-}" ]]; then
	export FLOWYARD_SLACK_API_URL="http://$STACK_HOST:$DEV_HTTP_PORT/slack/api"
	export FLOWYARD_SLACK_BOT_TOKEN="${FLOWYARD_SLACK_BOT_TOKEN:-xoxb-local-dev}"
fi
if [[ -z "${FLOWYARD_CREDENTIALS_KEY:-}" && "${1:-}" == start ]]; then
	key_file="$STATE_DIR/credentials-key"
	if [[ ! -s "$key_file" ]]; then
		(
			umask 077
			scripts/uv.sh run --frozen --no-sync python -c \
				'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())' \
				>"$key_file.new"
		)
		mv -f "$key_file.new" "$key_file"
	fi
	chmod 600 "$key_file"
	FLOWYARD_CREDENTIALS_KEY=$(<"$key_file")
	export FLOWYARD_CREDENTIALS_KEY
fi

alive() { [ -f "$(pid_file "$1")" ] && kill -0 "$(cat "$(pid_file "$1")")" 2>/dev/null; }
# running NAME : alive, and for the stand-ins also checked to be that process (pid_alive)
running() { if [[ "$1" == "$DEV" ]]; then pid_alive "$1"; else alive "$1"; fi; }

dev_ready() { port_open "$DEV_SMTP_PORT" && port_open "$DEV_HTTP_PORT"; }

start_dev() {
	if pid_alive "$DEV"; then
		log "$DEV already running (pid $(cat "$(pid_file "$DEV")"))"
		return
	fi
	rm -f "$(pid_file "$DEV")"
	if port_open "$DEV_SMTP_PORT" || port_open "$DEV_HTTP_PORT"; then
		log "$DEV not started: $STACK_HOST:$DEV_SMTP_PORT or :$DEV_HTTP_PORT already answers" \
			"(not started by these scripts; FLOWYARD_DEV_SMTP_PORT/FLOWYARD_DEV_HTTP_PORT pick others)"
		return
	fi
	nohup scripts/uv.sh run --frozen --no-sync python scripts/stack/dev_services.py \
		--log-dir "$LOGS" </dev/null >>"$LOGS/$DEV.log" 2>&1 &
	echo $! >"$(pid_file "$DEV")"
	for _ in $(seq 1 60); do
		dev_ready && break
		if ! pid_alive "$DEV"; then
			rm -f "$(pid_file "$DEV")"
			tail -n 20 "$LOGS/$DEV.log" >&2
			die "$DEV exited during startup (log $LOGS/$DEV.log)"
		fi
		sleep 0.5
	done
	dev_ready || die "$DEV did not answer on ports $DEV_SMTP_PORT and $DEV_HTTP_PORT (log $LOGS/$DEV.log)"
	log "$DEV started (pid $(cat "$(pid_file "$DEV")"), SMTP $STACK_HOST:$DEV_SMTP_PORT," \
		"HTTP $STACK_HOST:$DEV_HTTP_PORT, log $LOGS/$DEV.log)"
}

start() {
	local s
	start_dev
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
	local s pid
	for s in "${SERVICES[@]}" "$DEV"; do
		running "$s" || { rm -f "$(pid_file "$s")"; continue; }
		pid=$(cat "$(pid_file "$s")")
		kill -TERM "$pid" 2>/dev/null || true
		for _ in $(seq 1 60); do
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
	if pid_alive "$DEV"; then
		echo "$DEV: up (pid $(cat "$(pid_file "$DEV")"), SMTP $STACK_HOST:$DEV_SMTP_PORT, HTTP $STACK_HOST:$DEV_HTTP_PORT)"
	else
		echo "$DEV: down"
	fi
}

case "${1:-}" in
start) start ;;
stop) stop ;;
status) status ;;
*) die "usage: $0 start|stop|status" ;;
esac
