#!/usr/bin/env bash
# CI step for the docker compose deployment: runs tests/src/compose/compose.test.ts against a
# Docker engine, and leaves the machine as it found it.
#
# - A Docker engine that already answers (DOCKER_HOST or the default socket) is used as it is.
# - Otherwise, as root, this starts a private dockerd for the test and stops it afterwards
#   (installing Debian's docker.io / docker-compose first when they are missing):
#     dockerd --data-root /var/lib/meshcast-docker --exec-root /run/meshcast-docker
#             -H unix:///run/meshcast-docker/docker.sock --bridge=none
#             --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false
#   It adds no iptables rules, no docker0 and no forwarding: the compose network's bridge is the
#   only host interface it makes, published ports go through docker-proxy on 127.0.0.1, and
#   containers reach nothing but each other. Its data root is kept, so the base image is cached.
# - When no engine can be started (not root, no packages, the kernel refuses), it prints
#   "compose test: SKIPPED: <why>" and exits 0, except under CI=true, where it fails
#   ("compose test: FAILED: …"). When an engine runs and the test fails, it fails; under CI a
#   run that skipped any test fails too.
# - iptables/ip6tables rules (nft and legacy), bridges/veths and ip_forward are compared before
#   and after; any difference fails the step.
#
# Env: MESHCAST_COMPOSE_PRIVATE_DOCKERD=1 always starts the private engine;
#      MESHCAST_DOCKERD_STORAGE_DRIVER (e.g. vfs) where overlay2 cannot work;
#      MESHCAST_COMPOSE_NO_INSTALL=1 never runs apt-get.
set -uo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
started=$(date +%s)

# Outside CI a machine without an engine skips; under CI (CI=true, or any CI value but "" / false / 0) that is a failure.
in_ci() { [[ -n ${CI:-} && ${CI} != false && ${CI} != 0 ]]; }
skip() {
  if in_ci; then
    echo "compose test: FAILED: cannot run under CI=${CI}: $*" >&2
    exit 1
  fi
  echo "compose test: SKIPPED: $*"
  exit 0
}
note() { echo "compose test: $*"; }

[[ -d node_modules/tsx ]] || { echo "compose test: node_modules missing; run 'npm ci' first" >&2; exit 1; }

netstate() {
  local t
  for t in iptables-save ip6tables-save iptables-legacy-save ip6tables-legacy-save; do
    command -v "$t" >/dev/null 2>&1 || continue
    echo "== $t"
    "$t" 2>/dev/null | grep -v '^#' | sed -E 's/\[[0-9]+:[0-9]+\]//g'
  done
  echo "== links"
  ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | sed 's/@.*//' | grep -E '^(br-|veth|docker)' | sort
  echo "== ip_forward $(cat /proc/sys/net/ipv4/ip_forward 2>/dev/null)"
}

private=0
if [[ ${MESHCAST_COMPOSE_PRIVATE_DOCKERD:-0} != 1 ]] && command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  note "using the running Docker engine at ${DOCKER_HOST:-the default socket}"
else
  private=1
fi

