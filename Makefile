# Hearth: `make run` and `make test` are the whole quick start (see README.md).

# System packages: build tools, GStreamer (the box's camera, mic, encoder, screen, speaker),
# and the browsers the end-to-end tests drive. No -dev package of plugins-bad: it pulls Qt.
# The simulated home network (tests/support/home.rs) needs nftables and the router's
# miniupnpd: only its nftables binary package, `miniupnpd-nftables` (/usr/sbin/miniupnpd and
# nothing else). The `miniupnpd` package is the host service around it (init script, systemd
# unit, debconf questions) and is deliberately not installed: the tests start their own
# miniupnpd inside a network namespace, and no router daemon may ever run on the host.
# Likewise `coturn` (the relay in tests/relay.rs) and `bind9` (the owner's DNS server in
# tests/name.rs): Debian's packages start their servers on install, so their units are masked
# first and the tests start their own in a namespace. `pebble` is the ACME test CA (it has no
# unit); `libnss3-tools` gives certutil, with which a test browser trusts pebble's root;
# `dnsmasq-base` is the simulated router's DHCP server (the binary only, no host service).
# `iptables` hands datagrams to the bad network the tests and benchmarks make for themselves
# (tests/support/src/impair.rs: NFQUEUE, as this kernel has no netem).
DEPS := build-essential pkg-config cmake ca-certificates iproute2 util-linux fonts-dejavu-core \
	libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev gstreamer1.0-tools \
	gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad \
	gstreamer1.0-plugins-ugly gstreamer1.0-libav gstreamer1.0-alsa gstreamer1.0-x \
	chromium firefox-esr nftables miniupnpd-nftables coturn \
	pebble bind9 bind9-utils bind9-dnsutils libnss3-tools curl openssl systemd dnsmasq-base \
	iptables
CARGO ?= cargo
STATE_DIR ?= $(CURDIR)/target/dev-state

.PHONY: deps build ship run test bench bench-janus bench-load bench-forward soak fuzz cross deb deb-arm64

SYSROOT := $(CURDIR)/target/sysroot-arm64
ARM64 := aarch64-unknown-linux-gnu
# pkg-config must see only the sysroot's .pc files: PKG_CONFIG_PATH alone would quietly fall
# back to the host's amd64 ones. C code built by crates (aws-lc-sys) needs the sysroot's
# headers as much as the linker needs its libraries: Debian's cross gcc has no arm64 libc
# of its own (libc6-dev-arm64-cross is only a Recommends), and without --sysroot it reads
# the host's /usr/include.
CROSS_ENV := PKG_CONFIG_ALLOW_CROSS=1 \
	PKG_CONFIG_LIBDIR=$(SYSROOT)/usr/lib/aarch64-linux-gnu/pkgconfig:$(SYSROOT)/usr/share/pkgconfig \
	PKG_CONFIG_SYSROOT_DIR=$(SYSROOT) \
	CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc \
	CFLAGS_aarch64_unknown_linux_gnu=--sysroot=$(SYSROOT) \
	CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
	CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C link-arg=--sysroot=$(SYSROOT)"

deps:
	@missing=""; for p in $(DEPS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "Installing system packages:$$missing"; \
		SUDO=""; [ "$$(id -u)" -eq 0 ] || SUDO=sudo; \
		mask() { $$SUDO mkdir -p /etc/systemd/system && $$SUDO ln -sf /dev/null /etc/systemd/system/$$1.service; }; \
		case " $$missing " in *" coturn "*) mask coturn;; esac; \
		case " $$missing " in *" bind9 "*) mask named;; esac; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y --no-install-recommends $$missing; \
	fi
	@# tests/clock.rs runs the image's systemd-timesyncd; where another NTP client is installed
	@# (they conflict), it is unpacked into target/ rather than installed over that client.
	@if [ ! -x /lib/systemd/systemd-timesyncd ] && [ ! -x target/timesyncd/lib/systemd/systemd-timesyncd ]; then \
		mkdir -p target/timesyncd && cd target/timesyncd && apt-get download systemd-timesyncd && \
		dpkg -x systemd-timesyncd_*.deb . ; \
	fi

build: deps
	$(CARGO) build --release --locked

# What goes on the box: Cargo.toml's `ship` profile (fat LTO), in target/ship/. `make run` and
# the tests use `release`, which builds in a fraction of the time.
ship: deps
	$(CARGO) build --profile ship --locked

run: build
	./target/release/hearth --state-dir $(STATE_DIR) run --board dev

# Unit tests run as they are; the browser tests run inside a private network namespace
# (only `lo`), so no test traffic can reach the machine's LAN address or beyond.
test: deps
	$(CARGO) build --release --locked --all-targets
	$(CARGO) test --release --locked --no-run
	./tests/in-netns $(CARGO) test --release --locked --offline
	$(CARGO) clippy --release --locked --all-targets -- -D warnings

# Figures of a call (benches/call.rs) and of a call on a bad network (benches/impaired.rs).
bench: deps
	$(CARGO) build --release --locked --all-targets
	./tests/in-netns $(CARGO) bench --locked --offline --bench call --bench impaired

