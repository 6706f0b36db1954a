# shellcheck shell=bash disable=SC2034  # variables are used by the scripts that source this
# Shared settings and helpers for Flowyard's local stack scripts.
# Sourced by the other scripts in this directory; not meant to be run directly.

STACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$STACK_DIR/../.." && pwd)"

KAFKA_VERSION="3.9.1"
KAFKA_SCALA_VERSION="2.13"
FERRETDB_VERSION="1.24.2"

CACHE_DIR="${FLOWYARD_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/flowyard}"
STATE_DIR="${FLOWYARD_STATE_DIR:-$CACHE_DIR/state}"

KAFKA_HOME="$CACHE_DIR/kafka-$KAFKA_VERSION"
KAFKA_LIBS="$KAFKA_HOME/libs"
KAFKA_MARKER="$KAFKA_HOME/.installed"

FERRETDB_HOME="$CACHE_DIR/ferretdb-$FERRETDB_VERSION"
FERRETDB_BIN="$FERRETDB_HOME/flowyard-ferretdb"
FERRETDB_SRC="$REPO_ROOT/deploy/ferretdb-launcher"

STACK_HOST="127.0.0.1"
KAFKA_PORT="${FLOWYARD_KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${FLOWYARD_KAFKA_CONTROLLER_PORT:-9093}"
MONGO_PORT="${FLOWYARD_MONGO_PORT:-27017}"

KAFKA_STATE="$STATE_DIR/kafka"
FERRETDB_STATE="$STATE_DIR/ferretdb"

# log MESSAGE... : one line on stderr, prefixed with the calling script's name.
log() {
	printf '%s: %s\n' "$(basename "$0")" "$*" >&2
}

die() {
	log "error: $*"
	exit 1
}

# port_open PORT : true when something accepts TCP connections on 127.0.0.1:PORT.
port_open() {
	# shellcheck disable=SC2016  # $1/$2 expand in the inner shell
	timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$STACK_HOST" "$1" 2>/dev/null
}

# pid_file COMPONENT / pid_alive COMPONENT : the component's pid file and whether its process runs.
pid_file() {
	printf '%s/%s.pid\n' "$STATE_DIR" "$1"
}

# pid_alive COMPONENT : true when the pid file names a live process that is this component
# (guards against a stale pid file whose number was reused by an unrelated process).
pid_alive() {
	local file pid args
	file="$(pid_file "$1")"
	[[ -s "$file" ]] || return 1
	pid="$(<"$file")"
	[[ "$pid" =~ ^[0-9]+$ ]] || return 1
	kill -0 "$pid" 2>/dev/null || return 1
	args="$(ps -o args= -p "$pid" 2>/dev/null)" || return 1
	case "$1" in
	kafka) [[ "$args" == *kafka.Kafka* ]] ;;
	ferretdb) [[ "$args" == *flowyard-ferretdb* ]] ;;
	dev-services) [[ "$args" == *dev_services.py* ]] ;;
	*) return 1 ;;
	esac
}

# component_port COMPONENT : the client port the component answers on.
component_port() {
	case "$1" in
	kafka) echo "$KAFKA_PORT" ;;
	ferretdb) echo "$MONGO_PORT" ;;
	esac
}

# stack_lock : serializes start/stop/reset of one state dir (between terminals, test workers
# and engineers sharing a machine) with flock on fd 9, where flock exists. The lock file sits
# next to the state dir, not inside it, so reset.sh can delete the dir while holding it.
# Child scripts inherit FLOWYARD_STACK_LOCK_HELD and do not wait for their parent's lock.
# Daemons must be started with `9>&-` so they do not hold the lock for their lifetime.
stack_lock() {
	[[ -z "${FLOWYARD_STACK_LOCK_HELD:-}" ]] || return 0
	command -v flock >/dev/null 2>&1 || return 0
	mkdir -p "$(dirname "$STATE_DIR")"
	exec 9>"${STATE_DIR%/}.lock"
	flock 9
	export FLOWYARD_STACK_LOCK_HELD=1
}

# parse_components ARG : sets WANTED to the components named by kafka|ferretdb|all (default all).
parse_components() {
	case "${1:-all}" in
	all) WANTED=(kafka ferretdb) ;;
	kafka | ferretdb) WANTED=("$1") ;;
	*) die "unknown component '${1}' (expected kafka, ferretdb or all)" ;;
	esac
}

# kafka_installed / ferretdb_installed : whether the install scripts have nothing to do.
kafka_installed() {
	[[ -f "$KAFKA_MARKER" && -f "$KAFKA_LIBS/kafka_${KAFKA_SCALA_VERSION}-${KAFKA_VERSION}.jar" ]]
}

ferretdb_installed() {
	[[ -x "$FERRETDB_BIN" ]] &&
		[[ -z "$(find "$FERRETDB_SRC" -type f -newer "$FERRETDB_BIN" -print -quit 2>/dev/null)" ]]
}

find_java() {
	if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then
		echo "$JAVA_HOME/bin/java"
	elif command -v java >/dev/null 2>&1; then
		command -v java
	else
		die "java (17 or newer) not found; set JAVA_HOME or put java on PATH"
	fi
}

find_go() {
	if [[ -n "${GO:-}" ]]; then
		echo "$GO"
	elif command -v go >/dev/null 2>&1; then
		command -v go
	elif [[ -x /usr/local/go/bin/go ]]; then
		# the location used by the official Go tarball
		echo /usr/local/go/bin/go
	else
		die "go (1.24 or newer) not found; set GO or put go on PATH"
	fi
}
