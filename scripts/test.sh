#!/usr/bin/env bash
# The one test command (CI runs exactly this): installs what the tests need
# when it is missing, then checks formatting, lints, runs every test and the
# examples. Usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

# --- what the tests need --------------------------------------------------
need_rust_component() {
  if ! cargo "$1" --version >/dev/null 2>&1; then
    say "installing rust component $2"
    rustup component add "$2"
  fi
}
need_rust_component fmt rustfmt
need_rust_component clippy clippy
# The local executor's tests use POSIX sh, coreutils and python3 (script steps).
for tool in sh sleep python3; do
  command -v "$tool" >/dev/null || { echo "missing $tool: install it (apt-get install -y $tool)"; exit 1; }
done

# Tests must not inherit a developer's configuration.
unset OPSC_DATABASE_URL OPSC_LOG || true
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-always}"

say "cargo fmt --check"
cargo fmt --all -- --check

say "cargo clippy (all targets, all features, warnings are errors)"
cargo clippy --workspace --all-targets --all-features -- -D warnings

say "cargo test (every crate, every feature)"
cargo test --workspace --all-features

say "examples"
cargo run --quiet --all-features --example embed

say "all green"
