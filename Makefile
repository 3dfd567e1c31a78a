# fw: set-up, tests, benchmarks and the lab. See README.md.
VENV ?= .venv
PY := $(VENV)/bin/python
APT_PACKAGES := iptables conntrack libnetfilter-queue-dev vsftpd lftp iperf3 hping3 redis-server \
	postgresql shellcheck vagrant curl tcpdump iproute2 netcat-openbsd kmod procps

.PHONY: install test lint bench lab lab-down clean

install:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES); \
	else echo "not root or no apt-get: skipping system packages ($(APT_PACKAGES))"; fi
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'

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
