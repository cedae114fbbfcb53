# Two commands do everything: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
GPU ?= 0
STAMP := $(VENV)/.installed-gpu$(GPU)
DEMO_DIR ?= runs/demo
DEMO_DATA ?= data/demo
PYTEST_ARGS ?=

.PHONY: venv demo test lint bench clean

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

demo: $(STAMP)
	$(BIN)/recap demo --data-dir $(DEMO_DATA) --save-dir $(DEMO_DIR)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/recap benchmark

clean:
	rm -rf $(VENV) runs data
