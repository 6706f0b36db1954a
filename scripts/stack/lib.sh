# shellcheck shell=bash disable=SC2034  # variables are used by the scripts that source this
# Shared settings and helpers for Flowyard's local stack scripts.
# Sourced by the other scripts in this directory; not meant to be run directly.

STACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$STACK_DIR/../.." && pwd)"

KAFKA_VERSION="3.9.1"
KAFKA_SCALA_VERSION="2.13"
# DocumentDB: the commit of ../shared/vendor/documentdb-b2e220c4.tar.gz (extension 0.108-0)
DOCUMENTDB_VERSION="0.108-0"
DOCUMENTDB_COMMIT="b2e220c47d85ec6fed1651f03968da2317f71c10"
PGVECTOR_VERSION="0.8.0"
PG_CRON_VERSION="1.6.3"
PG_MAJOR="15"

CACHE_DIR="${FLOWYARD_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/flowyard}"
STATE_DIR="${FLOWYARD_STATE_DIR:-$CACHE_DIR/state}"

KAFKA_HOME="$CACHE_DIR/kafka-$KAFKA_VERSION"
KAFKA_LIBS="$KAFKA_HOME/libs"
KAFKA_MARKER="$KAFKA_HOME/.installed"

DOCUMENTDB_HOME="$CACHE_DIR/documentdb-$DOCUMENTDB_VERSION-${DOCUMENTDB_COMMIT:0:8}"
DOCUMENTDB_GATEWAY_BIN="$DOCUMENTDB_HOME/bin/documentdb_gateway"
DOCUMENTDB_MARKER="$DOCUMENTDB_HOME/.installed"

# The readiness checks speak Kafka's and MongoDB's protocols with the project's own
# environment when it exists (kafka-python, pymongo), else fall back to simpler probes.
if [[ -z "${PYTHON:-}" && -x "$REPO_ROOT/.venv/bin/python" ]]; then
	PYTHON="$REPO_ROOT/.venv/bin/python"
fi

STACK_HOST="127.0.0.1"
KAFKA_PORT="${FLOWYARD_KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${FLOWYARD_KAFKA_CONTROLLER_PORT:-9093}"
MONGO_PORT="${FLOWYARD_MONGO_PORT:-27017}"
# PostgreSQL under the gateway: TCP on loopback for nobody (listen_addresses is empty); the
# gateway and the scripts reach it on its Unix socket. The port names the socket file.
PG_PORT="${FLOWYARD_PG_PORT:-9712}"

KAFKA_STATE="$STATE_DIR/kafka"
DOCUMENTDB_LINK="$STATE_DIR/documentdb"
# resolve_documentdb_paths : the store's directories, through the link start.sh may have made
# (PostgreSQL's own user must see real paths: it cannot pass through root's home).
resolve_documentdb_paths() {
	DOCUMENTDB_STATE="$(readlink -f "$DOCUMENTDB_LINK" 2>/dev/null || echo "$DOCUMENTDB_LINK")"
	DOCUMENTDB_DATA="$DOCUMENTDB_STATE/data"
	DOCUMENTDB_SOCKET_DIR="$DOCUMENTDB_STATE/run"
	DOCUMENTDB_PG_LOG="$DOCUMENTDB_STATE/postgresql.log"
}
resolve_documentdb_paths
DOCUMENTDB_PASSWORD_FILE="$STATE_DIR/documentdb-password"
DOCUMENTDB_URL_FILE="$STATE_DIR/mongo-url"
DOCUMENTDB_USER="flowyard"
# PostgreSQL refuses to run as root: then it runs as Debian's postgres user.
if [[ "$(id -u)" == 0 ]]; then PG_OS_USER="${FLOWYARD_PG_OS_USER:-postgres}"; else PG_OS_USER="$(id -un)"; fi
PG_SUPERUSER="flowyard_system"

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
	documentdb) [[ "$args" == *documentdb_gateway* ]] ;;
	dev-services) [[ "$args" == *dev_services.py* ]] ;;
	*) return 1 ;;
	esac
}

# component_port COMPONENT : the client port the component answers on.
component_port() {
	case "$1" in
	kafka) echo "$KAFKA_PORT" ;;
	documentdb) echo "$MONGO_PORT" ;;
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

# parse_components ARG : sets WANTED to the components named by kafka|documentdb|all (default all).
parse_components() {
	case "${1:-all}" in
	all) WANTED=(kafka documentdb) ;;
	kafka | documentdb) WANTED=("$1") ;;
	*) die "unknown component '${1}' (expected kafka, documentdb or all)" ;;
	esac
}

# kafka_installed / documentdb_installed : whether the install scripts have nothing to do.
kafka_installed() {
	[[ -f "$KAFKA_MARKER" && -f "$KAFKA_LIBS/kafka_${KAFKA_SCALA_VERSION}-${KAFKA_VERSION}.jar" ]]
}

documentdb_installed() {
	local pg_config sharedir
	pg_config="$(find_pg_config)" || return 1
	sharedir="$("$pg_config" --sharedir)"
	[[ -f "$DOCUMENTDB_MARKER" && -x "$DOCUMENTDB_GATEWAY_BIN" ]] &&
		[[ -f "$sharedir/extension/documentdb.control" ]] &&
		[[ -f "$sharedir/extension/vector.control" ]] &&
		[[ -f "$sharedir/extension/pg_cron--1.5--1.6.sql" ]]
}

# find_pg_config / pg_bin : PostgreSQL $PG_MAJOR's pg_config and server programs (Debian keeps
# them under /usr/lib/postgresql/<major>/bin, not on PATH).
find_pg_config() {
	local candidate
	for candidate in "${PG_CONFIG:-}" "/usr/lib/postgresql/$PG_MAJOR/bin/pg_config" "$(command -v pg_config 2>/dev/null)"; do
		[[ -n "$candidate" && -x "$candidate" ]] || continue
		if [[ "$("$candidate" --version)" == "PostgreSQL $PG_MAJOR."* ]]; then
			echo "$candidate"
			return 0
		fi
	done
	log "error: PostgreSQL $PG_MAJOR's pg_config not found (Debian packages postgresql-$PG_MAJOR and postgresql-server-dev-$PG_MAJOR; scripts/bootstrap.sh installs them)"
	return 1
}

pg_bin() {
	printf '%s/%s\n' "$("$(find_pg_config)" --bindir)" "$1"
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
