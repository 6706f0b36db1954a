#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Stops Flowyard's local stack and deletes its state directory (topics, documents, logs).
# The installed Kafka jars and the DocumentDB build in the cache directory are kept.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

case "$STATE_DIR" in
"" | / | "$HOME" | "$HOME/" | "$CACHE_DIR" | "$CACHE_DIR/")
	die "refusing to delete state dir '$STATE_DIR'"
	;;
esac

stack_lock

# Other processes may keep pid files here too (the Flowyard services do); deleting the
# dir under them would orphan them, so they must be stopped first.
others=()
for file in "$STATE_DIR"/*.pid; do
	[[ -e "$file" ]] || continue
	name="$(basename "$file" .pid)"
	[[ "$name" == kafka || "$name" == documentdb ]] && continue
	pid="$(<"$file")"
	if [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
		others+=("$name (pid $pid)")
	fi
done
if ((${#others[@]})); then
	die "still running with pid files in $STATE_DIR: ${others[*]}; stop them first (make stop)"
fi

if ! stop_output="$("$STACK_DIR/stop.sh" all 2>&1)"; then
	printf '%s\n' "$stop_output" >&2
	die "could not stop the stack; state dir left in place"
fi

if [[ -d "$STATE_DIR" ]]; then
	# the store's data dir may live outside (see start.sh's init_documentdb_dir)
	if [[ -L "$DOCUMENTDB_LINK" ]]; then
		target="$(readlink -f "$DOCUMENTDB_LINK")"
		[[ "$target" == /var/lib/flowyard/documentdb-* ]] && rm -rf "$target"
	fi
	rm -rf "$STATE_DIR"
	log "stopped the stack and deleted $STATE_DIR"
else
	log "stopped the stack; no state dir at $STATE_DIR"
fi
