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
# `npm ci` rejects this lockfile for optional platform builds of msgpackr-extract that npm
# leaves out of it; `npm install` with the lockfile present installs exactly the locked versions.
npm install --no-audit --no-fund --loglevel=error
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
