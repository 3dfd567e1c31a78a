# fw: set-up, tests, benchmarks and the lab. See README.md.
VENV ?= .venv
PY := $(VENV)/bin/python
# System packages: scripts/apt-packages.txt (shared with the Vagrant provisioning).

.PHONY: install test lint bench lab lab-down clean

install:
	scripts/install-system-packages.sh dev
	scripts/install-venv.sh $(VENV)

test:
	$(PY) -m pytest -q

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
