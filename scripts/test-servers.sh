#!/usr/bin/env bash
# Installs the object-store servers the backend tests run against, into .cache/ (once; later
# runs only check that they are there), and prints the environment the tests read:
#   M365BK_TEST_MOTO_SERVER  moto_server (S3), from PyPI moto[server] in .cache/moto-venv
#   M365BK_TEST_AZURITE      azurite-blob (Azure Blob), from npm azurite@3.35.0 in .cache/azurite
# Use: eval "$(scripts/test-servers.sh)". Tests start and stop their own server processes on
# free 127.0.0.1 ports; this script starts nothing.
# Needs python3 with venv and npm (.ci/run installs them on Debian 12).
set -euo pipefail
cd "$(dirname "$0")/.."
cache="$PWD/.cache"
mkdir -p "$cache"

# moto: an in-memory S3 that honours If-None-Match (conditional create). Pinned so CI runs are
# reproducible.
MOTO_VERSION=5.2.5
moto="$cache/moto-venv/bin/moto_server"
if ! [ -x "$moto" ] || ! "$cache/moto-venv/bin/python" -c "import moto, sys; sys.exit(moto.__version__ != '$MOTO_VERSION')" 2>/dev/null; then
  echo "installing moto[server]==$MOTO_VERSION into $cache/moto-venv (about 1.5 min)" >&2
  rm -rf "$cache/moto-venv"
  python3 -m venv "$cache/moto-venv"
  "$cache/moto-venv/bin/pip" install -q --disable-pip-version-check "moto[server]==$MOTO_VERSION" >&2
fi

# Azurite 3.35.0: the last release that runs on Node 20 (3.37 needs Node 22).
AZURITE_VERSION=3.35.0
azurite="$cache/azurite/node_modules/.bin/azurite-blob"
if ! [ -x "$azurite" ] || ! grep -q "\"version\": \"$AZURITE_VERSION\"" "$cache/azurite/node_modules/azurite/package.json" 2>/dev/null; then
  echo "installing azurite@$AZURITE_VERSION into $cache/azurite (about 1 min)" >&2
  rm -rf "$cache/azurite"
  mkdir -p "$cache/azurite"
  (cd "$cache/azurite" && npm install --silent --no-audit --no-fund --prefix . "azurite@$AZURITE_VERSION" >&2)
fi

echo "export M365BK_TEST_MOTO_SERVER='$moto'"
echo "export M365BK_TEST_AZURITE='$azurite'"
