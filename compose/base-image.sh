#!/usr/bin/env bash
# Builds the base image meshcast's containers run on, from this host's own binaries, for
# machines that cannot pull images: a minimal root filesystem holding the host's `node`,
# `nats-server`, `ffmpeg` (the node runs it for WebRTC audio: AAC→Opus, Opus→AAC) and `dash`
# (as /bin/sh), exactly the shared libraries `ldd` says they need,
# /etc/passwd with an unprivileged `meshcast` user (uid/gid 10001), and nothing else.
# It is imported with `docker import` and tagged
#
#   meshcast-base:<12 hex of the rootfs hash>   and   meshcast-base:local (or $1)
#
# The rootfs tarball is reproducible (sorted, fixed mtimes, numeric owners), so re-running
# this script on the same host is a no-op once the image exists.
#
# The node is the one first on PATH, which must be Node.js >= 22 (scripts/setup-system.sh
# installs Node 24 where the system's is older). nats-server is also linked as /nats-server, the
# path the official nats image uses, so the compose file runs either image the same way.
#
# Where a registry is reachable you do not need this: MESHCAST_BASE_IMAGE=node:24-slim and
# NATS_IMAGE=nats:2.10 work too (see compose/README.md).
#
# Usage: compose/base-image.sh [TAG]      (DOCKER_HOST is honoured; needs a running engine)
set -euo pipefail

tag=${1:-meshcast-base:local}
repo=${tag%%:*}
node_bin=$(command -v node || true)
nats_bin=$(command -v nats-server || true)
sh_bin=$(command -v dash || true)
ffmpeg_bin=$(command -v ffmpeg || true)
for b in node_bin nats_bin sh_bin ffmpeg_bin; do
  if [[ -z ${!b} ]]; then
    echo "base-image: ${b%_bin} not found on this host (apt-get install nodejs nats-server dash ffmpeg)" >&2
    exit 1
  fi
done
node_major=$("$node_bin" -p 'process.versions.node.split(".")[0]')
if ((node_major < 22)); then
  echo "base-image: $node_bin is Node.js $("$node_bin" -v); the image needs >= 22 (run: sudo bash scripts/setup-system.sh --node-only)" >&2
  exit 1
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/meshcast-base.XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
mkdir -p "$root"/{etc,usr/bin,usr/lib/x86_64-linux-gnu,usr/lib64,tmp,data,opt,run,proc,sys,dev}
# merged-/usr layout, as on Debian 12
ln -s usr/bin "$root/bin"
ln -s usr/bin "$root/sbin"
ln -s usr/lib "$root/lib"
ln -s usr/lib64 "$root/lib64"
chmod 1777 "$root/tmp"

cp -L "$node_bin" "$root/usr/bin/node"
cp -L "$nats_bin" "$root/usr/bin/nats-server"
cp -L "$sh_bin" "$root/usr/bin/dash"
cp -L "$ffmpeg_bin" "$root/usr/bin/ffmpeg"
ln -s dash "$root/usr/bin/sh"
ln -s usr/bin/nats-server "$root/nats-server"

# The dynamic loader and every library the binaries link, at the paths the loader searches.
for bin in "$node_bin" "$nats_bin" "$sh_bin" "$ffmpeg_bin"; do
  ldd "$(readlink -f "$bin")" | awk '/=> \//{print $3} /^\t\/.*ld-linux/{print $1}'
done | sort -u | while read -r lib; do
  name=$(basename "$lib")
  case $name in
    ld-linux*) cp -L "$lib" "$root/usr/lib64/$name" ;;
    *) cp -L "$lib" "$root/usr/lib/x86_64-linux-gnu/$name" ;;
  esac
done
# glibc >= 2.34 has the files and dns NSS modules built in; say which to use.
printf 'passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n' >"$root/etc/nsswitch.conf"
printf 'root:x:0:0:root:/root:/bin/sh\nmeshcast:x:10001:10001:meshcast:/opt/meshcast:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\nmeshcast:x:10001:\nnogroup:x:65534:\n' >"$root/etc/group"
# docker bind-mounts its own hosts/resolv.conf/hostname over these at run time
: >"$root/etc/hosts"
: >"$root/etc/resolv.conf"
: >"$root/etc/hostname"
# IANA zone data keeps Intl/Date happy for operators who set TZ; small and optional.
if [[ -f /usr/share/zoneinfo/UTC ]]; then
  mkdir -p "$root/usr/share/zoneinfo"
  cp -L /usr/share/zoneinfo/UTC "$root/usr/share/zoneinfo/UTC"
  ln -s /usr/share/zoneinfo/UTC "$root/etc/localtime"
fi
mkdir -p "$root/data/jetstream"
chmod 0755 "$root"/{etc,usr,usr/bin,usr/lib,usr/lib64,opt,data}

# Reproducible tarball: same inputs, same bytes, same tag.
tar --sort=name --mtime=@0 --numeric-owner --owner=0 --group=0 --exclude=./data -C "$root" -cf "$work/rootfs.tar" .
# /data (JetStream store / volumes) belongs to the unprivileged user.
tar --sort=name --mtime=@0 --numeric-owner --owner=10001 --group=10001 -C "$root" -rf "$work/rootfs.tar" ./data
hash=$(sha256sum "$work/rootfs.tar" | cut -c1-12)

if docker image inspect "$repo:$hash" >/dev/null 2>&1; then
  echo "base-image: $repo:$hash already present"
else
  echo "base-image: importing $repo:$hash ($(du -h "$work/rootfs.tar" | cut -f1) rootfs; node $("$node_bin" -v), $("$nats_bin" --version))"
  docker import \
    --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 TZ=UTC' \
    --change 'WORKDIR /' \
    --change 'USER 10001:10001' \
    --change 'CMD ["/bin/sh"]' \
    --message "meshcast base: host node $("$node_bin" -v), $("$nats_bin" --version)" \
    "$work/rootfs.tar" "$repo:$hash" >/dev/null
fi
docker tag "$repo:$hash" "$tag"
echo "base-image: $tag = $repo:$hash"
