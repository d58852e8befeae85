#!/usr/bin/env bash
# The main job on the embedded default (SQLite in ./opsconductor.db, no
# configuration): build, load the example jobs, run one live, inspect it,
# then start the server (REST API + workers) on http://127.0.0.1:8080.
# The first start prints the `admin` password once. Ctrl-C stops it.
# Usage: scripts/quickstart.sh [--no-serve]
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
set +x
[[ "${1:-}" == "--no-serve" ]] && exit 0
echo
echo "Starting the server on the same database: http://127.0.0.1:8080 (API docs at /api/v1/docs; Ctrl-C stops it)"
exec "$oc" serve
