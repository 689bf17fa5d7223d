#!/usr/bin/env bash
# The whole test suite from a fresh checkout: a supported Node.js and the system packages,
# npm packages, type check, lint, the production build, tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-system.sh
hash -r # setup may have put a newer node in /usr/local/bin
echo "== node $(node --version) ($(command -v node)), npm $(npm --version)"
# npm install rather than npm ci: npm 11 rejects this lock in ci mode because turbo's
# other-platform binaries (darwin, windows) are never written to it; install keeps to the lock.
if [[ ! -d node_modules || package-lock.json -nt node_modules/.package-lock.json ]]; then
  npm install --no-audit --no-fund
fi
echo "== type check" && npx tsc -p tsconfig.json
echo "== lint" && npx eslint .
echo "== build" && npm run build
echo "== tests" && npx turbo run test --concurrency=1 --continue --output-logs=full
