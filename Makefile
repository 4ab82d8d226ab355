# Hearth: `make run` and `make test` are the whole quick start (see README.md).

# System packages: build tools, GStreamer (the box's camera, mic, encoder, screen, speaker),
# and the browsers the end-to-end tests drive. No -dev package of plugins-bad: it pulls Qt.
# The simulated home network (tests/support/home.rs) needs nftables and the router's
# miniupnpd: only its nftables binary package, `miniupnpd-nftables` (/usr/sbin/miniupnpd and
# nothing else). The `miniupnpd` package is the host service around it (init script, systemd
# unit, debconf questions) and is deliberately not installed: the tests start their own
# miniupnpd inside a network namespace, and no router daemon may ever run on the host.
DEPS := build-essential pkg-config cmake ca-certificates iproute2 util-linux fonts-dejavu-core \
	libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev gstreamer1.0-tools \
	gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad \
	gstreamer1.0-plugins-ugly gstreamer1.0-libav gstreamer1.0-alsa gstreamer1.0-x \
	chromium firefox-esr nftables miniupnpd-nftables
CARGO ?= cargo
STATE_DIR ?= $(CURDIR)/target/dev-state

.PHONY: deps build run test bench cross deb deb-arm64

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
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y --no-install-recommends $$missing; \
	fi

build: deps
	$(CARGO) build --release --locked

run: build
	./target/release/hearth --state-dir $(STATE_DIR) run --board dev

# Unit tests run as they are; the browser tests run inside a private network namespace
# (only `lo`), so no test traffic can reach the machine's LAN address or beyond.
test: deps
	$(CARGO) build --release --locked --all-targets
	$(CARGO) test --release --locked --no-run
	./tests/in-netns $(CARGO) test --release --locked --offline
	$(CARGO) clippy --release --locked --all-targets -- -D warnings

bench: deps
	$(CARGO) build --release --locked --all-targets
	./tests/in-netns $(CARGO) bench --locked --offline

# The Pi's binary, built on this x86 machine against an extracted arm64 sysroot.
cross: deps
	image/cross-sysroot.sh $(SYSROOT)
	rustup target add $(ARM64)
	$(CROSS_ENV) $(CARGO) build --release --locked --target $(ARM64)

# Debian packages (cargo-deb): binary, unit, default config, udev rules.
deb: build
	$(CARGO) install cargo-deb --locked --version 3.8.0 --quiet || $(CARGO) install cargo-deb --locked --quiet
	./target/release/hearth config default > target/hearth.toml
	$(CARGO) deb --no-build --locked

deb-arm64: cross
	$(CARGO) install cargo-deb --locked --version 3.8.0 --quiet || $(CARGO) install cargo-deb --locked --quiet
	./target/release/hearth config default > target/hearth.toml || $(CARGO) run --release --locked -- config default > target/hearth.toml
	$(CARGO) deb --no-build --no-strip --locked --target $(ARM64)
