#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Builds the local document store once: DocumentDB (MongoDB-compatible engine as PostgreSQL
# 15 extensions, plus its Rust wire-protocol gateway) with the two extensions it requires,
# pgvector and pg_cron.
#
# Sources: the tarballs in ../shared/vendor/ beside the repository when that folder exists
# (checked against its SHA256SUMS), otherwise the same upstream releases, downloaded and
# checked against the checksums pinned below. The Debian packages the build needs are
# installed by scripts/bootstrap.sh.
#
# Output, cached under $FLOWYARD_CACHE_DIR/documentdb-<version>/:
#   stage/    the extensions as `make install DESTDIR=stage` laid them out; copied into
#             PostgreSQL's own directories (it loads extensions from nowhere else)
#   bin/documentdb_gateway, tls/   the gateway and the self-signed certificate its release
#             build insists on (clients connect in plain TCP on loopback)
# Skips what is already done; re-copies the staged extensions when PostgreSQL's directories
# lost them (a reinstalled postgresql-15 package).
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

# Upstream releases and their archives' SHA-256 (the vendor folder's SHA256SUMS must agree).
DOCUMENTDB_URL="https://github.com/microsoft/documentdb/archive/$DOCUMENTDB_COMMIT.tar.gz"
PGVECTOR_URL="https://github.com/pgvector/pgvector/archive/refs/tags/v$PGVECTOR_VERSION.tar.gz"
PG_CRON_URL="https://github.com/citusdata/pg_cron/archive/refs/tags/v$PG_CRON_VERSION.tar.gz"
PGVECTOR_SHA256="93df40ccdaaaa267d1275c1e6e773004a0e5ff8e14227934a4ec7e8205d0f608"
PG_CRON_SHA256="3580f4034021e62e459f9f7ab1f625774bfc534a9256844545da85d6f99c2f5b"
DOCUMENTDB_VENDOR_SHA256="dd4bc6a0733842ca1f5331629e23b7e50517bd6e2eb8571f0b3b5b697fe47570"

VENDOR_DIR="${FLOWYARD_VENDOR_DIR:-$REPO_ROOT/../shared/vendor}"
SRC="$DOCUMENTDB_HOME/src"
STAGE="$DOCUMENTDB_HOME/stage"
BUILD_LOG="$DOCUMENTDB_HOME/build.log"

PG_CONFIG="$(find_pg_config)"
export PG_CONFIG

if documentdb_installed; then
	log "DocumentDB $DOCUMENTDB_VERSION already installed: $DOCUMENTDB_HOME"
	exit 0
fi

mkdir -p "$DOCUMENTDB_HOME" "$SRC"
: >"$BUILD_LOG"

# run_logged WHAT CMD... : runs CMD with its output in the build log; on failure shows the log's
# tail and stops.
run_logged() {
	local what="$1"
	shift
	if ! "$@" >>"$BUILD_LOG" 2>&1; then
		tail -n 60 "$BUILD_LOG" >&2
		die "$what failed (log: $BUILD_LOG)"
	fi
}

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# fetch_source NAME FILE SHA256 URL DIR : unpacks the release into $SRC/DIR (top folder
# stripped), from the vendor folder when it has FILE, else from URL. SHA256 empty: see below.
fetch_source() {
	local name="$1" file="$2" sha="$3" url="$4" dir="$5" archive
	[[ -f "$SRC/$dir/.unpacked" ]] && return 0
	if [[ -f "$VENDOR_DIR/$file" ]]; then
		archive="$VENDOR_DIR/$file"
		local listed
		listed="$(awk -v f="$file" '$2 == f {print $1}' "$VENDOR_DIR/SHA256SUMS" 2>/dev/null)"
		[[ -n "$listed" ]] || die "$VENDOR_DIR/SHA256SUMS does not list $file"
		[[ "$(sha256_of "$archive")" == "$listed" ]] || die "$archive does not match its SHA256SUMS entry"
		[[ -z "$sha" || "$sha" == "$listed" ]] || die "$file in $VENDOR_DIR is not the pinned release"
		log "using $name from $VENDOR_DIR"
	else
		archive="$DOCUMENTDB_HOME/$file.download"
		log "downloading $name from $url"
		command -v curl >/dev/null 2>&1 || die "curl not found (scripts/bootstrap.sh installs it)"
		curl -fsSL --retry 3 -o "$archive" "$url" || die "download of $url failed"
		if [[ -n "$sha" ]]; then
			[[ "$(sha256_of "$archive")" == "$sha" ]] || die "$url does not have the pinned SHA-256 $sha"
		fi
	fi
	rm -rf "${SRC:?}/$dir"
	mkdir -p "$SRC/$dir"
	tar -xzf "$archive" -C "$SRC/$dir" --strip-components=1
	touch "$SRC/$dir/.unpacked"
}

