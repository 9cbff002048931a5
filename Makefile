# Samenloop developer tasks. Every target sets up what it needs itself.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: all venv test test-attacks pytest lint typecheck format proto bench bench-linked mutate demo clean

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
	rm -rf .typecheck build
	$(PY) -m pip install -q --no-deps --no-compile --target .typecheck .
	cd .typecheck && ../$(VENV)/bin/mypy --config-file ../pyproject.toml -p samenloop

format: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

proto: venv
	$(PY) proto/generate.py

bench: venv
	$(PY) bench/run.py

# The picture's complementary suppression against τ-Argus (pytauargus, HiGHS) on the same
# cubes, with an LP audit of every suppressed cell (bench/linked_tables.py; ~4 minutes).
# scipy (the audit's LP) lives in its own venv with pytauargus, not in the project's dependencies.
TAU_VENV := .venv-tau
bench-linked: venv
	test -x $(TAU_VENV)/bin/python || $(PYTHON) -m venv $(TAU_VENV)
	$(TAU_VENV)/bin/python -m pip install -q pytauargus==0.6.0 scipy==1.17.1 'protobuf>=7.35.1,<8'
	$(TAU_VENV)/bin/python -m pip install -q --no-deps -e .
	nice -n 10 $(TAU_VENV)/bin/python bench/linked_tables.py

# Mutation testing of the decision cores, each against its own tests (mutation/run.py
# names them); MODULE=policies/rules.py runs one. Slow, so not part of `make test`;
# niced, one mutant at a time, one run at a time on the machine.
mutate: venv
	nice -n 19 $(PY) mutation/run.py $(MODULE)

demo: venv
	rm -rf demo-run
	$(VENV)/bin/samenloop demo --workdir demo-run

clean:
	rm -rf $(VENV) $(TAU_VENV) .typecheck .mutate build *.egg-info
