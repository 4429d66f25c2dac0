"""Devices: names checked where given, ``--device cpu`` equals the default, and (marked ``cuda``, skipped without
a GPU) decoding and a tiny fit on CUDA."""

import os
import subprocess
import sys

import pytest
import torch
from tiny_models import TINY_VOCAB, head_only_config, make_tiny_lm

from tjdnet.devices import resolve_device
from tjdnet.model import TJDModel


def test_device_names():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("tpu", "cuda:x", "gpu", ""):
        with pytest.raises(ValueError, match="is not allowed; use one of cpu, cuda, cuda:N, auto"):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device='cuda:0' is not available"):
            resolve_device("cuda:0")


def test_device_cpu_equals_the_default(tiny_lm_dir, tmp_path):
    from tjdnet.commands.bench import run_bench

    common = {"model": tiny_lm_dir, "gen_modes": "ar,hf_generate", "num_prompts": 2, "max_new_tokens": 4}
    common |= {"repeats": 1, "warmup": 0}
    default = run_bench(**common, out=str(tmp_path / "a.json"))
    on_cpu = run_bench(**common, device="cpu", out=str(tmp_path / "b.json"))
    assert on_cpu["args"]["device"] == default["args"]["device"] == "cpu"
    for mode in ("ar", "hf_generate"):
        assert on_cpu["results"][mode]["new_tokens"] == default["results"][mode]["new_tokens"]
        assert on_cpu["results"][mode]["identical_to_ar"] == 1.0


def tiny_tjd(dtype=torch.float32, device="cpu") -> TJDModel:
    torch.manual_seed(0)
    model = TJDModel(make_tiny_lm("llama"), head_only_config(horizon=3, rank=2))
    with torch.no_grad():
        for p in model.head.parameters():
            p.add_(torch.randn_like(p))
    return model.to(dtype).to(device).eval()


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_speculative_equals_ar_on_cuda(dtype):
    model = tiny_tjd(dtype, "cuda")
    ids = torch.randint(3, TINY_VOCAB, (3, 9), generator=torch.Generator().manual_seed(1))
    kwargs = {"max_new_tokens": 24, "eos_token_id": 1}
    ar = model.generate(ids, gen_mode="ar", **kwargs)
    assert ar.sequences.device.type == "cuda"
    for mode in ({"gen_mode": "speculative"}, {"gen_mode": "speculative", "tree_nodes": 6}):
        assert model.generate(ids, **mode, **kwargs).new_tokens == ar.new_tokens
    on_cpu = tiny_tjd(dtype).generate(ids, gen_mode="ar", **kwargs)
    if dtype == torch.float32:
        assert on_cpu.new_tokens == ar.new_tokens  # greedy float32 agrees across devices on a tiny model


@pytest.mark.cuda
def test_a_tiny_fit_and_test_on_cuda(tmp_path):
    from tiny_models import save_tiny_model_dir

    model_dir = save_tiny_model_dir("llama", tmp_path / "tiny")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TJDNET_EXPERIMENTS": str(tmp_path / "experiments")}
    fit = [sys.executable, "-m", "tjdnet.cli", "fit", "--model.model", model_dir, "--model.horizon", "2",
           "--model.hidden_dim", "8", "--data.max_num_samples", "16", "--data.max_eval_samples", "2",
           "--data.seq_len", "128", "--trainer.accelerator", "gpu", "--trainer.devices", "1", "--run_name", "g",
           "--trainer.enable_progress_bar", "false"]  # fmt: skip
    fitted = subprocess.run(fit, env=env, capture_output=True, text=True)
    assert fitted.returncode == 0, fitted.stderr[-2000:]
    test = [sys.executable, "-m", "tjdnet.cli", "test", "--ckpt_path", str(tmp_path / "experiments/g/best.ckpt"),
            "--device", "cuda", "--data.max_num_samples", "3", "--max_new_tokens", "8"]  # fmt: skip
    done = subprocess.run(test, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
