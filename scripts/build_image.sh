#!/usr/bin/env bash
# Build the platform image from ./Dockerfile with podman on a machine with no Docker engine and no image
# registry (Debian's archive and PyPI reachable), then smoke-test it without `podman run`.
#
#   sudo scripts/build_image.sh                 base image + build + smoke test + metadata test
#   IMAGE=cvops:dev scripts/build_image.sh      another tag
#   SKIP_BUILD=1 scripts/build_image.sh         smoke-test an image built before
#
# 1. A base image from Debian packages: `debootstrap --variant=minbase bookworm` with python3 (3.11),
#    python3-venv, ca-certificates and tini, imported with `podman import` as $BASE (kept between runs).
# 2. `podman build --isolation chroot --format docker` (docker format: OCI images drop HEALTHCHECK),
#    BASE_IMAGE=$BASE, the host's CA bundle mounted read-only for pip and apt.
# 3. Smoke test: `podman image mount`, then in a private mount+pid namespace, chroot into the image as
#    the image's user: `cvops --version`, and a `cvops serve` on a free port that must answer /ready,
#    then a SIGTERM that must end it within 30 s.
# 4. tests/unit/test_image.py (the image's metadata) with CVOPS_SLOW=1.
# Closing note: image size and build time.
#
# Where a registry is reachable the same Dockerfile builds with `docker build -t cvops .`.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE="${IMAGE:-cvops:latest}"
BASE="${BASE:-localhost/cvops-base:bookworm}"
WORK="${WORK:-/var/tmp/cvops-image}"
CA="${CA:-/etc/ssl/certs/ca-certificates.crt}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
NICE=(nice -n 19)

[ "$(id -u)" = 0 ] || { echo "build_image.sh: run as root (debootstrap, podman image mount, chroot)" >&2; exit 2; }
if ! command -v podman >/dev/null || ! command -v debootstrap >/dev/null; then
  apt-get install -y podman debootstrap
fi
mkdir -p "$WORK"

# 1. the base image --------------------------------------------------------------------------------
if ! podman image exists "$BASE"; then
  t0=$(date +%s)
  rm -rf "$WORK/rootfs"
  "${NICE[@]}" debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,tini \
    bookworm "$WORK/rootfs" "$MIRROR"
  chroot "$WORK/rootfs" apt-get clean
  rm -rf "$WORK/rootfs/var/lib/apt/lists/"*
  tar -C "$WORK/rootfs" --numeric-owner -c . | podman import \
    --change 'CMD ["/bin/bash"]' --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    - "$BASE"
  rm -rf "$WORK/rootfs"
  echo "base image $BASE made in $(($(date +%s) - t0)) s"
fi

# 2. the build -------------------------------------------------------------------------------------
build_s=0
if [ -z "${SKIP_BUILD:-}" ]; then
  t0=$(date +%s)
  "${NICE[@]}" podman build --isolation chroot --format docker \
    --build-arg BASE_IMAGE="$BASE" \
    --build-arg PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    -v "$CA:/etc/ssl/certs/ca-certificates.crt:ro" \
    -t "$IMAGE" .
  build_s=$(($(date +%s) - t0))
  echo "built $IMAGE in $build_s s"
fi

# 3. the smoke test --------------------------------------------------------------------------------
mnt="$(podman image mount "$IMAGE")"
trap 'podman image unmount "$IMAGE" >/dev/null || true' EXIT
user="$(podman image inspect --format '{{.Config.User}}' "$IMAGE")"
uid="$(awk -F: -v u="$user" '$1 == u {print $3 ":" $4}' "$mnt/etc/passwd")"
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
echo "smoke test: chroot $mnt as $user ($uid), port $port"
# a private mount and pid namespace: /proc, /dev, /sys and a tmpfs /tmp (Ray's session dir, the data dir)
# are mounted over the read-only image and vanish with the namespace
unshare --mount --pid --fork --propagation private env MNT="$mnt" UIDGID="$uid" PORT="$port" bash -euo pipefail -c '
  mount -t proc proc "$MNT/proc"
  mount --rbind /dev "$MNT/dev"
  mount -t tmpfs -o size=2g,mode=1777 tmpfs "$MNT/dev/shm"
  mount -o bind,ro /sys "$MNT/sys"
  mount -t tmpfs -o mode=1777 tmpfs "$MNT/tmp"
  for f in /etc/hosts /etc/resolv.conf; do [ -e "$MNT$f" ] && mount -o bind,ro "$f" "$MNT$f"; done
  run() { chroot --userspec="$UIDGID" "$MNT" /usr/bin/env -i HOME=/tmp PATH=/opt/venv/bin:/usr/bin:/bin \
          PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0 CVOPS_DATA_DIR=/tmp/data "$@"; }
  run cvops --version
  run /usr/bin/tini -s -- cvops serve --host 127.0.0.1 --port "$PORT" >/tmp/cvops-smoke.log 2>&1 &
  pid=$!
  ok=""
  for _ in $(seq 1 240); do
    if python3 -c "import sys, urllib.request; urllib.request.urlopen(\"http://127.0.0.1:$PORT/ready\", timeout=2)" 2>/dev/null; then
      ok=1; break
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 1
  done
  if [ -z "$ok" ]; then echo "cvops serve never answered /ready:"; tail -40 /tmp/cvops-smoke.log; exit 1; fi
  echo "cvops serve answered /ready"
  t0=$(date +%s)
  kill -TERM "$pid"
  ( sleep 35; kill -KILL "$pid" 2>/dev/null ) & guard=$!
  rc=0; wait "$pid" || rc=$?
  kill "$guard" 2>/dev/null || true
  echo "SIGTERM: cvops serve exited with status $rc in $(($(date +%s) - t0)) s; its last lines:"
  tail -5 /tmp/cvops-smoke.log | sed "s/^/  | /"
  if [ "$rc" -ne 0 ]; then echo "cvops serve did not stop cleanly on SIGTERM"; exit 1; fi
  # the processes of this pid namespace (its /proc is the one mounted in the image)
  left=$(for d in "$MNT"/proc/[0-9]*; do cat "$d/comm" 2>/dev/null || true; done | grep -c -E "raylet|gcs_server" || true)
  if [ "$left" -ne 0 ]; then echo "$left Ray processes left after the stop"; exit 1; fi
'
podman image unmount "$IMAGE" >/dev/null
trap - EXIT

# 4. the metadata test -----------------------------------------------------------------------------
CVOPS_SLOW=1 CVOPS_IMAGE="$IMAGE" python3 -m pytest -q -p no:cacheprovider tests/unit/test_image.py

size="$(podman image inspect --format '{{.Size}}' "$IMAGE")"
echo "image $IMAGE: $((size / 1000 / 1000)) MB; build time ${build_s} s (0: not rebuilt; the layers podman had cached were reused)"
