#!/usr/bin/env bash
# The one test command (CI runs exactly this). It installs what the tests
# need when it is missing — OpenSSH's sshd, the PostgreSQL 15 server
# binaries, the Rust components — then checks formatting and lints, runs
# every Rust test (real SQLite, PostgreSQL, sshd and Docker engine), the
# examples, and the Python module's tests.
#
# Usage: scripts/test.sh            (as root on a fresh machine, or with sudo rights)
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# --- what the tests need ----------------------------------------------------
apt_updated=""
# Packages must not start their own services (sshd, postgresql) here: a
# policy-rc.d that refuses them is installed for the installs, and removed on
# exit when this script installed it (one the machine already had stays).
policy_rc_installed=""
remove_policy_rc() {
  if [ -n "$policy_rc_installed" ]; then
    as_root rm -f /usr/sbin/policy-rc.d || true
    policy_rc_installed=""
  fi
}
trap remove_policy_rc EXIT
apt_install() {
  say "installing $*"
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee /usr/sbin/policy-rc.d >/dev/null
    policy_rc_installed=1
    as_root chmod +x /usr/sbin/policy-rc.d
  fi
  if [ -z "$apt_updated" ]; then as_root apt-get update -qq; apt_updated=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

for c in rustfmt clippy; do
  if ! rustup component list --installed 2>/dev/null | grep -q "^$c"; then
    say "installing rust component $c"; rustup component add "$c"
  fi
done
[ -x /usr/sbin/sshd ] || apt_install openssh-server
as_root mkdir -p -m755 /run/sshd
command -v ssh-keygen >/dev/null || apt_install openssh-client
[ -x /usr/lib/postgresql/15/bin/initdb ] || apt_install postgresql-15
command -v runuser >/dev/null || apt_install util-linux
id postgres >/dev/null 2>&1 || as_root useradd --system --home /var/lib/postgresql --shell /bin/sh postgres
for tool in sh sleep md5sum base64 python3 docker; do
  command -v "$tool" >/dev/null || { echo "missing $tool: install it first" >&2; exit 1; }
done
docker info >/dev/null 2>&1 || { echo "the Docker engine is not reachable (docker info failed)" >&2; exit 1; }

# A real SMTP server for the notification tests: aiosmtpd (PyPI) in a venv
# under target/, made once per machine; the tests find it through
# OPSC_TEST_PYTHON.
smtp_venv="${CARGO_TARGET_DIR:-target}/test-venv"
if ! "$smtp_venv/bin/python" -c 'import aiosmtpd' >/dev/null 2>&1; then
  say "installing aiosmtpd into $smtp_venv"
  python3 -m venv "$smtp_venv" 2>/dev/null || { apt_install python3-venv; python3 -m venv "$smtp_venv"; }
  "$smtp_venv/bin/pip" install -q aiosmtpd
fi
export OPSC_TEST_PYTHON="$(cd "$smtp_venv" && pwd)/bin/python"

# One clean build: an incremental cache only costs disk here (about 2 GB) and
# a fresh machine builds everything once anyway. Set CARGO_INCREMENTAL=1 to
# keep it while iterating.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

# Tests must not inherit a developer's configuration.
unset OPSC_DATABASE_URL OPSC_LOG OPSC_MASTER_KEY OPSC_MASTER_KEY_FILE OPSC_MASTER_PASSPHRASE || true
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-always}"

# --- checks and tests ----------------------------------------------------------
say "disk before the build (a full build needs about 6 GB under target/)"
df -h . | tail -1
say "cargo fmt --check"
cargo fmt --all -- --check

say "cargo clippy (all targets, all features, warnings are errors)"
cargo clippy --workspace --all-targets --all-features -- -D warnings

# Each crate again with its default features only, one at a time (a
# workspace-wide build would unify features: the CLI turns every backend and
# executor on), so the cfg(not(feature = …)) branches build too.
for p in opsconductor-core opsconductor-store opsconductor-executors opsconductor-http opsconductor opsconductor-python; do
  say "cargo clippy -p $p (all targets, default features)"
  cargo clippy -p "$p" --all-targets -- -D warnings
done

say "cargo test (every crate, every feature; one integration-test binary a crate, tests/it/)"
SECONDS=0
cargo test --workspace --all-features
say "tests took ${SECONDS}s (build and run)"

say "examples"
cargo run --quiet --all-features --example embed

say "Python module (wheel, pytest, mypy --strict)"
bash crates/python/scripts/test.sh --debug

say "disk after the run"; df -h . | tail -1; du -sh target 2>/dev/null || true
say "all green"
