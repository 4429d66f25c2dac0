"""``tjdnet test``: the whole split unless told, the output path checked first, earlier results kept, partial
results written after Ctrl-C."""

import json
import os

import pytest
import torch

from tjdnet.commands.test import run_test
from tjdnet.evaluation import engine
from tjdnet.files import write_json

FAST = {"gen_modes": "ar,speculative", "max_new_tokens": 3, "num_threads": 1}


@pytest.fixture(autouse=True)
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_test_uses_the_whole_test_split_not_the_training_sample_size(tiny_ckpt, tmp_path):
    # The checkpoint was fitted with --data.max_num_samples 16; stemp's test split has 100 questions.
    payload = run_test(tiny_ckpt, out=str(tmp_path / "all.json"), batch_size=50, **FAST)
    assert payload["num_prompts"] == 100 and payload["results"]["ar"]["scored"] == 100
    assert "max_num_samples" not in payload["args"]["data"]
    assert run_test(tiny_ckpt, out=str(tmp_path / "two.json"), data={"max_num_samples": 2}, **FAST)["num_prompts"] == 2


def test_an_empty_test_file_is_an_error(tiny_ckpt, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="has no examples to test"):
        run_test(tiny_ckpt, out=str(tmp_path / "x.json"), data={"dataset": "jsonl", "path": str(empty)}, **FAST)
    assert not (tmp_path / "x.json").exists()


@pytest.mark.parametrize("bad", ["dir", "under_a_file", "read_only"])
def test_a_bad_output_path_is_refused_before_the_evaluation(tiny_ckpt, tmp_path, monkeypatch, bad):
    def never(*args, **kwargs):
        raise AssertionError("the evaluation ran")

    monkeypatch.setattr("tjdnet.commands.test.run_modes", never)
    if bad == "dir":
        out = tmp_path
    elif bad == "under_a_file":
        (tmp_path / "file").write_text("")
        out = tmp_path / "file" / "r.json"
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        out = locked / "r.json"
        if os.access(locked, os.W_OK):  # root ignores permissions
            pytest.skip("running as a user who can write anywhere")
    with pytest.raises(ValueError, match="is a directory|cannot write"):
        run_test(tiny_ckpt, out=str(out), **FAST)


def test_earlier_results_are_kept(tiny_ckpt):
    default = tiny_ckpt.parent / "test_results.json"
    write_json(default, {"earlier": True})
    run_test(tiny_ckpt, data={"max_num_samples": 1}, **FAST)
    assert json.loads(default.read_text())["num_prompts"] == 1
    kept = sorted(tiny_ckpt.parent.glob("test_results.*.json"))
    assert kept and json.loads(kept[-1].read_text()) == {"earlier": True}


def test_ctrl_c_writes_the_prompts_finished(tiny_ckpt, tmp_path, monkeypatch):
    real = engine.timed_call
    calls = []

    def interrupt_on_the_fifth_call(*args):
        calls.append(1)
        if len(calls) == 5:  # batches of 1 prompt, 2 modes: prompts 1 and 2 are done
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(engine, "timed_call", interrupt_on_the_fifth_call)
    out = tmp_path / "partial.json"
    with pytest.raises(KeyboardInterrupt):
        run_test(tiny_ckpt, out=str(out), data={"max_num_samples": 4}, **FAST)
    payload = json.loads(out.read_text())
    assert payload["interrupted"] is True and payload["num_prompts"] == 2
    assert payload["results"]["ar"]["scored"] == 2
    assert payload["results"]["speculative"]["identical_to_ar"] == 1.0


def test_sigint_in_a_real_process_writes_partial_results(tiny_ckpt, tmp_path):
    import signal
    import subprocess
    import sys

    out = tmp_path / "sigint.json"
    command = [sys.executable, "-m", "tjdnet.cli", "test", "--ckpt_path", str(tiny_ckpt), "--out", str(out),
               "--max_new_tokens", "48", "--num_threads", "1"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    # A shell starting the suite in the background (`cmd &`) leaves SIGINT ignored, and Python then installs no
    # KeyboardInterrupt handler in the child: give the child the default disposition, as a terminal would.
    process = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    for line in process.stderr:
        if "repeat 1/1: 2/100 prompts" in line:
            process.send_signal(signal.SIGINT)
            break
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr and stderr.strip().endswith("tjdnet: interrupted")
    payload = json.loads(out.read_text())
    assert payload["interrupted"] is True and 2 <= payload["num_prompts"] < 100
    assert f"interrupted: results of the {payload['num_prompts']} prompts finished written to {out}" in stdout
