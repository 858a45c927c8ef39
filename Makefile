# Two commands do all the set-up: `make demo` and `make test`. Each creates the venv if missing.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= out/demo

.PHONY: demo test lint lock venv clean

$(BIN)/.installed: pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch==2.13.0 first and alone, so pip takes the CPU build on disk, never a CUDA one.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[distill,bench,dev]'
	touch $@

venv: $(BIN)/.installed

demo: venv
	$(BIN)/distill run --dataset synthetic --out $(OUT) --force

test: venv
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check bundle distill serve bench tests
	$(BIN)/mypy serve bundle
	$(BIN)/hadolint Dockerfile

# Regenerate the hash-locked requirements/*.txt the Dockerfile installs from (README "Container").
# Keeps the current pins; `make lock LOCK_ARGS=--upgrade` moves every package to its newest allowed version.
lock:
	bash requirements/lock.sh $(LOCK_ARGS)

clean:
	rm -rf out .pytest_cache
