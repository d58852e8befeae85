#!/usr/bin/env bash
# Soak (not run by CI) on a real PostgreSQL:
#  - crash: kill -9 worker processes mid-step many times and check that no run
#    is lost, none is left running, and no non-idempotent step ran twice;
#  - chatty output: runs printing ~2,000 lines/s for three leases keep their
#    lease (attempt 1, every line in order), and a long many-step job too;
#  - stop/continue: a worker SIGSTOPped past its lease mid-step and SIGCONTed
#    after another worker rescued the run: the idempotent step's two runs
#    never overlap (SQLite and PostgreSQL), and a remote SSH step dies with
#    its frozen worker;
#  - chatty output through the real binary (`chatty_output` below): a release
#    `opsconductor worker` with its real lease, on SQLite and PostgreSQL.
# Usage: scripts/soak.sh [KILLS] (default 200) [ROUNDS] (default 5)
#        scripts/soak.sh chatty    (only the chatty-output scenario)
# Environment: OPSC_SOAK_LEASE (seconds, default 30) for `chatty_output`.
set -euo pipefail
cd "$(dirname "$0")/.."

# Chatty output through the real binary, on SQLite and PostgreSQL: five runs
# each print >= 1,000 lines/s (bursts of 150 numbered lines every 50 ms) for
# three leases on one `opsconductor worker --concurrency 5`. Each run must end
# `succeeded` on attempt 1 (the worker never lost its own lease) with every
# line stored, in order. Prints the lines/s each run held.
chatty_output() {
  local lease="${OPSC_SOAK_LEASE:-30}"
  local target="${CARGO_TARGET_DIR:-target}"
  cargo build --release -p opsconductor-cli
  local bin="$target/release/opsconductor"
  local dir
  dir=$(mktemp -d)
  chmod 755 "$dir"
  local pg_data="" worker_pid=""
  # shellcheck disable=SC2064 # expand now: the paths are fixed.
  trap "chatty_cleanup '$dir'" EXIT
  local secs=$((lease * 3))
  cat >"$dir/chatty.yaml" <<YAML
kind: Job
name: chatty
steps:
  - exec: |
      end=\$(( \$(date +%s%N) + ${secs}000000000 )); i=0
      while [ "\$(date +%s%N)" -lt "\$end" ]; do seq \$((i * 150 + 1)) \$((i * 150 + 150)); i=\$((i + 1)); sleep 0.05; done
YAML
  for backend in sqlite postgres; do
    local url
    if [ "$backend" = sqlite ]; then
      url="sqlite://$dir/soak.db"
    else
      local pg=/usr/lib/postgresql/15/bin port
      pg_data="$dir/pg"
      mkdir -p "$pg_data" && chown postgres: "$pg_data"
      port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
      runuser -u postgres -- "$pg/initdb" -D "$pg_data/data" -U postgres -A trust --no-sync -E UTF8 >/dev/null
      runuser -u postgres -- "$pg/pg_ctl" -D "$pg_data/data" -l "$pg_data/log" -w \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $pg_data" start >/dev/null
      url="postgres://postgres@127.0.0.1:$port/postgres"
    fi
    echo "== chatty output on $backend: 5 runs x ${secs}s, lease ${lease}s"
    export OPSC_DATABASE_URL="$url"
    "$bin" apply -f "$dir/chatty.yaml" >/dev/null
    "$bin" worker --concurrency 5 --lease "${lease}s" --poll 200ms 2>"$dir/worker-$backend.log" &
    worker_pid=$!
    local ids=()
    for _ in 1 2 3 4 5; do
      ids+=("$("$bin" --json run chatty --detach | python3 -c 'import json,sys;print(json.load(sys.stdin)["id"])')")
    done
    local deadline=$((SECONDS + secs + 120))
    for id in "${ids[@]}"; do
      until "$bin" --json runs show "$id" |
        python3 -c 'import json,sys;sys.exit(0 if json.load(sys.stdin)["status"] not in ("queued","running") else 1)'; do
        if [ "$SECONDS" -gt "$deadline" ]; then
          echo "run $id did not end in time" >&2
          return 1
        fi
        sleep 2
      done
    done
    for id in "${ids[@]}"; do
      "$bin" --json runs show "$id" >"$dir/run.json"
      "$bin" --json runs logs "$id" >"$dir/logs.jsonl"
      python3 - "$dir/run.json" "$dir/logs.jsonl" "$secs" <<'PY'
import datetime, json, sys
run = json.load(open(sys.argv[1]))
secs = int(sys.argv[3])
rid = run["id"]
assert run["status"] == "succeeded", f"{rid}: {run['status']} ({run.get('error')})"
assert run["attempt"] == 1, f"{rid}: attempt {run['attempt']}: rescued from a live worker"
seqs, out = [], []
for line in open(sys.argv[2]):
    c = json.loads(line)
    seqs.append(c["seq"])
    if c["stream"] == "stdout":
        out.append(c["data"])
assert seqs == list(range(1, len(seqs) + 1)), f"{rid}: chunk sequence has gaps"
lines = "".join(out).splitlines()
for i, l in enumerate(lines):
    assert l == str(i + 1), f"{rid}: line {i + 1} lost or out of order (found {l!r})"
t = lambda s: datetime.datetime.fromisoformat(s.replace("Z", "+00:00"))
took = (t(run["finished_at"]) - t(run["started_at"])).total_seconds()
assert took >= secs, f"{rid}: lasted only {took:.1f}s"
rate = len(lines) / took
assert rate >= 1000, f"{rid}: only {rate:.0f} lines/s"
print(f"  {rid}: succeeded, attempt 1, {len(lines)} lines in order, {rate:.0f} lines/s over {took:.1f}s")
PY
    done
    kill -TERM "$worker_pid" && wait "$worker_pid" || true
    worker_pid=""
    if [ -n "$pg_data" ]; then
      runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D "$pg_data/data" -m fast stop >/dev/null
      pg_data=""
    fi
  done
}

chatty_cleanup() {
  if [ -n "${worker_pid:-}" ]; then kill -KILL "$worker_pid" 2>/dev/null || true; fi
  if [ -n "${pg_data:-}" ]; then
    runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D "$pg_data/data" -m immediate stop >/dev/null 2>&1 || true
  fi
  rm -rf "$1"
}

if [ "${1:-}" = chatty ]; then
  chatty_output
  exit 0
fi

export OPSC_SOAK_KILLS="${1:-200}"
rounds="${2:-5}"
cargo test -p opsconductor-cli --test it -- cluster::kill_9 --nocapture
for i in $(seq "$rounds"); do
  echo "== chatty output and many steps, round $i of $rounds"
  cargo test --all-features --test it -- chatty many_steps --nocapture
done
for i in $(seq "$rounds"); do
  echo "== stop/continue, round $i of $rounds"
  cargo test -p opsconductor-cli --test cluster -- frozen_worker --nocapture
  cargo test -p opsconductor-cli --test ssh -- frozen --nocapture
done
chatty_output
