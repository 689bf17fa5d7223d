#!/usr/bin/env bash
# Installs the system packages meshcast's tests and benchmarks use, on Debian/Ubuntu.
# As root it installs them with apt; otherwise it prints exactly what to run.
set -euo pipefail
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
if ! command -v node >/dev/null 2>&1; then
  need+=(nodejs npm)
fi
if [[ ${#need[@]} -eq 0 ]]; then
  exit 0
fi
if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
  echo "meshcast: installing ${need[*]} with apt-get" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
else
  echo "meshcast: missing system packages: ${need[*]}" >&2
  echo "install them with:  sudo apt-get install -y ${need[*]}" >&2
  exit 1
fi
