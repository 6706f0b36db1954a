#!/usr/bin/env bash
# Installs what the project needs and is missing: the system tools (Java for Kafka, Maven to
# fetch Kafka's jars, PostgreSQL 15 and the libraries DocumentDB is built against, bubblewrap
# for the code sandbox), uv, and the Python workspace from uv.lock. The document store itself
# is built once by scripts/stack/install-documentdb.sh (which scripts/stack/start.sh calls).
# Idempotent and quiet when everything is present.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v java >/dev/null 2>&1 || need_apt+=(default-jre-headless)
command -v mvn >/dev/null 2>&1 || need_apt+=(maven)
# DocumentDB (the local document store) is built from source on PostgreSQL 15: these are the
# Debian packages it needs (../shared/vendor/README.md); Rust's cargo builds its gateway.
documentdb_packages=(build-essential pkg-config postgresql-15 postgresql-server-dev-15
	postgresql-15-rum postgresql-15-postgis-3 libbson-dev libintelrdfpmath-dev libpcre2-dev
	libkrb5-dev libicu-dev libssl-dev openssl)
for pkg in "${documentdb_packages[@]}"; do
	dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || need_apt+=("$pkg")
done
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
# promtool checks the Prometheus config and rules in the contract tests
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
# bubblewrap confines code nodes (namespaces, no network, read-only view); docs/threat-model.md
command -v bwrap >/dev/null 2>&1 || need_apt+=(bubblewrap)
# kcat: the external producer of the README's events example and its test
command -v kcat >/dev/null 2>&1 || need_apt+=(kcat)
if [ ${#need_apt[@]} -gt 0 ]; then
	echo "bootstrap: installing ${need_apt[*]}" >&2
	if [ "$(id -u)" = 0 ]; then apt_get=(apt-get); else apt_get=(sudo apt-get); fi
	"${apt_get[@]}" update -qq
	DEBIAN_FRONTEND=noninteractive "${apt_get[@]}" install -y -qq "${need_apt[@]}" >/dev/null
fi
# DocumentDB needs pg_cron 1.6 (built from source); Debian's 1.4 package would shadow it.
if dpkg-query -W -f='${Status}' postgresql-15-cron 2>/dev/null | grep -q 'install ok installed'; then
	echo "bootstrap: removing postgresql-15-cron (DocumentDB needs pg_cron 1.6, built from source)" >&2
	if [ "$(id -u)" = 0 ]; then apt_get=(apt-get); else apt_get=(sudo apt-get); fi
	DEBIAN_FRONTEND=noninteractive "${apt_get[@]}" remove -y -qq postgresql-15-cron >/dev/null
fi

PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -m uv --version >/dev/null 2>&1; then
	echo "bootstrap: installing uv" >&2
	"$PYTHON" -m pip install --quiet --user uv 2>/dev/null ||
		"$PYTHON" -m pip install --quiet uv
fi
"$PYTHON" -m uv sync --all-packages --frozen --quiet
