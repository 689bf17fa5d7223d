#!/usr/bin/env bash
# Runs one node on the in-process bus (no NATS needed) from a fresh checkout: gets a supported
# Node.js if the system's is too old and ffmpeg if it is missing (scripts/setup-system.sh --node;
# the node runs ffmpeg for WebRTC audio), installs npm packages, builds if the build is missing
# or older than a source, then runs the built bin. Arguments go to `meshcast node`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-system.sh --node
hash -r # setup may have put a newer node in /usr/local/bin
if [[ ! -d node_modules || package-lock.json -nt node_modules/.package-lock.json ]]; then
  npm install --no-audit --no-fund
fi
built=services/node/dist/meshcast.mjs
if [[ ! -f $built || -n $(find proto/src mesh/src services/node/src scripts/build.mjs package-lock.json -newer "$built" -print -quit) ]]; then
  npm run build --silent >&2
fi
exec node services/node/bin/meshcast.mjs node "$@"
