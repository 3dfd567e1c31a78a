# fw: set-up, tests, benchmarks and the lab. See README.md.
VENV ?= .venv
PY := $(VENV)/bin/python
# System packages: scripts/apt-packages.txt (shared with the Vagrant provisioning).

.PHONY: install compiled pure test test-pure lint bench lab lab-down clean

install:
	scripts/install-system-packages.sh dev
	scripts/install-venv.sh $(VENV)

# mypyc builds of the hot modules (fw.COMPILED) beside their sources; `pure` removes them. Not part
# of `install`: compiled, they are slower as they are written (docs/performance.md).
compiled:
	$(PY) scripts/build_compiled.py

pure:
	$(PY) scripts/build_compiled.py --clean

test:
	$(PY) -m pytest -q

test-pure:
	FW_PURE=1 $(PY) -m pytest -q

lint:
	$(VENV)/bin/ruff check fw tests bench

bench:
	$(PY) -m bench

lab:
	$(VENV)/bin/fw lab up

lab-down:
	$(VENV)/bin/fw lab down

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
	find fw -name '*.so' -delete

# Deployment (docs/deploy.md): the systemd service, the Vagrant lab VMs, and the checks of both.
.PHONY: install-service deploy-check lab-vms lab-vms-down
POLICY ?= policies/lab.yaml

install-service:
	scripts/install-service.sh --venv $(VENV) --policy $(POLICY)

deploy-check:
	$(PY) -m pytest -q tests/test_deploy*.py

lab-vms:
	cd vagrant && vagrant up

lab-vms-down:
	cd vagrant && vagrant destroy -f
