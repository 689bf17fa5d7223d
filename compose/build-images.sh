#!/usr/bin/env bash
# Builds the images compose/docker-compose.yml runs, without any registry:
#
#   meshcast-base:local  the host's node (>= 22) + nats-server + their libraries
#                        (compose/base-image.sh); skipped when MESHCAST_BASE_IMAGE and
#                        NATS_IMAGE both name other images (e.g. node:24-slim and nats:2.10),
#                        which are pulled if they are not there yet
#   meshcast-node:local  compose/Dockerfile on top of MESHCAST_BASE_IMAGE: the production build
#                        (npm run build, run here first) on the production dependencies
#
# Run from anywhere, after `npm install` in the repository. Honours DOCKER_HOST,
# MESHCAST_BASE_IMAGE, NATS_IMAGE and MESHCAST_IMAGE (the variables the compose file reads).
set -euo pipefail
cd "$(dirname "$0")/.."
base=${MESHCAST_BASE_IMAGE:-meshcast-base:local}
nats=${NATS_IMAGE:-meshcast-base:local}
image=${MESHCAST_IMAGE:-meshcast-node:local}

if [[ ! -f node_modules/.package-lock.json ]]; then
  echo "build-images: node_modules is not installed here; run 'npm install' in $(pwd) first" >&2
  exit 1
fi
# The image carries dist as this checkout builds it (turbo replays an unchanged build from its cache).
npm run build --silent >&2

local_base=
for img in "$base" "$nats"; do
  if [[ $img == meshcast-base:* ]]; then
    [[ -n $local_base ]] || { bash compose/base-image.sh "$img"; local_base=$img; }
    [[ $img == "$local_base" ]] || docker tag "$local_base" "$img"
  elif ! docker image inspect "$img" >/dev/null 2>&1; then
    docker pull "$img"
  fi
done

start=$(date +%s)
# With BuildKit (buildx installed) or the classic builder, whichever this docker CLI has.
docker build -f compose/Dockerfile --build-arg "BASE_IMAGE=$base" -t "$image" . >&2
echo "build-images: $image built on $base in $(($(date +%s) - start)) s"
