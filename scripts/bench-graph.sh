#!/usr/bin/env bash
# Graph throughput benchmark (not a test): generates a deterministic tenant of 20 users with
# 20,000 small messages and 5,000 small files, starts the tenant simulator with 20 ms per
# request and Microsoft's throttling limits (Outlook: 4 concurrent and 10,000 requests per
# 10 minutes per mailbox; OneDrive: 1,250 resource units per minute), backs up every mailbox
# and every OneDrive with the real m365bk binary, and prints items/s, MB/s, requests per item,
# the share of 429 answers, the ratio of the throttle-bound optimum to the measured time (the
# formula is in benches/graph_throughput.py), peak RSS, and whether every item was stored.
#
#   scripts/bench-graph.sh [WORKDIR]      (default ./bench-work; the corpus is kept there)
#
# M365BK_BENCH_PROFILE=debug uses the debug build (dependencies optimised, as for the tests)
# instead of building release.
set -euo pipefail
cd "$(dirname "$0")/.."
work="${1:-$PWD/bench-work}"
profile="${M365BK_BENCH_PROFILE:-release}"
if [ "$profile" = release ]; then
  cargo build --release --quiet -p m365bk -p m365bk-tenant-sim
else
  cargo build --quiet -p m365bk -p m365bk-tenant-sim
fi
bin="${CARGO_TARGET_DIR:-$PWD/target}/$profile"
# Cheap key derivation for the benchmark's repository: it measures Graph throughput, not Argon2id.
export M365BK_KDF_MEMORY_KIB=64 M365BK_KDF_ITERATIONS=1 M365BK_KDF_PARALLELISM=1
exec python3 benches/graph_throughput.py --bin "$bin" --work "$work" "${@:2}"
