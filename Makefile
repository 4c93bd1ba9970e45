# make demo : install into .venv, start the embedded service, compress digits-cnn 16x through it
# make test : install into .venv and run the whole test suite (what CI runs)
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# torch first, pinned to the CPU build this machine carries, so nothing pulls a CUDA build.
TORCH  ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: install demo test lint typecheck bench-pack clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m slimline.demo

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check slimline tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy slimline bench

bench-pack: $(STAMP)
	$(PY) -m bench.pack

clean:
	rm -rf $(VENV) out .pytest_cache
