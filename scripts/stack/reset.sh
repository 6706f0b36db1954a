#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Stops Flowyard's local stack and deletes its state directory (topics, documents, logs).
# The installed Kafka jars and FerretDB binary in the cache directory are kept.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

if ! stop_output="$("$STACK_DIR/stop.sh" all 2>&1)"; then
	printf '%s\n' "$stop_output" >&2
	die "could not stop the stack; state dir left in place"
fi

case "$STATE_DIR" in
"" | / | "$HOME" | "$HOME/" | "$CACHE_DIR" | "$CACHE_DIR/")
	die "refusing to delete state dir '$STATE_DIR'"
	;;
esac

if [[ -d "$STATE_DIR" ]]; then
	rm -rf "$STATE_DIR"
	log "stopped the stack and deleted $STATE_DIR"
else
	log "stopped the stack; no state dir at $STATE_DIR"
fi