# Hearth's SFU and Janus's VideoRoom side by side (benches/janus.rs): CPU per 1000 forwarded
# packets, N = 3 and 4, three alternating runs each, of the build that ships (the `ship`
# profile). Debian's janus is installed here, its unit masked first as coturn's is: the bench
# starts its own Janus inside the namespace.
bench-janus: deps
	@dpkg-query -W -f='$${Status}\n' janus 2>/dev/null | grep -q '^install ok installed' || { \
		SUDO=""; [ "$$(id -u)" -eq 0 ] || SUDO=sudo; \
		$$SUDO mkdir -p /etc/systemd/system && $$SUDO ln -sf /dev/null /etc/systemd/system/janus.service; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y --no-install-recommends janus; }
	$(CARGO) bench --profile ship --locked --no-run --bench janus
	./tests/in-netns $(CARGO) bench --profile ship --locked --offline --bench janus

# The SFU at scale without browsers (benches/load.rs): N = 4, 8 and 12 str0m clients in one
# process, each publishing pre-encoded H.264 and Opus and checking every frame it receives;
# CPU per 1000 forwarded packets, forwarding latency, delivery, and the call size one core
# holds on paper. The clients share the machine with the daemon.
bench-load: deps
	$(CARGO) build --release --locked --all-targets
	./tests/in-netns $(CARGO) bench --locked --offline --bench load

# The SFU core alone (benches/forward.rs): the tests/sfu phones in memory on a stepped clock;
# only the time inside the SFU's own calls is counted, per 1000 forwarded packets. Seconds,
# not minutes, and free of the kernel's and the runtime's noise.
bench-forward: deps
	$(CARGO) bench --locked --offline --bench forward

# Half an hour of phones joining, leaving, muting and reconnecting with the box's media on:
# fails if the daemon's memory, descriptors or threads grow (SOAK_MINUTES to change).
SOAK_MINUTES ?= 30
soak: deps
	$(CARGO) build --release --locked --all-targets
	./tests/in-netns $(CARGO) bench --locked --offline --bench soak -- --minutes $(SOAK_MINUTES)

# Coverage-guided fuzzing on stable Rust: AFL++ through cargo-afl, over the targets in
# fuzz/targets/ (signalling messages, the config file, invite tokens, the SFU's datagrams),
# FUZZ_SECONDS each, one at a time. Not part of `make test`. Findings stay in fuzz/out/
# (ignored by git); an input that fails belongs in fuzz/regressions/TARGET/, which the normal
# suite replays with every seed (tests/fuzz_inputs.rs).
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= signalling config invite sfu
CARGO_AFL_VERSION := 0.18.2
FUZZ_ENV := AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_NO_AFFINITY=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1

fuzz: deps
	@$(CARGO) afl --version 2>/dev/null | grep -q 'cargo-afl $(CARGO_AFL_VERSION)' || \
		$(CARGO) install cargo-afl --locked --version $(CARGO_AFL_VERSION)
	@out=$$($(CARGO) afl config --build 2>&1) || echo "$$out" | grep -q 'already built' || \
		{ echo "$$out"; exit 1; }
	cd fuzz && $(CARGO) afl build --release --locked
	@found=0; for t in $(FUZZ_TARGETS); do \
		rm -rf fuzz/out/$$t; mkdir -p fuzz/out/$$t; \
		dict=""; [ -f fuzz/dict/$$t.dict ] && dict="-x fuzz/dict/$$t.dict"; \
		echo "fuzz: $$t for $(FUZZ_SECONDS) s (log: fuzz/out/$$t.log)"; \
		$(FUZZ_ENV) $(CARGO) afl fuzz -V $(FUZZ_SECONDS) $$dict -i fuzz/seeds/$$t -o fuzz/out/$$t \
			fuzz/target/release/$$t > fuzz/out/$$t.log 2>&1 || { tail -30 fuzz/out/$$t.log; exit 1; }; \
		stats=fuzz/out/$$t/default/fuzzer_stats; \
		printf '  %s: ' $$t; \
		for k in run_time execs_done execs_per_sec corpus_count bitmap_cvg saved_crashes saved_hangs; do \
			printf '%s=%s ' $$k "$$(sed -n "s/^$$k *: //p" $$stats)"; done; echo; \
		for f in fuzz/out/$$t/default/crashes/id:* fuzz/out/$$t/default/hangs/id:*; do \
			[ -e "$$f" ] && { echo "  found: $$f"; found=1; }; done; \
	done; \
	if [ $$found = 1 ]; then echo "fuzz: inputs that crash or hang above; add each to fuzz/regressions/TARGET/"; exit 1; fi

# The Pi's binary, built on this x86 machine against an extracted arm64 sysroot.
cross: deps
	image/cross-sysroot.sh $(SYSROOT)
	rustup target add $(ARM64)
	$(CROSS_ENV) $(CARGO) build --profile ship --locked --target $(ARM64)

# Debian packages (cargo-deb): binary, unit, default config, udev rules.
deb: ship
	$(CARGO) install cargo-deb --locked --version 3.8.0 --quiet || $(CARGO) install cargo-deb --locked --quiet
	./target/ship/hearth config default > target/hearth.toml
	$(CARGO) deb --no-build --profile ship --locked

deb-arm64: cross
	$(CARGO) install cargo-deb --locked --version 3.8.0 --quiet || $(CARGO) install cargo-deb --locked --quiet
	./target/release/hearth config default > target/hearth.toml || $(CARGO) run --release --locked -- config default > target/hearth.toml
	$(CARGO) deb --no-build --no-strip --profile ship --locked --target $(ARM64)
