# edgeseal: the two commands are `make demo` and `make test`.
# Both install what is missing (Debian packages, .venv) and then run.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := swtpm swtpm-tools tpm2-tools libtss2-dev mosquitto socat pkg-config
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-16)
export TSS2_LOG ?= all+none

.PHONY: setup system-packages venv demo test lint unit bench clean

setup: system-packages venv

system-packages:
	@bash scripts/install-system-packages.sh $(APT_PACKAGES)

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[agent,server,release,test]'
	@rm -f $(VENV)/.installed-*
	@touch $@

demo: setup
	$(VENV)/bin/python scripts/demo.py

lint: venv
	$(VENV)/bin/ruff check sdk ota_server device_agent hardware tests bench scripts
	$(VENV)/bin/ruff format --check sdk ota_server device_agent hardware tests bench scripts
	$(VENV)/bin/mypy

unit: setup
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test: setup lint unit

bench: setup
	$(VENV)/bin/python bench/open_sealed.py
	$(VENV)/bin/python bench/repository.py
	$(VENV)/bin/python bench/update.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis demo-out
