# Two entry points (README): `make run` and `make test`. Everything else is a helper.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test install tools image lint typecheck proto bench bench-orders bench-sale bench-broadcast bench-overload bench-cluster bench-grpc chaos clean

$(STAMP): pyproject.toml setup.py src/surge/realtime/_sendmany.c constraints.txt scripts/install-system-deps.sh
	bash scripts/install-system-deps.sh
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## Tools kept out of the project venv (their dependencies clash with its pins), each in a
## venv of its own under .venv/tools: checkov scans deploy/k8s (tests/deploy/test_k8s.py).
CHECKOV_VERSION := 3.3.30
CHECKOV_STAMP := $(VENV)/tools/checkov/.installed-$(CHECKOV_VERSION)

$(CHECKOV_STAMP):
	rm -rf $(VENV)/tools/checkov
	$(PY) -m venv $(VENV)/tools/checkov
	$(VENV)/tools/checkov/bin/pip install -q --upgrade pip
	$(VENV)/tools/checkov/bin/pip install -q checkov==$(CHECKOV_VERSION)
	touch $(CHECKOV_STAMP)

tools: $(CHECKOV_STAMP)

## Serve on the embedded default (SQLite file + in-process cache) with demo data.
run: $(STAMP)
	$(BIN)/surge db seed --orders 1000 --users 100 --if-empty
	@echo "try: curl -H \"Authorization: Bearer $$($(BIN)/surge token user1)\" http://127.0.0.1:8080/orders/1"
	$(BIN)/surge serve

## The whole suite: unit, contract (sqlite+memory, MariaDB+Redis, PostgreSQL+Redis), system.
test: $(STAMP) tools
	bash scripts/ensure-services.sh
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/pytest -n 2 --dist loadgroup

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

## The gRPC contract's Python code (src/surge/v1, checked in; tests/unit/test_proto.py fails
## while it is stale). grpc_tools adds the well-known protos (google/protobuf/*) itself.
proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -Iproto --python_out=src --pyi_out=src \
		--grpc_python_out=src proto/surge/v1/surge.proto

## Benchmarks (write BENCHMARKS.md); minutes, not part of `test`.
bench: bench-orders bench-sale bench-broadcast bench-overload bench-cluster bench-grpc

bench-orders: $(STAMP)
	bash scripts/ensure-services.sh
	$(BIN)/python -m bench.orders

## WebSocket broadcast against the Go chat baseline: 1,000 to 36,000 receivers.
bench-broadcast: $(STAMP)
	bash scripts/ensure-services.sh
	$(BIN)/python -m bench.broadcast

## Overload: the order query offered 3x its capacity, with and without load shedding.
bench-overload: $(STAMP)
	bash scripts/ensure-services.sh
	$(BIN)/python -m bench.overload

## The flash-sale storm: 100,000 purchase attempts for 1,000 items on MariaDB + Redis.
bench-sale: $(STAMP)
	bash scripts/ensure-services.sh
	$(BIN)/python -m bench.sale

## Three nodes behind nginx on a Redis Cluster and a MariaDB primary + replica: a node
## SIGKILLed mid-sale, a room across the nodes (bench/cluster.py).
bench-cluster: $(STAMP)
	bash scripts/ensure-services.sh
	$(BIN)/python -m bench.cluster

## GetOrder cache hits over gRPC against HTTP and the Go baseline (issue 18); installs
## the gRPC client's Go toolchain on demand (scripts/install-system-deps.sh grpc-bench).
bench-grpc: $(STAMP)
	bash scripts/ensure-services.sh
	$(BIN)/python -m bench.grpc_orders

## The container image (deploy/Dockerfile) as localhost/surge:latest, on a Debian base made
## here when no registry is reachable (deploy/build-image.sh); prints its size in bytes.
image: $(STAMP)
	bash deploy/build-image.sh

## Jepsen-style chaos (issue 13): flash sales under worker kills, Redis restarts and
## freezes, killed database connections; on MariaDB, then PostgreSQL, a fresh seed each
## (about 3 minutes). A failure prints the seed and the command that reproduces it.
chaos: $(STAMP)
	bash scripts/ensure-services.sh
	$(BIN)/python -m tests.chaos

clean:
	rm -rf $(VENV) surge-data .pytest_cache .mypy_cache .ruff_cache
