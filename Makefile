# gitcluster: the two commands are `make up` (a local cluster) and `make test` (every test).
CARGO ?= cargo
SHELL := /bin/bash

.PHONY: build test lint fmt bench up down services help

help:
	@echo "make up      start a local cluster (storage node + gateway) on 127.0.0.1"
	@echo "make down    stop it"
	@echo "make test    build and run every test against real PostgreSQL, RabbitMQ and git"
	@echo "make lint    rustfmt --check and clippy -D warnings"
	@echo "make bench   build release binaries and write target/bench/*.json"

build:
	$(CARGO) build --workspace --bins

# Integration tests run the built binaries, so build them first.
test: services
	@deploy/local/ensure-pyclients.sh
	$(CARGO) build --workspace --bins
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --workspace --no-fail-fast; \
	else \
		echo "cargo-nextest not found: falling back to cargo test"; \
		$(CARGO) test --workspace --no-fail-fast; \
	fi

services:
	@deploy/local/ensure-services.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

# The workspace build also builds the bench binary; running it directly avoids a
# second build with a different feature set (`cargo run -p` resolves features anew).
bench:
	$(CARGO) build --release --workspace --bins
	target/release/bench

up: build
	@deploy/local/up.sh

down:
	@deploy/local/down.sh
