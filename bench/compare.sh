#!/usr/bin/env bash
# The benchmark harness: our cluster, Node's cluster module and a floor
# program, each metric interleaved over several rounds. See docs/performance.md.
#   bench/compare.sh            # full run (5 rounds)
#   bench/compare.sh --quick    # smoke check, under 3 minutes
#   bench/compare.sh --only pingpong,down
set -euo pipefail
cd "$(dirname "$0")/.."
command -v node >/dev/null || { echo "bench/compare.sh needs Node.js (node) for the baseline" >&2; exit 1; }
command -v python3 >/dev/null || { echo "bench/compare.sh needs python3 to drive the runs" >&2; exit 1; }
command -v taskset >/dev/null || { echo "bench/compare.sh needs taskset (util-linux) to pin runs" >&2; exit 1; }
if ! command -v wrk >/dev/null; then
  echo "installing wrk (Debian package) for the HTTP metric" >&2
  apt-get install -y wrk >/dev/null 2>&1 || { apt-get update >/dev/null 2>&1 && apt-get install -y wrk >/dev/null 2>&1; } \
    || { echo "bench/compare.sh needs wrk, which could not be installed" >&2; exit 1; }
fi
cargo build --release --locked -p bench -p isotropic-cluster-cli --bins
exec python3 bench/compare.py "$@"
