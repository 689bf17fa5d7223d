#!/usr/bin/env bash
# Builds the images compose/docker-compose.yml runs, without any registry:
#
#   meshcast-base:local  the host's node + nats-server + their libraries (compose/base-image.sh);
#                        skipped when MESHCAST_BASE_IMAGE names another image
#   meshcast-node:local  compose/Dockerfile on top of it, from this checkout's installed tree
#
# Run from anywhere, after `npm ci` in the repository. Honours DOCKER_HOST,
# MESHCAST_BASE_IMAGE and MESHCAST_IMAGE (the same variables the compose file reads).
set -euo pipefail
cd "$(dirname "$0")/.."
base=${MESHCAST_BASE_IMAGE:-meshcast-base:local}
image=${MESHCAST_IMAGE:-meshcast-node:local}

if [[ ! -d node_modules/tsx ]]; then
  echo "build-images: node_modules is not installed here; run 'npm ci' in $(pwd) first" >&2
  exit 1
fi
if [[ $base == meshcast-base:* ]]; then
  bash compose/base-image.sh "$base"
elif ! docker image inspect "$base" >/dev/null 2>&1; then
  docker pull "$base"
fi

start=$(date +%s)
# With BuildKit (buildx installed) or the classic builder, whichever this docker CLI has.
docker build -f compose/Dockerfile --build-arg "BASE_IMAGE=$base" -t "$image" . >&2
echo "build-images: $image built on $base in $(($(date +%s) - start)) s"
