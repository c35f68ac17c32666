#!/usr/bin/env bash
# Runs m365bk's whole test suite: builds the real-file corpus (cached in corpus/ and
# .cache/corpus-sources/), then every crate's unit and integration tests, including the
# end-to-end tests that run the real binaries against the tenant simulator over HTTP, and the
# backend conformance suite against real S3 and Azure Blob servers (scripts/test-servers.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

python3 scripts/build-corpus.py --out corpus
python3 scripts/build-corpus.py --small --out corpus-small

# Real S3 (moto) and Azure Blob (Azurite) servers for the backend tests, installed into .cache/
# once; the tests start and stop their own instances on free 127.0.0.1 ports.
eval "$(scripts/test-servers.sh)"

export M365BK_TEST_CORPUS="$PWD/corpus"
export M365BK_TEST_CORPUS_SMALL="$PWD/corpus-small"
if command -v cargo-nextest >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
  cargo test --workspace --doc
else
  cargo test --workspace --no-fail-fast "$@"
fi
