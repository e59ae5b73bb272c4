#!/usr/bin/env bash
# Installs what Sluice's tests and demo need, skipping whatever is already there:
# Debian packages (Postgres 15, MariaDB, a C toolchain for the bundled librdkafka),
# cargo-nextest, the tansu Kafka-API broker (built with its sqlite storage engine) and the
# garage S3-compatible object store.
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
command -v runuser >/dev/null || missing+=(util-linux)
[ -x /usr/sbin/mariadbd ] || missing+=(mariadb-server)
command -v mariadb >/dev/null || missing+=(mariadb-client)
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
# is on the PATH). Features matter: a plain `cargo install tansu` has no storage engine and
# silently drops every write.
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

if installed tansu 0.6.0 libsql dynostore; then
  say "tansu 0.6.0 (libsql, dynostore): present"
else
  say "cargo install tansu 0.6.0 --features libsql,dynostore (about 15-20 minutes on 2 cores)"
  cargo install tansu --version 0.6.0 --locked --features libsql,dynostore
fi

if installed garage 2.5.0; then
  say "garage 2.5.0: present"
else
  say "cargo install garage 2.5.0 (about 12-15 minutes on 2 cores)"
  cargo install garage --version 2.5.0 --locked
fi

say "done in $(( $(date +%s) - phase_start ))s"
