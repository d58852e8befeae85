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
# Usage: scripts/soak.sh [KILLS] (default 200) [ROUNDS] (default 5)
set -euo pipefail
cd "$(dirname "$0")/.."
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
