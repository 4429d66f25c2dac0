"""A tiny trained checkpoint (cp head, H = 3) made by the real ``tjdnet fit``, shared by the tests of the commands."""

import pytest
import torch
from tiny_models import save_tiny_model_dir


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return save_tiny_model_dir("llama", tmp_path_factory.mktemp("bench-tiny-llama"))


@pytest.fixture(scope="session")
def tiny_ckpt(tiny_model_dir, tmp_path_factory):
    from tjdnet.training.fit import run_fit

    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TJDNET_EXPERIMENTS", str(tmp_path_factory.mktemp("bench-experiments")))
        run_dir = run_fit(
            ["--model.model", tiny_model_dir, "--model.model_head", "cp", "--model.horizon", "3",
             "--model.max_new_tokens", "8", "--data.dataset", "stemp", "--data.max_num_samples", "16",
             "--data.max_eval_samples", "4", "--data.batch_size", "8", "--data.seq_len", "128",
             "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
             "--trainer.enable_model_summary", "false", "--run_name", "bench"]
        )  # fmt: skip
    torch.set_num_threads(threads)
    return run_dir / "best.ckpt"
