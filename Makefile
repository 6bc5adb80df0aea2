# runv: build, install, demo and test.
#   make run    installs every dependency, builds and installs runv, runs a container in a microVM
#   make test   the whole test suite (lint, unit tests, end-to-end tests on real QEMU)

PREFIX      ?= /usr/local
BINDIR      := $(PREFIX)/bin
SHAREDIR    := $(PREFIX)/share/runv
CARGO       ?= cargo
MUSL_TARGET := x86_64-unknown-linux-musl
OUT         := target/runv
AGENT       := target/$(MUSL_TARGET)/release/runv-agent
# Two VMs at a time fit the 2-core machines runv is tested on.
E2E_THREADS ?= 2
# Root of the file system whose containerd configuration `make install` sets up (runtime
# handler runv); CONTAINERD_RESTART=1 restarts a running containerd to load it.
CONTAINERD_ROOT ?= /
CONTAINERD_RESTART ?=

export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: all install-deps build agent kernel initramfs rootfs install run demo test lint unit runtimetest e2e aarch64-check bench bench-rootfs bench-vmm clean

all: build

install-deps:
	scripts/install-deps.sh

build:
	$(CARGO) build --release -p runv-runtime -p runv-vmm -p containerd-shim-runv-v2

agent:
	$(CARGO) build --release -p runv-agent --target $(MUSL_TARGET)

kernel:
	guest-kernel-config/build.sh

initramfs: agent
	scripts/build-initramfs.sh $(AGENT) $(OUT)/initrd.img

rootfs:
	scripts/build-rootfs.sh $(OUT)/rootfs/busybox

install: build kernel initramfs rootfs
	install -D -m 0755 target/release/runv $(BINDIR)/runv
	install -D -m 0755 target/release/runv-vmm $(BINDIR)/runv-vmm
	install -D -m 0755 target/release/containerd-shim-runv-v2 $(BINDIR)/containerd-shim-runv-v2
	kdir=$$(guest-kernel-config/build.sh --print-path) && \
	  install -D -m 0644 $$kdir/vmlinux $(SHAREDIR)/guest/vmlinux && \
	  install -D -m 0644 $$kdir/kernel-release $(SHAREDIR)/guest/kernel-release
	install -D -m 0644 $(OUT)/initrd.img $(SHAREDIR)/guest/initrd.img
	rm -rf $(SHAREDIR)/rootfs/busybox.new && mkdir -p $(SHAREDIR)/rootfs && \
	  cp -a $(OUT)/rootfs/busybox $(SHAREDIR)/rootfs/busybox.new && \
	  rm -rf $(SHAREDIR)/rootfs/busybox && mv $(SHAREDIR)/rootfs/busybox.new $(SHAREDIR)/rootfs/busybox
	scripts/containerd-config.sh $(if $(CONTAINERD_RESTART),--restart) $(CONTAINERD_ROOT)
	$(BINDIR)/runv check

demo:
	@echo "host kernel:  $$(uname -r)"
	@echo "guest kernel: $$($(BINDIR)/runv run --rm -- uname -r)"

run: install-deps install demo

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --release -- -D warnings

unit:
	$(CARGO) test --release --workspace --exclude runv-tests

aarch64-check:
	rustup target list --installed | grep -qx aarch64-unknown-linux-gnu || rustup target add aarch64-unknown-linux-gnu
	$(CARGO) check --release -p runv-vmm --target aarch64-unknown-linux-gnu

# The OCI matrix (tests/e2e/oci.rs) runs the static in-container checker.
runtimetest:
	$(CARGO) build --release -p runv-runtimetest --target $(MUSL_TARGET)

e2e: runtimetest
	$(CARGO) test --release -p runv-tests -- --test-threads=$(E2E_THREADS)

test: install-deps install lint unit aarch64-check e2e

# runv against its peers in one run (needs `make install`): cold start by phase, `ctr run`
# with runv/runc/crun, the agent's create+start against runc/crun, idle memory, density
# (DENSITY=10,50), runv-vmm against QEMU, TCP on a CNI bridge against runc; writes
# target/bench/report.json.
bench: agent
	$(CARGO) build --release -p runv-benches
	target/release/bench --runs $(or $(RUNS),5) --density $(or $(DENSITY),10,50)

clean:
	$(CARGO) clean

# Container roots over virtio-fs vs an erofs image on virtio-blk, in the same run (needs
# `make install`); RUNS=5 and FILES=3000 by default; writes target/bench/rootfs.json.
bench-rootfs:
	$(CARGO) run --release -p runv-benches --bin rootfs -- $(or $(RUNS),5) $(or $(FILES),3000)

# runv-vmm against QEMU microvm on this /dev/kvm: start-up, first kernel line, memory overhead,
# vsock (RUNS=10 by default); writes target/bench/vmm.json.
bench-vmm:
	$(CARGO) build --release -p runv-vmm
	RUNV_VMM=$(CURDIR)/target/release/runv-vmm $(CARGO) run --release -p runv-benches --bin vmm -- --runs $(or $(RUNS),10)
