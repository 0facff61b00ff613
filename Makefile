# metascale — the two commands a newcomer needs are `make demo` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
APT_PACKAGES := openssh-server openssh-client sudo systemd-container dbus iproute2 netcat-openbsd procps psmisc curl openssl postgresql chromium

.PHONY: setup apt venv lab-up lab-down lab-status lab-reset test unit demo demo-down bench

setup: apt venv  ## install everything (idempotent)

apt:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  [ -e /usr/sbin/policy-rc.d ] || { printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; }; \
	  echo "installing:$$missing"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@[ -x $(PY) ] || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

lab-up: setup
	$(PY) -m sandbox up

lab-down:
	$(PY) -m sandbox down

lab-status:
	$(PY) -m sandbox status

lab-reset:
	$(PY) -m sandbox reset

unit: setup
	$(PY) -m pytest tests/unit -q

test: setup
	$(PY) -m pytest -q

demo: setup  ## lab + local Prefect server + serve, then scale-up and scale-down through the REST API
	$(PY) -m deployments.demo up

bench: setup  ## flows vs bench/runbook.sh on a lab of its own; writes BENCHMARKS.md (BENCH_ARGS="--rounds 5")
	$(PY) -m bench.run_bench $(BENCH_ARGS)

demo-down:  ## stop what `make demo` started and bring the lab down
	$(PY) -m deployments.demo down
