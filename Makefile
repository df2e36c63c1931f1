# Tabby: every target installs what it needs (idempotent), so on a fresh Debian 12
# machine `make demo` and `make test` are the only two commands anyone needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := etcd-server etcd-client frr bird2 gobgpd graphviz iproute2 nftables iputils-ping psmisc procps kmod util-linux containerd runc containernetworking-plugins busybox-static docker-compose qemu-system-x86 cpio python3-nftables iperf3 gcc libc6-dev
PYTEST_ARGS ?=
PACKAGES := bgp common controller datamodel datastore felix_like ipam lab

.PHONY: setup system-deps guest-kernel venv bytecode demo demo-ipam test test-unit test-integration lint bench clean

setup: system-deps guest-kernel venv

# Debian packages, installed only when one is missing (apt-get needs root).
system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if ! $(PYTHON) -c 'import venv, ensurepip' >/dev/null 2>&1; then missing="$$missing python3-venv"; fi; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi; \
	scripts/quiet-system-daemons.sh

# Debian's kernel for the guest-kernel tests (tests/guest, under QEMU), unpacked into
# /var/cache/tabby-guest only when missing (scripts/guest-kernel.sh; no install, no bootloader).
guest-kernel: system-deps
	@if [ "$$(id -u)" = 0 ]; then scripts/guest-kernel.sh >/dev/null; \
	else echo "guest-kernel: skipped (not root; the guest-kernel tests need root)"; fi

venv: $(VENV)/.installed $(VENV)/.nftables-pth bytecode

# Byte-compile Tabby's own packages (only what changed). A pip-installed Tabby ships compiled, but the
# editable install compiles every module on each start when PYTHONDONTWRITEBYTECODE is set (as on CI
# machines): about 0.15 s per tabbyctl command, and the test suites start tabbyctl hundreds of times.
bytecode: $(VENV)/.installed
	@$(PY) -m compileall -q -j 0 $(PACKAGES) >/dev/null

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
	@$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $@

# libnftables' Python binding is Debian's python3-nftables (ctypes, no PyPI release): the venv sees
# that one package only (a .pth naming a directory that links to it), not all of dist-packages.
$(VENV)/.nftables-pth: $(VENV)/.installed
	@mkdir -p $(VENV)/debian-nftables && ln -sfn /usr/lib/python3/dist-packages/nftables $(VENV)/debian-nftables/nftables
	@echo "$(abspath $(VENV))/debian-nftables" > "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/tabby-debian-nftables.pth"
	@touch $@

# The three-node-tor lab (namespaces, FRR, etcd, three BGP-routed Tabby nodes); it stays up afterwards
# (docs/demo.md: explore it, then `tabbyctl lab destroy -t examples/three-node-tor.clab.yml --cleanup`).
demo: setup
	$(PY) -m lab.demo

# The IPAM-only demo: a private etcd on loopback, no namespaces, nothing left behind.
demo-ipam: setup
	$(PY) -m controller.demo_ipam

test: setup lint
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: setup
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

bench: setup
	$(PY) tests/bench/ipam.py --quick

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
