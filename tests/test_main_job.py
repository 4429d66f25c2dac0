"""The README's main job (`make main`) on the embedded SmolLM2-135M, tested on 4 prompts (slow: ~4-8 min)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_main_job_learns_stemp_and_speculates(tmp_path):
    env = {**os.environ, "TJDNET_EXPERIMENTS": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable, "-m", "tjdnet.cli", "fit", "--config", str(ROOT / "configs" / "main_stemp.yaml"),
        "--data.max_eval_samples", "8", "--test.max_num_samples", "4",
        "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1500, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "main-stemp" / "test_results.json").read_text())["results"]
    assert results["ar"]["accuracy"] > 0
    assert results["speculative"]["tau"] > 1
    assert results["speculative"]["identical_to_ar"] == 1.0
