#!/usr/bin/env bash
# The chaos suite (tests/src/chaos, docs/design.md): real nats-server and node processes on loopback,
# faults injected with signals, figures measured. Writes tests/chaos-results.md and .json.
#   npm run chaos                                   # every scenario (~7-8 min on 2 cores)
#   npm run chaos -- tests/src/chaos/drain.test.ts  # some scenarios; their rows replace the old ones
# CHAOS_LOG_DIR=dir keeps every node's log; CHAOS_CHURN_MS shortens the churn scenario.
set -uo pipefail
cd "$(dirname "$0")/.."
CHAOS_RESULTS_DIR="$(mktemp -d "${TMPDIR:-/tmp}/meshcast-chaos-XXXXXX")"
export CHAOS_RESULTS_DIR
trap 'rm -rf "$CHAOS_RESULTS_DIR"' EXIT
if [[ $# -gt 0 ]]; then files=("$@"); else files=(tests/src/chaos/*.test.ts); fi
start=$(date +%s)
node --import tsx --test --test-concurrency=1 --test-timeout=300000 "${files[@]}"
status=$?
node --import tsx tests/src/chaos/report.ts --duration $(( $(date +%s) - start )) || status=1
exit $status
