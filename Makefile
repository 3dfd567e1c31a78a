# fw: set-up, tests, benchmarks and the lab. See README.md.
VENV ?= .venv
PY := $(VENV)/bin/python
# System packages: scripts/apt-packages.txt (shared with the Vagrant provisioning).

.PHONY: install test test-pure lint bench lab lab-down clean

install:
	scripts/install-system-packages.sh dev
	scripts/install-venv.sh $(VENV)
	$(PY) build_compiled.py --strict

# The suite against the compiled build, then the tests of the modules build_compiled.py compiles and
# of what builds on them (no lab) against the pure-Python modules (FW_PURE=1: fw/__init__.py), so
# both builds stay equal (docs/performance.md). Every lab-free test pure: make test-pure PURE_TESTS=
PURE_TESTS := tests/test_alg_ftp.py tests/test_alg_tftp.py tests/test_compiled_build.py \
	tests/test_core_imports.py tests/test_engine.py tests/test_engine_effects.py \
	tests/test_engine_fuzz.py tests/test_engine_lb.py tests/test_engine_nat.py \
	tests/test_engine_nat_ftp.py tests/test_engine_nat_kernel.py tests/test_engine_nat_passes.py tests/test_engine_owner.py \
	tests/test_gso.py tests/test_lb_schedulers.py tests/test_lifetime.py tests/test_nat_checksum.py \
	tests/test_nat_ftp.py tests/test_nat_ports.py tests/test_nat_rewrite.py tests/test_nat_seqadj.py \
	tests/test_offload.py tests/test_packet.py tests/test_packet_fuzz.py tests/test_packet_ttl.py \
	tests/test_replay_corpus.py tests/test_replay_nat.py tests/test_session_memory.py \
	tests/test_sync_codec.py tests/test_tcp_table.py tests/test_tcp_window.py

test:
	$(PY) -m pytest -q
	$(MAKE) test-pure

test-pure:
	FW_PURE=1 $(PY) -m pytest -q -p no:cacheprovider -m "not netns and not root" $(PURE_TESTS)

lint:
	$(VENV)/bin/ruff check fw tests bench

bench:
	$(PY) -m bench

lab:
	$(VENV)/bin/fw lab up

lab-down:
	$(VENV)/bin/fw lab down

clean:
	-$(PY) build_compiled.py --clean
	rm -rf $(VENV) build *.egg-info .pytest_cache

# Deployment (docs/deploy.md): the systemd service, the Vagrant lab VMs, and the checks of both.
.PHONY: install-service deploy-check lab-box lab-vms lab-vms-check lab-vms-down
POLICY ?= policies/lab.yaml

install-service:
	scripts/install-service.sh --venv $(VENV) --policy $(POLICY)

deploy-check:
	$(PY) -m pytest -q tests/test_deploy*.py

# The Vagrant lab booted here, offline, on libvirt: the host's packages (scripts/lab-host.sh, not
# part of `make install`) and the box (cached), the three VMs, their end-to-end check (then down).
lab-box:
	scripts/lab-host.sh install
	scripts/lab-box.sh

lab-vms:
	scripts/lab-vms.sh up

lab-vms-check:
	scripts/lab-vms.sh check

lab-vms-down:
	scripts/lab-vms.sh down
