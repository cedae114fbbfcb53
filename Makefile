# Two commands do everything: `make demo` and `make test`. Both create .venv on first use.
# `make test` is what CI runs (.ci/run): the test suite (the docs site's strict build among the tests), then `make lint`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
GPU ?= 0
STAMP := $(VENV)/.installed-gpu$(GPU)
DEMO_DIR ?=
DEMO_DATA ?=
DEMO_ARGS ?=
PYTEST_ARGS ?=
# pytest-xdist worker processes for `make test` (one per core of the CI machine); 0 runs the suite in this process.
TEST_WORKERS ?= 2

.PHONY: venv demo test lint docs bench clean

venv: $(STAMP)

# Re-runs only when a pinned file or the package metadata changes.
$(STAMP): requirements/lock.txt requirements/torchrec.txt requirements/gpu.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
ifeq ($(GPU),1)
	grep -v '^fbgemm-gpu-cpu' requirements/lock.txt > $(VENV)/lock-gpu.txt
	$(BIN)/python -m pip install --quiet -r $(VENV)/lock-gpu.txt -r requirements/gpu.txt
else
	$(BIN)/python -m pip install --quiet -r requirements/lock.txt
endif
	$(BIN)/python -m pip install --quiet --no-deps -r requirements/torchrec.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	rm -f $(VENV)/.installed-gpu*
	touch $(STAMP)

# The demo with the engagement history (data/demo_history, runs/demo_history); `make demo DEMO_ARGS=--no-history`
# trains without it (data/demo, runs/demo).
demo: $(STAMP)
	$(BIN)/recap demo $(if $(DEMO_DATA),--data-dir $(DEMO_DATA)) $(if $(DEMO_DIR),--save-dir $(DEMO_DIR)) $(DEMO_ARGS)

# --dist worksteal: a worker that runs out of tests takes the other's last ones, so the workers end together.
test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)
	@$(MAKE) --no-print-directory lint

# ruff over everything, mypy over core/, common/ and projects/home/recap/ (settings in pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

# The config reference is regenerated from the config classes, then the site is built into site/; any warning (a
# broken link or anchor, a page missing from mkdocs.yml's nav) is an error.
docs: $(STAMP)
	$(BIN)/python -m tools.config_reference
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet
	@echo "site/index.html"

bench: $(STAMP)
	$(BIN)/recap benchmark

clean:
	rm -rf $(VENV) runs data site .mypy_cache

# --- make gpu-check: the ranker on a single-GPU machine in under 8 minutes (README "GPU check") --------------------
# GPU_PYTHON is the interpreter that holds the machine's CUDA PyTorch; nothing is installed into it. The few extra
# packages (pydantic, pytest and their dependencies, versions from requirements/lock.txt) come from GPU_WHEELS, which
# `make gpu-wheels` fills on a machine that reaches a package registry, into GPU_SITE (put first on PYTHONPATH).
GPU_PYTHON ?= python3
GPU_WHEELS ?= wheels/gpu
GPU_SITE ?= .gpu-site
GPU_CHECK_DIR ?= runs/gpu-check
GPU_CHECK_PACKAGES := pydantic pytest
GPU_CHECK_PY := 3.12

.PHONY: gpu-wheels gpu-check

gpu-wheels:
	rm -rf $(GPU_WHEELS) && mkdir -p $(GPU_WHEELS)
	$(PYTHON) -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
		--python-version $(GPU_CHECK_PY) --implementation cp --abi cp$(subst .,,$(GPU_CHECK_PY)) \
		--platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
		-c requirements/lock.txt -d $(GPU_WHEELS) $(GPU_CHECK_PACKAGES)
	@ls $(GPU_WHEELS)
	@size=$$(du -sm $(GPU_WHEELS) | cut -f1); echo "$(GPU_WHEELS): $$size MB"; \
		test $$size -lt 50 || { echo "$(GPU_WHEELS) is over 50 MB: check GPU_CHECK_PACKAGES"; exit 1; }

# Without CUDA (or without torch) the check prints "no CUDA device" and exits 0; otherwise GPU_SITE is filled from
# the wheels (pip install --target, or, where the interpreter has no pip, each wheel unzipped there) unless the
# packages already import, and the check runs.
gpu-check:
	@if ! $(GPU_PYTHON) -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' >/dev/null 2>&1; then \
		exec $(GPU_PYTHON) -m projects.home.recap.gpu_check --out $(GPU_CHECK_DIR); fi; \
	export PYTHONPATH="$(abspath $(GPU_SITE))$${PYTHONPATH:+:$$PYTHONPATH}"; \
	if ! $(GPU_PYTHON) -c 'import pydantic, pytest, sys; sys.exit(int(pydantic.VERSION.split(".")[0]) < 2)' >/dev/null 2>&1; then \
		if [ ! -d $(GPU_WHEELS) ]; then \
			echo "gpu-check needs $(GPU_CHECK_PACKAGES): run 'make gpu-wheels' where a package registry is reachable" \
				"and copy $(GPU_WHEELS) here"; exit 2; fi; \
		echo "installing $(GPU_CHECK_PACKAGES) from $(GPU_WHEELS) into $(GPU_SITE)"; \
		if $(GPU_PYTHON) -m pip --version >/dev/null 2>&1; then \
			$(GPU_PYTHON) -m pip install --quiet --disable-pip-version-check --no-index --find-links $(GPU_WHEELS) \
				--target $(GPU_SITE) --upgrade $(GPU_CHECK_PACKAGES) || exit 2; \
		else \
			for wheel in $(GPU_WHEELS)/*.whl; do $(GPU_PYTHON) -m zipfile -e $$wheel $(GPU_SITE) || exit 2; done; \
		fi; \
	fi; \
	exec $(GPU_PYTHON) -m projects.home.recap.gpu_check --out $(GPU_CHECK_DIR)
