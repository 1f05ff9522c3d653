#!/usr/bin/env bash
# `make image`: builds deploy/Dockerfile into localhost/surge:latest with buildah.
#
# Where a registry is reachable, BASE may be left to the Dockerfile's default. Where it is
# not (this project's machines), the base is a Debian bookworm made here: debootstrap,
# then `podman import` as localhost/debian:bookworm (cached in $SURGE_IMAGE_CACHE).
# The host's CA bundle goes in as a build secret: TLS to the package index is
# intercepted on these machines. Prints the image's size last.
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=${TAG:-localhost/surge:latest}
CACHE=${SURGE_IMAGE_CACHE:-/var/tmp/surge-image}
BASE=${BASE:-localhost/debian:bookworm}
CA=${PIP_CA:-/etc/ssl/certs/ca-certificates.crt}

if [ "$BASE" = localhost/debian:bookworm ] && ! podman image exists "$BASE"; then
  mkdir -p "$CACHE"
  if [ ! -f "$CACHE/debian-bookworm.tar" ]; then
    rm -rf "$CACHE/rootfs"
    debootstrap --variant=minbase bookworm "$CACHE/rootfs" http://deb.debian.org/debian >"$CACHE/debootstrap.log"
    tar -C "$CACHE/rootfs" -cf "$CACHE/debian-bookworm.tar" .
    rm -rf "$CACHE/rootfs"
  fi
  podman import "$CACHE/debian-bookworm.tar" "$BASE" >/dev/null
fi

secret=()
if [ -s "$CA" ]; then secret=(--secret "id=pip-ca,src=$CA"); fi
buildah bud --isolation chroot --layers -q --format docker -f deploy/Dockerfile \
  --build-arg "BASE=$BASE" "${secret[@]}" -t "$TAG" . >/dev/null
podman image inspect --format '{{.Size}}' "$TAG"
