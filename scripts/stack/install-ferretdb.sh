#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Builds FerretDB v1 (SQLite backend) from the Go module proxy by compiling the small
# launcher in deploy/ferretdb-launcher, which embeds github.com/FerretDB/FerretDB/ferretdb.
# Output: $FLOWYARD_CACHE_DIR/ferretdb-<version>/flowyard-ferretdb. Skips when up to date.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

[[ -f "$FERRETDB_SRC/go.mod" ]] || die "launcher sources not found in $FERRETDB_SRC"

if ferretdb_installed; then
	log "FerretDB $FERRETDB_VERSION already built: $FERRETDB_BIN"
	exit 0
fi

GO_BIN="$(find_go)"
mkdir -p "$FERRETDB_HOME"
tmp_bin="$FERRETDB_BIN.tmp.$$"
build_log="$FERRETDB_HOME/build.log"
trap 'rm -f "$tmp_bin"' EXIT

start=$SECONDS
# Sane, explicit Go settings: default GOPATH/GOMODCACHE, module mode, go.sum must already
# be complete (it is committed), pure-Go SQLite so no C toolchain is needed.
if ! (
	cd "$FERRETDB_SRC" &&
		env GO111MODULE=on CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false" \
			"$GO_BIN" build -trimpath -ldflags="-s -w" -o "$tmp_bin" .
) >"$build_log" 2>&1; then
	cat "$build_log" >&2
	die "FerretDB launcher build failed (log: $build_log)"
fi
mv -f "$tmp_bin" "$FERRETDB_BIN"
log "built FerretDB $FERRETDB_VERSION launcher in $((SECONDS - start))s: $FERRETDB_BIN"
