# The two entry points: `make run` and `make test`. Both build .venv from nothing.
# `make image` builds the container image, `make image-test` runs it (both as root, without a
# Docker daemon: buildah and podman come from Debian and are installed when missing).
PYTHON ?= python3.11
UV_VERSION := 0.9.7
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)

IMAGE ?= localhost/appgateway:0.1.0

# NATIVE=0 skips compiling the data-path modules with mypyc (they then run interpreted).
NATIVE ?= 1

.PHONY: run test lint typecheck pytest venv native bench clean image image-test

run: native
	$(VENV)/bin/appgateway demo

test: venv lint typecheck pytest

lint: venv
	$(VENV)/bin/ruff check appgateway tests bench scripts
	$(VENV)/bin/ruff format --check appgateway tests bench scripts

typecheck: venv
	$(VENV)/bin/mypy

pytest: native
	$(VENV)/bin/pytest

venv: $(VENV)/.synced

# Rebuilds only when a compiled module's source changed (scripts/build_native.py checks).
native: venv
ifeq ($(NATIVE),1)
	$(VENV)/bin/python scripts/build_native.py --if-stale
else
	$(VENV)/bin/python scripts/build_native.py --clean
endif

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet uv==$(UV_VERSION)

$(VENV)/.synced: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --all-groups --python $(PYTHON)
	touch $@

uv.lock: pyproject.toml | $(UV)
	$(UV) lock --python $(PYTHON)

image:
	IMAGE=$(IMAGE) bash scripts/build-image.sh

image-test: image venv
	bash scripts/apt-need.sh podman:podman runc:runc
	IMAGE=$(IMAGE) $(VENV)/bin/pytest -m image tests/image

bench: native
	$(VENV)/bin/python bench/run.py

clean:
	-$(VENV)/bin/python scripts/build_native.py --clean
	rm -rf $(VENV) $(TOOLS)
