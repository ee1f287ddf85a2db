# Pulse: `make help` lists the targets. `make run` and `make test` install what is missing.
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV := .venv
BIN := $(VENV)/bin
PROTO_DIR := protos/analytics/v1
STACK_ENV = eval "$$(bash scripts/stack.sh env)"

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-z0-9-]+:.*?## ' $(MAKEFILE_LIST) | awk -F':.*?## ' '{printf "  %-14s %s\n", $$1, $$2}'

.PHONY: deps
deps: ## create .venv with the pinned Python dependencies (idempotent)
	@bash scripts/bootstrap.sh

.PHONY: install
install: deps k8s-tools ## install everything: Python deps, kustomize, Kafka, PostgreSQL + TimescaleDB
	@bash scripts/stack.sh install

.PHONY: up
up: ## start the local stack (Kafka, PostgreSQL + TimescaleDB); reuses running services
	@bash scripts/stack.sh up

.PHONY: down
down: ## stop the local stack started from this checkout
	@bash scripts/stack.sh down

.PHONY: status
status: ## report the local stack
	@bash scripts/stack.sh status

.PHONY: psql
psql: ## open psql on the local pulse database
	@bash scripts/stack.sh psql

.PHONY: migrate
migrate: deps up ## create the TimescaleDB schema and the Kafka topics (idempotent)
	@$(STACK_ENV) && $(BIN)/pulse migrate

.PHONY: run
run: install ## run the whole pipeline locally with a demo load (Ctrl-C stops it)
	@bash scripts/run-demo.sh

.PHONY: image
image: deps ## build the container image with podman (installs podman and makes the base image when missing)
	@bash scripts/image.sh build

.PHONY: protos
protos: deps ## regenerate the Python code and type stubs from protos/
	@PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m grpc_tools.protoc -I . \
		--python_out=. --grpc_python_out=. --mypy_out=. --mypy_grpc_out=. \
		$(PROTO_DIR)/analytics.proto

.PHONY: check-protos
check-protos: protos ## fail when the checked-in generated code is stale
	@git diff --exit-code --stat -- $(PROTO_DIR) || \
		{ echo "generated code in $(PROTO_DIR) is stale: run 'make protos' and commit"; exit 1; }
	@untracked=$$(git ls-files --others --exclude-standard -- $(PROTO_DIR)); \
		[ -z "$$untracked" ] || { echo "untracked generated files: $$untracked"; exit 1; }

.PHONY: lint
lint: deps ## ruff check and format check (changes nothing)
	@$(BIN)/ruff check .
	@$(BIN)/ruff format --check .

.PHONY: format
format: deps ## apply ruff fixes and formatting
	@$(BIN)/ruff check --fix .
	@$(BIN)/ruff format .

.PHONY: typecheck
typecheck: deps ## mypy --strict on the packages
	@$(BIN)/mypy

.PHONY: unit
unit: deps ## unit tests only (no services)
	@$(BIN)/pytest tests/unit

.PHONY: test
test: install up check-protos lint typecheck ## install, start the stack, run every check and the whole test suite
	@$(STACK_ENV) && $(BIN)/pytest

.PHONY: k8s-tools
k8s-tools: ## build the pinned kustomize into .tools/bin (once; cached after)
	@bash scripts/k8s-tools.sh

.PHONY: k8s
k8s: deps k8s-tools ## render every k8s/ overlay, validate it against the schemas, check its wiring
	@$(BIN)/pytest tests/unit/test_k8s.py

.PHONY: soak
soak: install ## outage soak: TimescaleDB, then Kafka, down $${SOAK_OUTAGE_SECONDS:-60} s under load (its own stack)
	@$(BIN)/python -m benchmarks.soak_outages --service postgres --outage-seconds $${SOAK_OUTAGE_SECONDS:-60}
	@$(BIN)/python -m benchmarks.soak_outages --service kafka --outage-seconds $${SOAK_OUTAGE_SECONDS:-60}

.PHONY: soak-overload
soak-overload: install up ## ten times the edge's capacity for $${SOAK_SECONDS:-300} s: its memory per 10 s, then every acknowledged event in Kafka once
	@$(STACK_ENV) && $(BIN)/python -m benchmarks.overload --seconds $${SOAK_SECONDS:-300}

.PHONY: fuzz
fuzz: install up ## fuzz the edge: a million mutated messages on every RPC and HTTP route (FUZZ_MESSAGES, FUZZ_SEED=1), then check it still serves and lost no valid event
	@$(STACK_ENV) && $(BIN)/python -m benchmarks.fuzz_edge --messages $${FUZZ_MESSAGES:-1000000} --seed $${FUZZ_SEED:-1}

.PHONY: lock
lock: ## re-pin requirements.lock from pyproject.toml in a scratch venv
	@bash scripts/lock.sh

.PHONY: clean
clean: ## stop the stack and delete its data and the venv
	bash scripts/stack.sh clean
	rm -rf $(VENV)

.PHONY: bench
bench: install up ## benchmarks: ingest RPC shapes, HTTP gateway against gRPC, TLS and token overhead, dataflow throughput (on time, backfill, dedup), dedup memory, sink rows/s, cardinality sweep, 1 against 2 dataflow processes, tracing overhead
	@$(STACK_ENV) && $(BIN)/python -m benchmarks.bench_ingest -n $${BENCH_EVENTS:-100000}
	@$(STACK_ENV) && $(BIN)/python -m benchmarks.bench_gateway -n $${BENCH_EVENTS:-100000}
	@$(STACK_ENV) && $(BIN)/python -m benchmarks.bench_security -n $${BENCH_EVENTS:-100000}
	@$(STACK_ENV) && $(BIN)/python -m benchmarks.bench_flow -n $${BENCH_FLOW_EVENTS:-1000000}
	@$(BIN)/python -m benchmarks.bench_dedup -n $${BENCH_DEDUP_IDS:-5000000}
	@$(STACK_ENV) && $(BIN)/python -m benchmarks.bench_sink -n $${BENCH_SINK_ROWS:-200000}
	@$(STACK_ENV) && $(BIN)/python -m benchmarks.bench_cardinality --keys $${BENCH_KEYS:-100,10000,100000,1000000}
	@$(STACK_ENV) && $(BIN)/python -m benchmarks.bench_cluster -n $${BENCH_CLUSTER_EVENTS:-1000000} --keys $${BENCH_CLUSTER_KEYS:-10000}
	@$(STACK_ENV) && $(BIN)/python -m benchmarks.bench_tracing -n $${BENCH_EVENTS:-100000}
