#!/usr/bin/env bash
# Property-based API testing with schemathesis (from PyPI, in a venv):
# generates requests from /api/v1/openapi.json and sends them to a real
# `opsconductor serve` as each role (viewer, operator, admin), then reports
# how many answers were 5xx — counted by the server itself (/metrics), so
# the number does not depend on the schemathesis version. It must be 0.
# It also fails when schemathesis crashed, reported errors of its own, or
# sent no request at all (the server's request count did not move): a 0
# from a run that tested nothing proves nothing.
#
# The stateful phase is left out: schemathesis 4.32 infers a link from
# `Location: /api/v1/runs/ID` to `GET /api/v1/users/{name}` and stops on it.
#
# Not part of scripts/test.sh (it takes minutes). Usage:
#   scripts/schemathesis.sh [MAX_EXAMPLES_PER_OPERATION]   (default 30)
set -euo pipefail
cd "$(dirname "$0")/.."

examples="${1:-30}"
work="$(mktemp -d)"
venv="${SCHEMATHESIS_VENV:-$PWD/target/schemathesis-venv}"
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  if [ -n "${KEEP:-}" ]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

if [ ! -x "$venv/bin/schemathesis" ] && [ ! -x "$venv/bin/st" ]; then
  say "installing schemathesis into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --upgrade pip
  "$venv/bin/pip" install --quiet schemathesis
fi
st="$venv/bin/schemathesis"; [ -x "$st" ] || st="$venv/bin/st"

say "building opsconductor"
cargo build --quiet -p opsconductor-cli
bin="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/debug/opsconductor"

port="$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')"
base="http://127.0.0.1:$port"
cat > "$work/server.toml" <<EOF
listen = "127.0.0.1:$port"
workers = 2
api_per_user_per_minute = 0
login_per_account_per_minute = 0
login_per_ip_per_minute = 0
EOF
say "starting the server on $base"
OPSC_ADMIN_PASSWORD="schemathesis-admin-pw" OPSC_LOG=warn \
  "$bin" --database-url "sqlite://$work/ops.db" serve --config "$work/server.toml" \
  >"$work/server.out" 2>"$work/server.err" &
server_pid=$!
for _ in $(seq 100); do curl -fsS "$base/health" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fsS "$base/health" >/dev/null

json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
admin=$(curl -fsS -H 'content-type: application/json' \
  -d '{"username":"admin","password":"schemathesis-admin-pw"}' "$base/api/v1/auth/login" | json "['access_token']")
# Something to read: a job, a target, a secret, a run.
curl -fsS -o /dev/null -H "authorization: Bearer $admin" -H 'content-type: application/yaml' \
  --data-binary $'kind: Job\nname: hello\nsteps:\n  - exec: echo hi\n---\nkind: Target\nname: t1\n' "$base/api/v1/apply"
curl -fsS -o /dev/null -X PUT -H "authorization: Bearer $admin" -H 'content-type: application/json' \
  -d '{"value":"a-secret-value-123"}' "$base/api/v1/secrets/s1"
curl -fsS -o /dev/null -H "authorization: Bearer $admin" -H 'content-type: application/json' \
  -d '{"job":"hello"}' "$base/api/v1/runs"

declare -A tokens
for role in viewer operator admin; do
  if [ "$role" != admin ]; then
    curl -fsS -o /dev/null -H "authorization: Bearer $admin" -H 'content-type: application/json' \
      -d "{\"username\":\"$role-st\",\"password\":\"schemathesis-pw-$role\",\"role\":\"$role\"}" "$base/api/v1/users"
  fi
  # API tokens: a generated logout or password change cannot end them.
  tokens[$role]=$(curl -fsS -H "authorization: Bearer $admin" -H 'content-type: application/json' \
    -d "{\"name\":\"schemathesis $role\",\"role\":\"$role\"}" "$base/api/v1/auth/tokens" | json "['token']")
done

server_errors() {
  curl -fsS "$base/metrics" | awk '/^opsc_http_requests_total\{/ && /status="5[0-9][0-9]"/ {n += $NF} END {print n + 0}'
}
# Requests the server answered, its own /metrics scrapes (these two
# functions) left out, so that a run of schemathesis that sent nothing shows 0.
requests() {
  curl -fsS "$base/metrics" | awk '/^opsc_http_requests_total\{/ && !/route="\/metrics"/ {n += $NF} END {print n + 0}'
}

total_5xx=0
broken=""
for role in viewer operator admin; do
  say "schemathesis as $role ($examples examples per operation)"
  before=$(server_errors); sent_before=$(requests)
  # Run from the scratch directory: schemathesis keeps its example database in the working directory.
  # Its exit status is kept, not ignored: 1 means it found failures (5xx,
  # counted below from the server's side) or errors; anything else, or a
  # Python traceback, means it crashed — then its 0 would prove nothing.
  rc=0
  (cd "$work" && "$st" run "$base/api/v1/openapi.json" \
    --url "$base" \
    --header "Authorization: Bearer ${tokens[$role]}" \
    --checks not_a_server_error \
    --phases examples,coverage,fuzzing \
    --max-examples "$examples" \
    --workers 2 \
    --exclude-path '/api/v1/runs/{id}/ws' \
    --no-color >"$work/st-$role.log" 2>&1) || rc=$?
  tail -n 15 "$work/st-$role.log"
  after=$(server_errors); sent_after=$(requests)
  n=$((after - before))
  sent=$((sent_after - sent_before))
  total_5xx=$((total_5xx + n))
  echo "$role: $sent requests, $n answered 5xx (schemathesis exit status $rc)"
  if [ "$sent" -eq 0 ]; then
    echo "FAIL: schemathesis sent no request as $role (see $work/st-$role.log; KEEP=1 keeps it)"
    broken="$broken $role:no-requests"
  fi
  if { [ "$rc" -ne 0 ] && [ "$rc" -ne 1 ]; } || grep -q '^Traceback' "$work/st-$role.log"; then
    echo "FAIL: schemathesis crashed as $role (exit status $rc)"
    broken="$broken $role:crashed"
  elif [ "$rc" -eq 1 ] && [ "$n" -eq 0 ]; then
    # Failures without a 5xx are schemathesis's own errors (network, schema):
    # the run did not test what it should have.
    echo "FAIL: schemathesis reported errors as $role, though the server answered no 5xx"
    broken="$broken $role:errors"
  fi
done

say "result"
echo "5xx answers in total: $total_5xx"
if [ "$total_5xx" -ne 0 ]; then
  echo "server log (errors):"; grep -i error "$work/server.err" | tail -n 40 || true
  exit 1
fi
if [ -n "$broken" ]; then
  echo "schemathesis did not run properly:$broken"
  exit 1
fi
