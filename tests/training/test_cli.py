"""The real CLI on a tiny random model: fit writes checkpoints and resumes, test writes its JSON,
generate streams, DDP on CPU works, and bad input gives one-line errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_models import save_tiny_model_dir

from tjdnet.checkpoints import load_trained
from tjdnet.cli import main

FIT = [
    "--model.model_head", "cp", "--model.horizon", "3", "--model.rank", "2", "--model.hidden_dim", "8",
    "--model.max_new_tokens", "8", "--data.dataset", "stemp", "--data.max_num_samples", "16",
    "--data.max_eval_samples", "4", "--data.batch_size", "8", "--data.seq_len", "128",
    "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
]  # fmt: skip


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model_dir("llama", tmp_path_factory.mktemp("tiny-cli"))


@pytest.fixture
def experiments(tmp_path, monkeypatch):
    monkeypatch.setenv("TJDNET_EXPERIMENTS", str(tmp_path / "experiments"))
    return tmp_path / "experiments"


def run(args: list[str], capsys) -> tuple[int, str, str]:
    try:
        main(args)
        code = 0
    except SystemExit as exit:
        code = exit.code
    out = capsys.readouterr()
    return code, out.out, out.err


def last_line(err: str) -> str:
    """The one-line error that ends stderr (library warnings may come before it)."""
    line = err.strip().splitlines()[-1]
    assert line.startswith("tjdnet: error: ")
    return line


def global_step(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=False)["global_step"]


def test_fit_resume_test_generate(model_dir, experiments, capsys):
    args = ["fit", "--model.model", model_dir, *FIT, "--run_name", "r"]
    assert run(args, capsys)[0] == 0
    run_dir = experiments / "r"
    for name in ("best.ckpt", "last.ckpt", "logs/metrics.csv"):
        assert (run_dir / name).is_file(), name
    assert global_step(run_dir / "last.ckpt") == 2
    # The checkpoint holds only what training changed (head + LoRA), not the frozen backbone.
    keys = torch.load(run_dir / "last.ckpt", weights_only=False)["state_dict"]
    assert keys and all(".head." in k or "lora_" in k for k in keys)

    # Same arguments, one more epoch: resumes from last.ckpt and the step counter continues.
    longer = list(args)
    longer[longer.index("--trainer.max_epochs") + 1] = "2"
    stale = run_dir / ".last.ckpt.killed.tmp"  # what a save killed with -9 leaves
    stale.write_bytes(b"partial")
    assert run(longer, capsys)[0] == 0
    assert global_step(run_dir / "last.ckpt") == 4
    assert not stale.exists()
    # The first run's metrics are kept; the resumed run logs beside them.
    assert (run_dir / "logs" / "metrics.csv").is_file() and (run_dir / "logs-1" / "metrics.csv").is_file()

    code, out, err = run(
        ["test", "--ckpt_path", str(run_dir / "best.ckpt"), "--gen_modes", "ar,speculative,draft,speculative_tree",
         "--tree_nodes", "5", "--data.max_num_samples", "3", "--max_new_tokens", "12"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert "speedup_vs_ar" in out
    payload = json.loads((run_dir / "test_results.json").read_text())
    for mode in ("ar", "speculative", "draft", "speculative_tree"):
        result = payload["results"][mode]
        for field in ("accuracy", "tau", "tokens_per_s", "speedup_vs_ar", "identical_to_ar", "acceptance_rate",
                      "per_position_acceptance", "forward_passes", "new_tokens"):  # fmt: skip
            assert field in result, (mode, field)
    assert payload["results"]["speculative"]["identical_to_ar"] == 1.0
    assert payload["results"]["speculative_tree"]["identical_to_ar"] == 1.0 and payload["args"]["tree_nodes"] == 5
    assert payload["results"]["ar"]["tau"] == 1.0
    assert payload["num_prompts"] == 3 and payload["machine"]["torch"]

    for mode, attention in (("speculative", "exact"), ("speculative_tree", "model")):
        code, out, err = run(
            ["generate", "--ckpt_path", str(run_dir / "best.ckpt"), "--prompt", "What is 3°C in Fahrenheit?",
             "--max_new_tokens", "6", "--gen_mode", mode, "--tree_nodes", "4", "--attention", attention],
            capsys,
        )  # fmt: skip
        assert code == 0, err
        assert f"[{mode}] 6 tokens" in out
    code, _, err = run(
        ["generate", "--ckpt_path", str(run_dir / "best.ckpt"), "--prompt", "x", "--attention", "fast"], capsys
    )
    assert code == 2 and "attention='fast' is not allowed; use one of auto, exact, model" in last_line(err)


def test_a_run_name_holding_other_settings_is_refused(model_dir, experiments, capsys):
    args = ["fit", "--model.model", model_dir, *FIT, "--run_name", "c"]
    assert run(args, capsys)[0] == 0
    last = experiments / "c" / "last.ckpt"
    before = last.read_bytes()
    for flag, value in (("--model.lr", "0.01"), ("--data.max_num_samples", "8"), ("--model.rank", "3")):
        changed = [*args, flag, value]
        code, _, err = run(changed, capsys)
        assert code == 2 and f"holds a run with {flag}" in last_line(err), err
    assert last.read_bytes() == before  # nothing overwritten


def test_truncated_checkpoint_is_a_clear_error(model_dir, experiments, capsys):
    assert run(["fit", "--model.model", model_dir, *FIT, "--run_name", "t"], capsys)[0] == 0
    ckpt = experiments / "t" / "best.ckpt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    code, _, err = run(["test", "--ckpt_path", str(ckpt)], capsys)
    assert code == 2
    assert "is truncated or corrupt" in last_line(err) and str(ckpt) in last_line(err)


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--data.dataset", "wikitext"], "unknown dataset 'wikitext'"),
        (["--data.dataset", "jsonl"], "needs --data.path"),
        (["--data.seq_len", "3"], "horizon=3 does not fit in seq_len=3"),
        (["--data.seq_len", "12"], "seq_len=12 leaves no room for the answer"),
        (["--model.model_head", "tucker"], "unknown head 'tucker'"),
        (["--model.draft_vocab_size", "0"], "draft_vocab_size=0 is not allowed; use an integer in 1.."),
    ],
)
def test_bad_fit_arguments(model_dir, experiments, capsys, extra, message):
    code, _, err = run(["fit", "--model.model", model_dir, *FIT, *extra], capsys)
    assert code == 2
    assert message in last_line(err)


def test_jsonl_line_without_fields_names_the_line(model_dir, experiments, tmp_path, capsys):
    data = tmp_path / "qa.jsonl"
    lines = [json.dumps({"question": f"q{i}", "answer": f"a #### {i}"}) for i in range(5)]
    lines.insert(3, json.dumps({"prompt": "oops"}))
    data.write_text("\n".join(lines) + "\n")
    code, _, err = run(["fit", "--model.model", model_dir, *FIT, "--data.dataset", "jsonl", "--data.path", str(data)],
                       capsys)  # fmt: skip
    assert code == 2
    assert "qa.jsonl:4:" in last_line(err)  # file:line of the bad line


def test_unknown_command_and_help(capsys):
    assert run(["train"], capsys)[0] == 2
    assert run(["--help"], capsys)[0] == 0


def test_main_py_is_the_same_command():
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, str(root / "main.py"), "--help"], capture_output=True, text=True, check=True)
    assert "usage: tjdnet" in out.stdout


def test_ddp_fit_on_cpu_then_test(model_dir, tmp_path):
    env = {**os.environ, "TJDNET_EXPERIMENTS": str(tmp_path / "experiments"), "HF_HUB_OFFLINE": "1"}
    fit = [sys.executable, "-m", "tjdnet.cli", "fit", "--model.model", model_dir, *FIT, "--run_name", "ddp",
           "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]  # fmt: skip
    done = subprocess.run(fit, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    ckpt = tmp_path / "experiments" / "ddp" / "best.ckpt"
    test = [sys.executable, "-m", "tjdnet.cli", "test", "--ckpt_path", str(ckpt), "--data.max_num_samples", "2",
            "--max_new_tokens", "6"]  # fmt: skip
    done = subprocess.run(test, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "experiments" / "ddp" / "test_results.json").is_file()


def test_selfdistill_regenerates_answers_with_the_base_model_once(model_dir, experiments, capsys):
    args = ["fit", "--model.model", model_dir, *FIT, "--data.dataset", "selfdistill", "--data.source", "stemp",
            "--data.distill_max_new_tokens", "6", "--model.train_mode", "head", "--model.token_conditioned", "true",
            "--run_name", "sd"]  # fmt: skip
    assert run(args, capsys)[0] == 0
    test = ["test", "--ckpt_path", str(experiments / "sd" / "best.ckpt"), "--data.max_num_samples", "2",
            "--max_new_tokens", "6"]  # fmt: skip
    assert run(test, capsys)[0] == 0
    results = json.loads((experiments / "sd" / "test_results.json").read_text())
    assert results["model"]["token_conditioned"] is True
    assert results["results"]["speculative"]["identical_to_ar"] == 1.0
    cached = list((experiments / "selfdistill").glob("selfdistill-*.jsonl"))
    assert len(cached) == 1
    rows = [json.loads(line) for line in cached[0].read_text().splitlines()]
    assert len(rows) == 16  # --data.max_num_samples questions, answered by the base model
    before = cached[0].stat().st_mtime
    args[args.index("--run_name") + 1] = "sd2"
    assert run(args, capsys)[0] == 0
    assert cached[0].stat().st_mtime == before  # the second fit reuses the cache


def test_fit_with_a_draft_vocab_saves_it_and_decodes_losslessly_from_it(model_dir, experiments, capsys):
    args = ["fit", "--model.model", model_dir, *FIT, "--model.train_mode", "head", "--model.draft_vocab_size", "24",
            "--run_name", "dv"]  # fmt: skip
    assert run(args, capsys)[0] == 0
    ckpt = experiments / "dv" / "best.ckpt"
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)["draft_vocab"]
    assert len(saved) == 24 and saved == sorted(saved)
    trained = load_trained(ckpt)
    assert trained.model.head.draft_vocab.ids.tolist() == saved
    test = ["test", "--ckpt_path", str(ckpt), "--data.max_num_samples", "2", "--max_new_tokens", "6",
            "--gen_modes", "ar,speculative,speculative_tree"]  # fmt: skip
    assert run(test, capsys)[0] == 0
    results = json.loads((experiments / "dv" / "test_results.json").read_text())["results"]
    assert results["speculative"]["identical_to_ar"] == 1.0 and results["speculative_tree"]["identical_to_ar"] == 1.0


def test_a_checkpoint_refuses_a_base_model_that_changed(experiments, tmp_path, capsys):
    base = save_tiny_model_dir("llama", tmp_path / "base")
    assert run(["fit", "--model.model", base, *FIT, "--run_name", "fp"], capsys)[0] == 0
    ckpt = experiments / "fp" / "best.ckpt"
    assert torch.load(ckpt, weights_only=False)["base_model"]["model"] == base
    save_tiny_model_dir("gpt2", tmp_path / "base")  # another architecture at the same path
    code, _, err = run(["test", "--ckpt_path", str(ckpt), "--data.max_num_samples", "1"], capsys)
    assert code == 2 and "was trained on" in last_line(err) and "not on this" in last_line(err)


def test_the_seed_check_config_fits_and_tests_every_mode_on_the_same_answers(model_dir, experiments, capsys):
    config = Path(__file__).resolve().parents[2] / "configs" / "seed_check.yaml"
    args = ["fit", "--config", str(config), "--model.model", model_dir, "--model.hidden_dim", "8",
            "--model.lora_layers", "1", "--model.max_new_tokens", "4", "--data.max_num_samples", "8",
            "--data.max_eval_samples", "2", "--data.seq_len", "128", "--test.max_num_samples", "3",
            "--test.max_new_tokens", "6", "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false"]  # fmt: skip
    code, out, err = run(args, capsys)
    assert code == 0, err
    payload = json.loads((experiments / "seed-check" / "test_results.json").read_text())
    assert payload["model"]["model_head"] == "cp" and payload["model"]["rank"] == 2
    assert payload["model"]["horizon"] == 2
    results = payload["results"]
    assert list(results) == ["ar", "draft", "draft_anchored", "speculative"]
    for mode, result in results.items():  # every mode scored on the same 3 parsed answers
        assert result["scored"] == 3 and 0.0 <= result["accuracy"] <= 1.0, mode
    assert 1.0 < results["draft"]["tau"] <= 2.0 and results["speculative"]["identical_to_ar"] == 1.0