fetch_sources() {
	fetch_source pgvector "pgvector-$PGVECTOR_VERSION.tar.gz" "$PGVECTOR_SHA256" "$PGVECTOR_URL" pgvector
	fetch_source pg_cron "pg_cron-$PG_CRON_VERSION.tar.gz" "$PG_CRON_SHA256" "$PG_CRON_URL" pg_cron
	if [[ -f "$VENDOR_DIR/documentdb-${DOCUMENTDB_COMMIT:0:8}.tar.gz" ]]; then
		fetch_source DocumentDB "documentdb-${DOCUMENTDB_COMMIT:0:8}.tar.gz" "$DOCUMENTDB_VENDOR_SHA256" \
			"$DOCUMENTDB_URL" documentdb
	else
		# The vendor tarball is a repack (its top folder is documentdb/), so the archive that
		# the forge makes for the commit has another checksum. git archive writes the commit
		# id into the tar's pax header: that is what is checked for a download.
		fetch_source DocumentDB "documentdb-${DOCUMENTDB_COMMIT:0:8}.tar.gz" "" "$DOCUMENTDB_URL" documentdb
		local archive="$DOCUMENTDB_HOME/documentdb-${DOCUMENTDB_COMMIT:0:8}.tar.gz.download"
		if [[ -f "$archive" ]]; then
			local commit
			commit="$(python3 -c 'import sys, tarfile; print(tarfile.open(sys.argv[1]).pax_headers.get("comment", ""))' "$archive")"
			if [[ "$commit" != "$DOCUMENTDB_COMMIT" ]]; then
				rm -rf "$SRC/documentdb"
				die "$DOCUMENTDB_URL is not commit $DOCUMENTDB_COMMIT (archive says '${commit:-nothing}')"
			fi
		fi
	fi
}

# The documentdb Makefiles find the Intel decimal library through pkg-config as
# `intelmathlib`; Debian's libintelrdfpmath-dev ships the static library without a .pc file.
write_intelmathlib_pc() {
	local libdir
	libdir="$(dirname "$(find /usr/lib -name 'libbidgcc000.a' -print -quit 2>/dev/null)")"
	[[ -n "$libdir" && "$libdir" != . ]] || die "libbidgcc000.a not found (Debian package libintelrdfpmath-dev)"
	mkdir -p "$DOCUMENTDB_HOME/pkgconfig"
	cat >"$DOCUMENTDB_HOME/pkgconfig/intelmathlib.pc" <<PC
Name: intelmathlib
Description: Intel decimal floating-point math library (Debian libintelrdfpmath-dev)
Version: 2.0u2
Libs: -L$libdir -lbidgcc000
Cflags: -I/usr/include
PC
}

