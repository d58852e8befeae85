#!/usr/bin/env bash
# The five-minute tour on the embedded default (SQLite in ./opsconductor.db,
# no configuration): build, load the example jobs, run one live, inspect it.
# Usage: scripts/quickstart.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet -p opsconductor-cli
oc="${CARGO_TARGET_DIR:-target}/release/opsconductor"
set -x
$oc apply -f examples/jobs/
$oc run deploy -p version=1.4.2 --follow
$oc exec -t 'tag:app' -- 'echo "hello from $OPSC_TARGET"; uname -sr'
$oc runs list --limit 5
$oc runs show "$($oc runs list --limit 1 --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')"
