# The two entry points: `make run` and `make test`. Both build .venv from nothing.
PYTHON ?= python3.11
UV_VERSION := 0.9.7
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: run test lint typecheck pytest venv bench clean

run: venv
	$(VENV)/bin/appgateway demo

test: venv lint typecheck pytest

lint: venv
	$(VENV)/bin/ruff check appgateway tests bench
	$(VENV)/bin/ruff format --check appgateway tests bench

typecheck: venv
	$(VENV)/bin/mypy

pytest: venv
	$(VENV)/bin/pytest

venv: $(VENV)/.synced

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet uv==$(UV_VERSION)

$(VENV)/.synced: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --python $(PYTHON)
	touch $@

uv.lock: pyproject.toml | $(UV)
	$(UV) lock --python $(PYTHON)

bench: venv
	$(VENV)/bin/python bench/run.py

clean:
	rm -rf $(VENV) $(TOOLS)
