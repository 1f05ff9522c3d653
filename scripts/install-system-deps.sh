#!/usr/bin/env bash
# Debian packages the tests and benchmarks need; installs only what is missing.
# redis-server: tests that kill Redis start their own. wrk: the HTTP load generator.
# chromium: the browser test of the /demo page (headless). gcc: builds the fan-out's C
# extension (src/surge/realtime/_sendmany.c) at install. prometheus: promtool, which checks
# and unit-tests deploy/prometheus/ (tests/deploy/test_prometheus.py). nginx: runs
# deploy/nginx/surge.conf in front of two Surge processes (tests/deploy/test_nginx.py).
# debootstrap, buildah, podman: `make image` makes a Debian base and builds deploy/Dockerfile
# on it (tests/deploy/test_image.py).
#
# `install-system-deps.sh grpc-bench` installs only the gRPC load client's toolchain
# (bench/grpcload, `make bench-grpc`): Debian's Go, grpc-go and protobuf-go sources
# (GO111MODULE=off builds, no module download), protoc and its Go plugins. Kept out of
# the default list: the tests do not need them and they are large.
set -euo pipefail
packages=(redis-server wrk chromium gcc prometheus nginx debootstrap buildah podman)
if [ "${1:-}" = grpc-bench ]; then
  # golang-github-golang-protobuf-1-5-dev: grpc-go's codec calls github.com/golang/protobuf,
  # and only its 1.5 line (built on google.golang.org/protobuf) marshals what protoc-gen-go
  # (APIv2) writes; golang-goprotobuf-dev is the 1.3 line
  packages=(golang-go golang-google-grpc-dev golang-google-protobuf-dev
    golang-github-golang-protobuf-1-5-dev protobuf-compiler protoc-gen-go protoc-gen-go-grpc)
fi
need=()
for pkg in "${packages[@]}"; do
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
