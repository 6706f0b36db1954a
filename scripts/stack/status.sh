#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Prints whether each component of Flowyard's local stack is up or down (stdout).
# Exit status: 0 when every component is up, 3 otherwise.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

all_up=0
for c in kafka documentdb; do
	port="$(component_port "$c")"
	if pid_alive "$c"; then
		pid="$(<"$(pid_file "$c")")"
		if port_open "$port"; then
			echo "$c: up (pid $pid, $STACK_HOST:$port)"
		else
			echo "$c: starting or unhealthy (pid $pid, $STACK_HOST:$port not answering)"
			all_up=3
		fi
	elif port_open "$port"; then
		echo "$c: up ($STACK_HOST:$port answers; not started by these scripts)"
	else
		echo "$c: down"
		all_up=3
	fi
done
exit "$all_up"
