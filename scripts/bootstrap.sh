#!/usr/bin/env bash
# Installs what the project needs and is missing: the system tools (Java for Kafka, Go
# for FerretDB, Maven to fetch Kafka's jars, bubblewrap for the code sandbox), uv, and the
# Python workspace from uv.lock.
# Idempotent and quiet when everything is present.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v java >/dev/null 2>&1 || need_apt+=(default-jre-headless)
command -v mvn >/dev/null 2>&1 || need_apt+=(maven)
command -v go >/dev/null 2>&1 || [ -x /usr/local/go/bin/go ] || need_apt+=(golang-go)
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

PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -m uv --version >/dev/null 2>&1; then
	echo "bootstrap: installing uv" >&2
	"$PYTHON" -m pip install --quiet --user uv 2>/dev/null ||
		"$PYTHON" -m pip install --quiet uv
fi
"$PYTHON" -m uv sync --all-packages --frozen --quiet
