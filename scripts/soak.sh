#!/usr/bin/env bash
# Crash soak (not run by CI): kill -9 worker processes mid-step many times on
# a real PostgreSQL and check that no run is lost, none is left running, and
# no non-idempotent step ran twice. Usage: scripts/soak.sh [KILLS] (default 200)
set -euo pipefail
cd "$(dirname "$0")/.."
export OPSC_SOAK_KILLS="${1:-200}"
exec cargo test -p opsconductor-cli --test cluster -- kill_9 --nocapture