build_extensions() {
	local jobs
	jobs="$(nproc 2>/dev/null || echo 2)"
	rm -rf "$STAGE"
	mkdir -p "$STAGE"
	# PGXS builds; with_llvm=no: no bitcode for the JIT (no clang needed).
	run_logged "building pgvector" make -C "$SRC/pgvector" -j"$jobs" with_llvm=no OPTFLAGS=""
	run_logged "staging pgvector" make -C "$SRC/pgvector" install with_llvm=no DESTDIR="$STAGE"
	run_logged "building pg_cron" make -C "$SRC/pg_cron" -j"$jobs" with_llvm=no
	run_logged "staging pg_cron" make -C "$SRC/pg_cron" install with_llvm=no DESTDIR="$STAGE"
	write_intelmathlib_pc
	# Debian's libbson (1.23) predates BSON_SUBTYPE_SENSITIVE (0x08), which the sources use.
	local -a ddb_make=(
		with_llvm=no
		"COPT=-DBSON_SUBTYPE_SENSITIVE=0x08 -Wno-error=switch"
	)
	local part
	for part in pg_documentdb_core pg_documentdb; do
		PKG_CONFIG_PATH="$DOCUMENTDB_HOME/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}" \
			run_logged "building $part" make -C "$SRC/documentdb/$part" -j"$jobs" "${ddb_make[@]}"
		PKG_CONFIG_PATH="$DOCUMENTDB_HOME/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}" \
			run_logged "staging $part" make -C "$SRC/documentdb/$part" install "${ddb_make[@]}" DESTDIR="$STAGE"
	done
	touch "$STAGE/.complete"
}

build_gateway() {
	command -v cargo >/dev/null 2>&1 || die "cargo not found: the DocumentDB gateway is built with Rust's cargo (rustup)"
	local gw="$SRC/documentdb/pg_documentdb_gw"
	# The release build hard-codes INFO logging (the whole dynamic configuration every few
	# minutes); start at WARN and let RUST_LOG raise it.
	sed -i 's/\.with_level(log::LevelFilter::Info)$/.with_level(log::LevelFilter::Warn).env()/' "$gw/src/main.rs"
	grep -q 'LevelFilter::Warn).env()' "$gw/src/main.rs" || die "could not set the gateway's log level in $gw/src/main.rs"
	CARGO_TARGET_DIR="$DOCUMENTDB_HOME/cargo-target" \
		run_logged "building the DocumentDB gateway (cargo)" cargo build --release --locked --manifest-path "$gw/Cargo.toml"
	mkdir -p "$DOCUMENTDB_HOME/bin"
	cp -f "$DOCUMENTDB_HOME/cargo-target/release/documentdb_gateway" "$DOCUMENTDB_GATEWAY_BIN.tmp"
	mv -f "$DOCUMENTDB_GATEWAY_BIN.tmp" "$DOCUMENTDB_GATEWAY_BIN"
	rm -rf "$DOCUMENTDB_HOME/cargo-target/release/build" "$DOCUMENTDB_HOME/cargo-target/release/deps"
}

make_certificate() {
	[[ -s "$DOCUMENTDB_HOME/tls/cert.pem" && -s "$DOCUMENTDB_HOME/tls/key.pem" ]] && return 0
	command -v openssl >/dev/null 2>&1 || die "openssl not found (Debian package openssl)"
	mkdir -p "$DOCUMENTDB_HOME/tls"
	run_logged "making the gateway's certificate" openssl req -x509 -newkey rsa:2048 -nodes -days 3650 \
		-subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
		-keyout "$DOCUMENTDB_HOME/tls/key.pem" -out "$DOCUMENTDB_HOME/tls/cert.pem"
	chmod 600 "$DOCUMENTDB_HOME/tls/key.pem"
}

# Copies the staged extensions into PostgreSQL's directories (the only place it loads
# extensions from), as root or through sudo.
install_staged() {
	local -a as_root=()
	[[ "$(id -u)" == 0 ]] || as_root=(sudo)
	"${as_root[@]}" cp -a "$STAGE/usr/." /usr/ || die "copying the extensions into PostgreSQL's directories failed"
}

start=$SECONDS
if [[ ! -f "$STAGE/.complete" || ! -x "$DOCUMENTDB_GATEWAY_BIN" ]]; then
	fetch_sources
fi
[[ -f "$STAGE/.complete" ]] || build_extensions
[[ -x "$DOCUMENTDB_GATEWAY_BIN" ]] || build_gateway
make_certificate
install_staged
printf 'documentdb %s (%s)\npgvector %s\npg_cron %s\n' "$DOCUMENTDB_VERSION" "$DOCUMENTDB_COMMIT" \
	"$PGVECTOR_VERSION" "$PG_CRON_VERSION" >"$DOCUMENTDB_MARKER"
log "installed DocumentDB $DOCUMENTDB_VERSION in $((SECONDS - start))s: $DOCUMENTDB_HOME"
