#!/usr/bin/env bash
# Installs the pinned client libraries: npm packages from package-lock.json, redis-py into
# a virtualenv from requirements.txt. Installs Node.js and npm from Debian if missing.
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
fi
if ! command -v bc >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bc >/dev/null
fi
# Installed packages live under target/compat (build output, like the rest of target/), with
# node_modules linked here so the programs resolve them; the test tree holds only our files.
deps=../../target/compat
mkdir -p "$deps"
cp package.json package-lock.json "$deps/"
# `npm ci` rejects this lockfile for optional platform builds of msgpackr-extract that npm
# leaves out of it; `npm install` with the lockfile present installs exactly the locked versions.
(cd "$deps" && npm install --no-audit --no-fund --loglevel=error)
ln -sfn "$deps/node_modules" node_modules
if [ ! -x "$deps/venv/bin/python" ]; then
  python3 -m venv "$deps/venv"
fi
"$deps/venv/bin/pip" install --quiet --disable-pip-version-check -r requirements.txt