if [[ $private == 1 ]]; then
  [[ $(id -u) -eq 0 ]] || skip "no Docker engine is running and starting one needs root"
  need=()
  { command -v dockerd >/dev/null 2>&1 && [[ -x /usr/sbin/docker-proxy ]] || command -v docker-proxy >/dev/null 2>&1; } || need+=(docker.io)
  if ! { command -v docker >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; } && ! command -v docker-compose >/dev/null 2>&1; then
    need+=(docker-compose)
  fi
  command -v iptables >/dev/null 2>&1 || need+=(iptables)
  if [[ ${#need[@]} -gt 0 ]]; then
    [[ ${MESHCAST_COMPOSE_NO_INSTALL:-0} != 1 ]] || skip "missing packages: ${need[*]}"
    command -v apt-get >/dev/null 2>&1 || skip "missing packages (${need[*]}) and no apt-get"
    note "installing ${need[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${need[@]}" | sort -u) >/dev/null; }; then
      skip "could not install ${need[*]}"
    fi
  fi
fi

# One compose test at a time on a machine: they publish the same loopback ports.
lockdir=/run/lock
[[ -d $lockdir && -w $lockdir ]] || lockdir=${TMPDIR:-/tmp}
exec 9>"$lockdir/meshcast-compose-test.lock"
flock -w 900 9 || { echo "compose test: another compose test holds the lock" >&2; exit 1; }

before=$(netstate)
dd_root=${MESHCAST_DOCKERD_ROOT:-/var/lib/meshcast-docker}
dd_exec=/run/meshcast-docker
dd_pid=
created_dirs=()

stop_dockerd() {
  [[ -n $dd_pid ]] || return 0
  if kill -0 "$dd_pid" 2>/dev/null; then
    kill -TERM "$dd_pid"
    for _ in $(seq 1 60); do kill -0 "$dd_pid" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$dd_pid" 2>/dev/null; then
      note "dockerd $dd_pid did not stop in 30 s; killing it"
      kill -KILL "$dd_pid" 2>/dev/null
    fi
  fi
  # dockerd's own containerd (and any shim) stop with it; make sure, by pid file.
  local cpid
  cpid=$(cat "$dd_exec/containerd/containerd.pid" 2>/dev/null || true)
  if [[ -n $cpid ]] && kill -0 "$cpid" 2>/dev/null; then kill -TERM "$cpid" 2>/dev/null; sleep 1; kill -KILL "$cpid" 2>/dev/null; fi
  # Mounts the engine left (only after a hard kill), innermost first.
  grep -E " ($dd_root|$dd_exec)" /proc/mounts | awk '{print $2}' | sort -r | while read -r m; do umount -l "$m" 2>/dev/null; done
  rm -rf "$dd_exec"
  local d
  for d in "${created_dirs[@]}"; do find "$d" -depth -type d -empty -delete 2>/dev/null; done
  dd_pid=
}

if [[ $private == 1 ]]; then
  for d in /run/docker /run/containerd; do [[ -e $d ]] || created_dirs+=("$d"); done
  if [[ -S $dd_exec/docker.sock ]] && DOCKER_HOST=unix://$dd_exec/docker.sock docker info >/dev/null 2>&1; then
    echo "compose test: a private dockerd from an earlier run still answers at $dd_exec/docker.sock; stop it first (pid $(cat "$dd_exec/dockerd.pid" 2>/dev/null))" >&2
    exit 1
  fi
  rm -rf "$dd_exec"
  mkdir -p "$dd_root" "$dd_exec"
  log=$(mktemp /tmp/meshcast-dockerd.XXXXXX.log)
  args=(--data-root "$dd_root" --exec-root "$dd_exec" -H "unix://$dd_exec/docker.sock" --pidfile "$dd_exec/dockerd.pid"
    --containerd-namespace meshcast-moby --containerd-plugins-namespace meshcast-plugins
    --bridge=none --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false --userland-proxy=true
    --log-level=warn)
  [[ -n ${MESHCAST_DOCKERD_STORAGE_DRIVER:-} ]] && args+=(--storage-driver "$MESHCAST_DOCKERD_STORAGE_DRIVER")
  note "starting a private dockerd: dockerd ${args[*]}"
  dockerd "${args[@]}" >"$log" 2>&1 &
  dd_pid=$!
  trap 'stop_dockerd' EXIT
  trap 'exit 130' INT TERM
  export DOCKER_HOST=unix://$dd_exec/docker.sock
  ready=0
  for _ in $(seq 1 60); do
    if docker info >/dev/null 2>&1; then ready=1; break; fi
    kill -0 "$dd_pid" 2>/dev/null || break
    sleep 0.5
  done
  if [[ $ready != 1 ]]; then
    echo "--- dockerd log (last 30 lines)"
    tail -30 "$log"
    stop_dockerd
    skip "dockerd could not start on this machine (log: $log)"
  fi
  note "dockerd $(docker version --format '{{.Server.Version}}' 2>/dev/null) up in $(($(date +%s) - started)) s, storage $(docker info --format '{{.Driver}}' 2>/dev/null)"
fi

# The test itself: build, up, publish, play, kill the owner, republish, down, verify.
report=$(mktemp /tmp/meshcast-compose-test.XXXXXX.log)
(cd tests && timeout --kill-after=30 900 node --import tsx --test --test-concurrency=1 --test-reporter=spec src/compose/compose.test.ts) 2>&1 | tee "$report"
rc=${PIPESTATUS[0]}
# Under CI a skipped test fails the step as a skipped step does: the run must say "skipped 0".
if in_ci && ! grep -qE '^ℹ skipped 0$' "$report"; then
  echo "compose test: FAILED: under CI=${CI} every test must run, and the run reports skipped tests (or no summary)" >&2
  rc=1
fi
rm -f "$report"

# Safety net for a test that was killed before its own teardown: take the project down.
compose=(docker compose)
docker compose version >/dev/null 2>&1 || compose=(docker-compose)
if [[ -n $("${compose[@]}" -f compose/docker-compose.yml -p "${MESHCAST_COMPOSE_PROJECT:-meshcast-ct}" ps -q 2>/dev/null) ]]; then
  note "containers of the project are still there; taking them down"
  "${compose[@]}" -f compose/docker-compose.yml -p "${MESHCAST_COMPOSE_PROJECT:-meshcast-ct}" down -v --remove-orphans --timeout 10 >/dev/null 2>&1
  rc=1
fi

if [[ $private == 1 ]]; then
  stop_dockerd
  trap - EXIT
  # Bridges or veths our engine made and could not remove (it was killed): delete them.
  for l in $(comm -13 <(echo "$before" | grep -E '^(br-|veth)' | sort) <(netstate | grep -E '^(br-|veth)' | sort)); do
    note "removing leftover interface $l"
    ip link delete "$l" 2>/dev/null
    rc=1
  done
fi
after=$(netstate)
if [[ "$before" != "$after" ]]; then
  echo "compose test: the host's network state changed (iptables rules, bridges or ip_forward):" >&2
  diff <(echo "$before") <(echo "$after") >&2
  rc=1
else
  note "host iptables rules, bridges and ip_forward are as before"
fi
if [[ $private == 1 ]]; then
  if [[ $rc == 0 ]]; then rm -f "$log"; else note "dockerd's log: $log"; fi
fi
note "finished in $(($(date +%s) - started)) s with exit code $rc"
exit $rc
