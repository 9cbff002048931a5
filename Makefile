# Samenloop developer tasks. Every target sets up what it needs itself.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: all venv test test-attacks pytest lint typecheck format proto bench demo clean

all: test

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

test: pytest lint

pytest: venv
	$(PY) -m pytest -q

# The insider attack suite alone (it also runs in make test): each attack through
# real daemons, asserting the refusal and that the daemons keep serving.
test-attacks: venv
	$(PY) -m pytest -q tests/attacks

lint: venv typecheck
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# mypy does not run the editable-install import hook that maps node/ to
# samenloop.node, so type-check an installed copy of the package.
typecheck: venv
	rm -rf .typecheck
	$(PY) -m pip install -q --no-deps --no-compile --target .typecheck .
	cd .typecheck && ../$(VENV)/bin/mypy --config-file ../pyproject.toml -p samenloop

format: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

proto: venv
	$(PY) proto/generate.py

bench: venv
	$(PY) bench/run.py

demo: venv
	rm -rf demo-run
	$(VENV)/bin/samenloop demo --workdir demo-run

clean:
	rm -rf $(VENV) .typecheck build *.egg-info
