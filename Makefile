# One venv for everything; each target installs what it needs.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test run lint lint-imports format bench compare clean fuzz

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q -e '.[test,chaos]'
	touch $(STAMP)

install: $(STAMP)

## test: install into .venv and run the whole suite (this is what CI runs)
test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

## run: install into .venv and start a local 3-node cluster (Ctrl-C stops it)
run: $(STAMP)
	$(BIN)/raftq up $(UP_ARGS)

lint: lint-imports
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

## lint-imports: the package layers of docs/DESIGN.md, no import cycles ([tool.importlinter])
lint-imports: $(STAMP)
	$(BIN)/lint-imports

## fuzz: the coverage-guided fuzzer of the peer and binary frame decoders (atheris) for
## FUZZ_SECONDS (60); a crashing input is saved and named in the output
FUZZ_SECONDS ?= 60
fuzz: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[fuzz]'
	$(BIN)/python -m tests.fuzz.atheris_frames -max_total_time=$(FUZZ_SECONDS) $(FUZZ_ARGS)

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/raftq bench

## compare: raftq beside NATS JetStream and RabbitMQ, taking turns (../shared/bench/peers);
## installs the peers once (root), runs raftq over HTTP and through its own client (over
## its binary protocol, and over HTTP to show what the protocol gains)
PEERS_DIR ?= ../shared/bench/peers
# the client's default protocol: the binary ports of `raftq up` (run-with-raftq passes
# the HTTP ports to every variant; a variant's own --opt servers wins)
RAFTQ_BINARY := raftq://127.0.0.1:7201,raftq://127.0.0.1:7202,raftq://127.0.0.1:7203
compare: $(STAMP)
	$(PEERS_DIR)/setup.sh
	$(BIN)/python -m pip install -q nats-py==2.16.0 aio-pika==10.2.1 redis==8.1.0
	PATH="$(CURDIR)/$(BIN):$$PATH" PYTHONPATH="$(CURDIR)" RAFTQ="$(CURDIR)/$(BIN)/raftq" \
	PEERS="$${PEERS-nats215-always rabbit}" \
	RAFTQ_VARIANTS=$$'raftq http, 1 msg/request|\nraftq http, batch 32|--opt batch=32\nraftq client|--peer-adapter benchmarks.peer_adapter:ClientAdapter --opt servers=$(RAFTQ_BINARY)\nraftq client over http|--peer-adapter benchmarks.peer_adapter:ClientAdapter' \
	$(PEERS_DIR)/compare.sh

clean:
	rm -rf $(VENV) .pytest_cache .import_linter_cache data chaos-results
