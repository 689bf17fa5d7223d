#!/usr/bin/env bash
# Installs npm packages if needed and runs one node on the in-process bus (no NATS needed).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ! -d node_modules ]]; then npm install --no-audit --no-fund; fi
exec npx meshcast node "$@"
