#!/usr/bin/env bash
# Debian packages the tests and benchmarks need; installs only what is missing.
# redis-server: tests that kill Redis start their own. wrk: the HTTP load generator.
# chromium: the browser test of the /demo page (headless). gcc: builds the fan-out's C
# extension (src/surge/realtime/_sendmany.c) at install. prometheus: promtool, which checks
# and unit-tests deploy/prometheus/ (tests/deploy/test_prometheus.py). nginx: runs
# deploy/nginx/surge.conf in front of two Surge processes (tests/deploy/test_nginx.py).
# debootstrap, buildah, podman: `make image` makes a Debian base and builds deploy/Dockerfile
# on it (tests/deploy/test_image.py).
set -euo pipefail
need=()
for pkg in redis-server wrk chromium gcc prometheus nginx debootstrap buildah podman; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing Debian packages: ${need[*]} (run as root or install them)" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
