"""The shipped pretrained heads (``pretrained/<name>/``): they load offline, through the CLI and the Python API,
and greedy speculative decoding with them is exactly plain decoding (slow: loads the embedded SmolLM2-135M)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tjdnet.data import Example, load_examples
from tjdnet.files import read_json

ROOT = Path(__file__).resolve().parents[1]
PRETRAINED = ROOT / "pretrained"
SHIPPED = sorted(p for p in PRETRAINED.glob("*") if (p / "tjdnet_config.json").is_file())
GSM8K = ROOT.parent / "shared" / "data" / "gsm8k"
MAX_MIB = 20


def test_a_head_ships_and_each_is_small():
    assert SHIPPED, "no pretrained/<name>/ save_pretrained directory"
    for directory in SHIPPED:
        size = sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())
        assert size < MAX_MIB * 2**20, f"{directory.name} is {size / 2**20:.1f} MiB"
        assert read_json(directory / "tjdnet_config.json")["model"] == "smollm2-135m"


@pytest.mark.slow
@pytest.mark.parametrize("directory", SHIPPED, ids=[p.name for p in SHIPPED])
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_shipped_head_is_lossless(directory, dtype):
    import torch

    from tjdnet.checkpoints import load_trained
    from tjdnet.data import encode_prompt

    trained = load_trained(directory, dtype)
    model, tokenizer = trained.model, trained.tokenizer
    prompts = [Example("Write a haiku about the sea.", None), Example("Explain what a CPU cache is.", None)]
    if GSM8K.is_dir():
        prompts += load_examples("gsm8k", "test", GSM8K, 2, seed=1)
    eos = tokenizer.eos_token_id
    with torch.inference_mode():
        for example in prompts:
            ids = torch.tensor([encode_prompt(tokenizer, example)])
            ar = model.generate(ids, gen_mode="ar", max_new_tokens=48, eos_token_id=eos)
            chain = model.generate(ids, gen_mode="speculative", max_new_tokens=48, eos_token_id=eos)
            tree = model.generate(ids, gen_mode="speculative", tree_nodes=8, max_new_tokens=48, eos_token_id=eos)
            looked = model.generate(
                ids, gen_mode="speculative", tree_nodes=8, tree_lookup=8, max_new_tokens=48, eos_token_id=eos
            )
            assert chain.new_tokens == ar.new_tokens == tree.new_tokens == looked.new_tokens
            assert chain.stats.tau > 1.0


@pytest.mark.slow
def test_shipped_head_generates_from_the_command_line(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable, "-m", "tjdnet.cli", "generate", "--ckpt_path", str(SHIPPED[0]),
        "--prompt", "Name three colours.", "--max_new_tokens", "16", "--dtype", "bfloat16",
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "[speculative]" in done.stdout and "tau=" in done.stdout and "lookup share=0.00" in done.stdout  # a chain
