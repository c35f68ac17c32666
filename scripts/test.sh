#!/usr/bin/env bash
# Runs m365bk's whole test suite: builds the real-file corpus (cached in corpus/ and
# .cache/corpus-sources/), then every crate's unit and integration tests, including the
# end-to-end tests that run the real binaries against the tenant simulator over HTTP.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 scripts/build-corpus.py --out corpus
python3 scripts/build-corpus.py --small --out corpus-small

export M365BK_TEST_CORPUS="$PWD/corpus"
export M365BK_TEST_CORPUS_SMALL="$PWD/corpus-small"
if command -v cargo-nextest >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
  cargo test --workspace --doc
else
  cargo test --workspace --no-fail-fast "$@"
fi
