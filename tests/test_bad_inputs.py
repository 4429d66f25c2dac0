"""Bad input anywhere is one line ``tjdnet: error: ...`` (no traceback), a non-zero exit, and no file written."""

import os

import pytest
from tiny_models import save_tiny_model_dir

from tjdnet.cli import main
from tjdnet.commands.options import DecodingOptions
from tjdnet.config import TJDConfig
from tjdnet.model import TJDModel

TINY = "{tiny}"  # replaced by the tiny model directory
FIT = ["fit", "--model.model", TINY, "--model.hidden_dim", "8", "--data.max_num_samples", "8",
       "--data.max_eval_samples", "2", "--data.seq_len", "128", "--trainer.enable_progress_bar", "false"]  # fmt: skip

CASES = [
    # fit: settings
    (FIT + ["--model.horizon", "0"], "horizon=0 is not allowed"),
    (FIT + ["--model.rank", "0"], "rank=0 is not allowed"),
    (FIT + ["--model.horizon", "-2"], "horizon=-2 is not allowed"),
    (FIT + ["--model.model_head", "tucker"], "unknown head 'tucker'"),
    (FIT + ["--model.train_mode", "adapters"], "unknown train_mode 'adapters'"),
    (FIT + ["--model.loss_mode", "both"], "unknown loss_mode 'both'"),
    (FIT + ["--model.lr", "0"], "lr=0.0 is not allowed"),
    (FIT + ["--model.lora_rank", "0"], "lora_rank=0 is not allowed"),
    (FIT + ["--model.lora_dropout", "1.5"], "lora_dropout=1.5 is not allowed"),
    (FIT + ["--model.dtype", "float8"], "dtype='float8' is not allowed"),
    (FIT + ["--model.draft_vocab_size", "0"], "draft_vocab_size=0 is not allowed"),
    (FIT + ["--model.horizon", "1", "--model.token_conditioned", "true"], "token_conditioned is not allowed"),
    (FIT + ["--model.horizon", "abc"], "--model.horizon: expected int, got 'abc'"),
    (FIT + ["--model.lr", "fast"], "--model.lr: expected float, got 'fast'"),
    (FIT + ["--bogus", "1"], "unrecognized arguments: --bogus"),
    # fit: data and model
    (FIT + ["--data.dataset", "nope"], "unknown dataset 'nope'"),
    (FIT + ["--data.dataset", "jsonl"], "needs --data.path"),
    (FIT + ["--data.dataset", "jsonl", "--data.path", "/no/such/file.jsonl"], "does not exist"),
    (FIT + ["--data.dataset", "jsonl", "--data.path", "{empty}"], "holds no training examples"),
    (FIT + ["--data.seq_len", "3"], "does not fit in seq_len=3"),
    (["fit", "--model.model", "/no/such/model"], "is not a model directory"),
    # test
    (["test", "--ckpt_path", "/no/such.ckpt"], "checkpoint /no/such.ckpt does not exist"),
    (["test", "--ckpt_path", "{garbage}"], "is truncated or corrupt"),
    (["test", "--ckpt_path", "x.ckpt", "--gen_modes", "ar,turbo"], "unknown gen_mode 'turbo'"),
    (["test", "--ckpt_path", "x.ckpt", "--gen_modes", ""], "--gen_modes is empty"),
    (["test", "--ckpt_path", "x.ckpt", "--batch_size", "0"], "batch_size=0 is not allowed"),
    (["test", "--ckpt_path", "x.ckpt", "--max_new_tokens", "abc"], "--max_new_tokens: expected int, got 'abc'"),
    (["test", "--ckpt_path", "x.ckpt", "--num_threads", "-1"], "num_threads=-1 is not allowed"),
    (["test", "--ckpt_path", "x.ckpt", "--attention", "fast"], "attention='fast' is not allowed"),
    (["test", "--ckpt_path", "x.ckpt", "--dtype", "float8"], "dtype='float8' is not allowed"),
    (["test", "--ckpt_path", "{garbage}", "--out", "{tmp}"], "is a directory"),
    # bench
    (["bench"], "give exactly one of --ckpt_path"),
    (["bench", "--ckpt_path", "x.ckpt", "--model", TINY], "give exactly one of --ckpt_path"),
    (["bench", "--model", TINY, "--gen_modes", "ar,speculative"], "needs a trained joint head"),
    (["bench", "--model", TINY, "--repeats", "0"], "repeats=0 is not allowed"),
    (["bench", "--model", TINY, "--warmup", "-1"], "warmup=-1 is not allowed"),
    (["bench", "--model", TINY, "--tree_temperature", "0"], "tree_temperature=0.0 is not allowed; use a number > 0"),
    (["bench", "--model", TINY, "--tree_lookup", "-2"], "tree_lookup=-2 is not allowed; use an integer >= 0"),
    (["bench", "--model", TINY, "--data.max_num_samples", "3"], "takes --num_prompts"),
    (["bench", "--model", TINY, "--data.dataset", "nope"], "unknown dataset 'nope'"),
    # generate
    (["generate", "--prompt", "hi", "--ckpt_path", "x.ckpt", "--model", TINY], "not both"),
    (["generate", "--prompt", "hi", "--gen_mode", "beam"], "unknown gen_mode 'beam'"),
    (["generate", "--prompt", "hi", "--max_new_tokens", "0"], "max_new_tokens=0 is not allowed"),
    (["generate"], "prompt"),
    # devices
    (["test", "--ckpt_path", "x.ckpt", "--device", "tpu"], "device='tpu' is not allowed"),
    (["generate", "--prompt", "hi", "--device", "cuda:x"], "device='cuda:x' is not allowed"),
    # the command itself
    (["frobnicate"], "unknown command 'frobnicate'"),
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return save_tiny_model_dir("llama", tmp_path_factory.mktemp("bad-inputs-tiny"))


def files_under(path) -> set[str]:
    return {os.path.join(d, f) for d, _, names in os.walk(path) for f in names}


@pytest.mark.parametrize("args,message", CASES, ids=[" ".join(a[:1] + a[-2:]) for a, _ in CASES])
def test_bad_input_is_one_line_and_writes_nothing(args, message, tiny, tmp_path, monkeypatch, capsys):
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "garbage.ckpt").write_bytes(b"not a checkpoint")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("TJDNET_EXPERIMENTS", str(work / "experiments"))
    names = {"tiny": tiny, "empty": str(tmp_path / "empty.jsonl"), "garbage": str(tmp_path / "garbage.ckpt")}
    names["tmp"] = str(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main([a.format(**names) for a in args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("tjdnet: error: ") and message in line, err
    assert files_under(work) - files_under(work / "experiments" / "selfdistill") == set()


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: TJDConfig(horizon=0), "horizon=0 is not allowed"),
        (lambda: TJDConfig(model_head="cp", rank=0), "rank=0 is not allowed"),
        (lambda: TJDConfig(lora_rank=-1), "lora_rank=-1 is not allowed"),
        (lambda: TJDConfig.from_json({"model": "m", "heads": "cp"}), "unknown TJDConfig settings heads"),
        (lambda: DecodingOptions(tree_topk=0), "tree_topk=0 is not allowed"),
        (lambda: DecodingOptions(tree_temperature=-1.0), "tree_temperature=-1.0 is not allowed; use a number > 0"),
        (lambda: DecodingOptions(tree_lookup=-1), "tree_lookup=-1 is not allowed; use an integer >= 0"),
        (lambda: TJDModel.from_base("/no/such/model"), "is not a model directory"),
        (lambda: TJDModel.from_pretrained("/no/such/head"), "is not a saved TJDModel"),
    ],
)
def test_bad_python_api_input_is_a_one_line_error(make, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message) as error:
        make()
    assert "\n" not in str(error.value)


def test_fit_refuses_an_unwritable_run_directory_before_loading(tiny, tmp_path, monkeypatch, capsys):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("TJDNET_EXPERIMENTS", str(tmp_path / "file" / "experiments"))  # under a file
    with pytest.raises(SystemExit) as exit_info:
        main([a.format(tiny=tiny) for a in FIT])
    assert exit_info.value.code == 2
    assert "is not a writable directory" in capsys.readouterr().err.strip().splitlines()[-1]
