#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Fetches the Apache Kafka broker jars (kafka_2.13 with its runtime dependencies, plus the
# slf4j-reload4j binding) with mvn into $FLOWYARD_CACHE_DIR/kafka-<version>/libs/.
# Skips when the marker file from a previous successful install is present.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

# Kafka 3.9.x is built against slf4j 1.7.36; the binding must match.
SLF4J_VERSION="1.7.36"
DEPENDENCY_PLUGIN="org.apache.maven.plugins:maven-dependency-plugin:3.6.1"

if kafka_installed; then
	log "Kafka $KAFKA_VERSION already installed: $KAFKA_LIBS"
	exit 0
fi

command -v mvn >/dev/null 2>&1 || die "mvn not found on PATH"
JAVA_BIN="$(find_java)"

build_dir="$KAFKA_HOME/build"
tmp_libs="$KAFKA_HOME/libs.tmp"
build_log="$build_dir/mvn.log"
mkdir -p "$build_dir"
rm -rf "$tmp_libs"

# Throwaway pom: only its dependency list matters. All of the broker's modules
# (kafka-server, kafka-storage, kafka-raft, kafka-metadata, the coordinators, jackson,
# zookeeper, ...) are declared "runtime" in kafka_2.13's pom, so includeScope=runtime.
cat >"$build_dir/pom.xml" <<POM
<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0"
         xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
         xsi:schemaLocation="http://maven.apache.org/POM/4.0.0 http://maven.apache.org/xsd/maven-4.0.0.xsd">
  <modelVersion>4.0.0</modelVersion>
  <groupId>flowyard.local</groupId>
  <artifactId>kafka-broker-libs</artifactId>
  <version>${KAFKA_VERSION}</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_${KAFKA_SCALA_VERSION}</artifactId>
      <version>${KAFKA_VERSION}</version>
    </dependency>
    <dependency>
      <groupId>org.slf4j</groupId>
      <artifactId>slf4j-reload4j</artifactId>
      <version>${SLF4J_VERSION}</version>
    </dependency>
  </dependencies>
</project>
POM

start=$SECONDS
if ! mvn -B -q -f "$build_dir/pom.xml" "$DEPENDENCY_PLUGIN:copy-dependencies" \
	-DincludeScope=runtime -DoutputDirectory="$tmp_libs" >"$build_log" 2>&1; then
	cat "$build_log" >&2
	die "mvn failed to fetch the Kafka jars (log: $build_log)"
fi

[[ -f "$tmp_libs/kafka_${KAFKA_SCALA_VERSION}-${KAFKA_VERSION}.jar" ]] ||
	die "kafka_${KAFKA_SCALA_VERSION}-${KAFKA_VERSION}.jar missing after mvn (log: $build_log)"

# Cheap smoke test: the storage tool must load from this classpath.
if ! "$JAVA_BIN" -cp "$tmp_libs/*" kafka.tools.StorageTool random-uuid >/dev/null 2>"$build_dir/smoke.log"; then
	cat "$build_dir/smoke.log" >&2
	die "the fetched jars do not run kafka.tools.StorageTool"
fi

rm -rf "$KAFKA_LIBS"
mv "$tmp_libs" "$KAFKA_LIBS"
printf 'kafka_%s %s\nslf4j-reload4j %s\n' "$KAFKA_SCALA_VERSION" "$KAFKA_VERSION" "$SLF4J_VERSION" >"$KAFKA_MARKER"
log "installed Kafka $KAFKA_VERSION ($(find "$KAFKA_LIBS" -name '*.jar' | wc -l) jars) in $((SECONDS - start))s: $KAFKA_LIBS"
