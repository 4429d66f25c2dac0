"""``tjdnet distill`` and ``tjdnet fit-heads`` on a tiny model: cached, resumable, refusing bad input in one line,
and the heads they train decode losslessly."""

import json
from pathlib import Path

import pytest
import torch

from tjdnet.checkpoints import load_trained
from tjdnet.cli import main
from tjdnet.commands import distill as distill_command
from tjdnet.commands.bench import run_bench
from tjdnet.commands.distill import run_distill
from tjdnet.model import TJDModel
from tjdnet.training.fit_heads import parse_head_specs, run_fit_heads


def distill(tiny_model_dir, tmp_path, **kwargs):
    options = dict(
        model=tiny_model_dir, source="stemp", num_questions=6, max_new_tokens=8, batch_size=4, dtype="float32"
    )
    return run_distill(str(tmp_path / "d.jsonl"), cache_dir=str(tmp_path / "cache"), **{**options, **kwargs})


def rows(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


class CountingAnswerer:
    """Wraps the real teacher; counts its batches and can fail at the n-th one (a killed run)."""

    def __init__(self, fail_at: int | None = None):
        self.batches, self.fail_at = 0, fail_at

    def __call__(self, *args, **kwargs):
        answer = distill_command_answerer(*args, **kwargs)

        def counted(questions):
            if self.fail_at is not None and self.batches == self.fail_at:
                raise KeyboardInterrupt
            self.batches += 1
            return answer(questions)

        return counted


distill_command_answerer = distill_command.base_model_answerer


def test_distill_writes_the_models_answers_and_reads_them_back_from_its_cache(tiny_model_dir, tmp_path, monkeypatch):
    counter = CountingAnswerer()
    monkeypatch.setattr(distill_command, "base_model_answerer", counter)
    summary = distill(tiny_model_dir, tmp_path)
    written = rows(tmp_path / "d.jsonl")
    assert summary["rows"] == len(written) == 6 and counter.batches == 2
    assert all(set(r) == {"question", "answer"} and isinstance(r["answer"], str) for r in written)
    assert json.loads((tmp_path / "d.jsonl.json").read_text())["rows"] == 6
    distill(tiny_model_dir, tmp_path)  # the same settings: read back, nothing generated
    assert counter.batches == 2 and rows(tmp_path / "d.jsonl") == written
    distill(tiny_model_dir, tmp_path, max_new_tokens=4)  # any other setting is another cache entry
    assert counter.batches == 4
    assert len(list((tmp_path / "cache").glob("selfdistill-*.jsonl"))) == 2


def test_an_interrupted_distillation_resumes_after_the_last_whole_batch(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(distill_command, "base_model_answerer", CountingAnswerer(fail_at=1))
    with pytest.raises(KeyboardInterrupt):
        distill(tiny_model_dir, tmp_path)
    assert not (tmp_path / "d.jsonl").exists()
    counter = CountingAnswerer()
    monkeypatch.setattr(distill_command, "base_model_answerer", counter)
    distill(tiny_model_dir, tmp_path)
    assert counter.batches == 1  # the first batch of 4 came from the partial cache
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    distill(tiny_model_dir, fresh)
    assert rows(tmp_path / "d.jsonl") == rows(fresh / "d.jsonl")


@pytest.mark.parametrize(
    "args,message",
    [
        (["--source", "none"], "nothing to distil"),
        (["--source", "wikipedia"], "unknown dataset 'wikipedia'"),
        (["--source", "none", "--chat_prompts", "4"], "chat template"),
        (["--source", "jsonl"], "needs a path"),
        (["--batch_size", "0"], "batch_size=0"),
        (["--dtype", "float8"], "dtype='float8'"),
    ],
)
def test_bad_distill_inputs_are_one_line_errors(tiny_model_dir, tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["distill", "--out", str(tmp_path / "x.jsonl"), "--model", tiny_model_dir, "--num_questions", "2", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and err[-1].startswith("tjdnet: error:") and message in err[-1]
    assert "Traceback" not in "\n".join(err) and not (tmp_path / "x.jsonl").exists()


def test_fit_heads_trains_every_head_on_the_same_data_and_each_decodes_losslessly(tiny_model_dir, tmp_path):
    distill(tiny_model_dir, tmp_path, num_questions=24, max_new_tokens=16)
    torch.manual_seed(0)
    summary = run_fit_heads(
        str(tmp_path / "d.jsonl"), heads="eagle:1:3:w16:lr1e-2,medusa:1:3,mps:2:3:tc", out_dir=str(tmp_path / "heads"),
        model=tiny_model_dir, steps=4, batch_positions=16, hidden_dim=8, draft_vocab=40, held_out=8,
        feature_dtype="float32",
    )  # fmt: skip
    assert set(summary["heads"]) == {"eagle_r1_h3", "medusa_r1_h3", "mps_r2_h3_tc"}
    prompts = torch.tensor([[5, 17, 33, 8, 9]])
    for name, info in summary["heads"].items():
        assert info["held_out_nll_after"] < info["held_out_nll_before"], name
        trained = load_trained(tmp_path / "heads" / name)
        assert trained.model.head.draft_vocab is not None and trained.model.head.draft_vocab.size == 40
        ar = trained.model.generate(prompts, gen_mode="ar", max_new_tokens=12)
        for kwargs in ({}, {"tree_nodes": 5}):
            spec = trained.model.generate(prompts, gen_mode="speculative", max_new_tokens=12, **kwargs)
            assert spec.new_tokens == ar.new_tokens, (name, kwargs)
    heads = tmp_path / "heads"
    payload = run_bench(
        ckpt_path=str(heads / "eagle_r1_h3"), compare=f"{heads / 'medusa_r1_h3'},{heads / 'mps_r2_h3_tc'}",
        gen_modes="ar,speculative,speculative_tree", num_prompts=2, repeats=1, warmup=0, max_new_tokens=8,
        data={"dataset": "stemp"}, out=str(tmp_path / "bench.json"),
    )  # fmt: skip
    names = {"ar", "speculative", "speculative_tree", "speculative@medusa_r1_h3", "speculative_tree@mps_r2_h3_tc"}
    assert names <= set(payload["results"])
    assert all(r["identical_to_ar"] == 1.0 for r in payload["results"].values())


def test_compare_refuses_a_head_that_changed_its_backbone(tiny_model_dir, tmp_path):
    lora, tokenizer = TJDModel.from_base(tiny_model_dir, model_head="cp", horizon=2, train_mode="lora")
    lora.save_pretrained(tmp_path / "lora", tokenizer)
    head, _ = TJDModel.from_base(tiny_model_dir, model_head="cp", horizon=2, train_mode="head")
    head.save_pretrained(tmp_path / "head", tokenizer)
    options = dict(data={"dataset": "stemp"}, num_prompts=1, out=str(tmp_path / "b.json"))
    with pytest.raises(ValueError, match="train_mode=lora; it cannot share a backbone"):
        run_bench(ckpt_path=str(tmp_path / "head"), compare=str(tmp_path / "lora"), **options)
    with pytest.raises(ValueError, match="needs --ckpt_path"):
        run_bench(model=tiny_model_dir, compare=str(tmp_path / "head"), **options)
    with pytest.raises(ValueError, match="a directory name of its own"):
        run_bench(ckpt_path=str(tmp_path / "head"), compare=str(tmp_path / "head"), **options)


@pytest.mark.parametrize(
    "value,message",
    [
        ("eagle:1", "is not head:rank:horizon"),
        ("eagle:1:4:wide", "is not head:rank:horizon"),
        ("eagle:1:4:lrfast", "is not head:rank:horizon"),
        ("eagle:1:4:lr-1", "is not head:rank:horizon"),
        ("eagle:2:4", "rank=2 is not allowed for the eagle head"),
        ("tucker:1:4", "unknown head 'tucker'"),
        ("cp:2:4,cp:2:4", "names a head twice"),
    ],
)
def test_bad_head_specs(value, message):
    assert parse_head_specs("eagle:1:4:lr5e-4:w32", 64, 1e-3)[0].lr == 5e-4
    with pytest.raises(ValueError, match=message):
        parse_head_specs(value, 64, 1e-3)


def test_distill_answers_the_first_user_turns_of_sharegpt_conversations(tiny_model_dir, tmp_path):
    sharegpt = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "sharegpt_sample"
    if not sharegpt.is_dir():
        pytest.skip("../shared/data/sharegpt_sample is not here")
    summary = distill(tiny_model_dir, tmp_path, source="sharegpt", path=str(sharegpt), num_questions=3)
    written = rows(tmp_path / "d.jsonl")
    assert summary["rows"] == len(written) == 3 and all(r["question"] for r in written)


def test_fit_heads_reads_several_sources_and_learns_the_backbones_own_tokens(tiny_model_dir, tmp_path):
    distill(tiny_model_dir, tmp_path, num_questions=12, max_new_tokens=12)
    text = tmp_path / "text.jsonl"  # written answers, not the model's: the backbone supplies the targets
    text.write_text(
        "".join(json.dumps({"question": f"q{i} 3 4", "answer": f"{i} 5 6 7 8 9 1 2"}) + "\n" for i in range(8))
    )
    options = dict(
        heads="eagle:1:3:w16:lr1e-2", model=tiny_model_dir, steps=4, batch_positions=16, hidden_dim=8,
        draft_vocab=None, held_out=8, feature_dtype="float32",
    )  # fmt: skip
    summary = run_fit_heads(
        f"{tmp_path / 'd.jsonl'},jsonl={text}", out_dir=str(tmp_path / "h"), targets="model", feature_loss=1.0,
        teacher_loss=1.0, compute_dtype="bfloat16", **options,
    )  # fmt: skip
    assert summary["examples"] == 12 + 8 and summary["targets"] == "model"
    info = summary["heads"]["eagle_r1_h3"]
    assert info["feature_loss"] == info["teacher_loss"] == 1.0 and info["compute_dtype"] == "bfloat16"
    assert info["held_out_nll_after"] < info["held_out_nll_before"]
    trained = load_trained(tmp_path / "h" / "eagle_r1_h3")
    prompts = torch.tensor([[5, 17, 33, 8, 9]])
    ar = trained.model.generate(prompts, gen_mode="ar", max_new_tokens=12)
    assert trained.model.generate(prompts, gen_mode="speculative", max_new_tokens=12, tree_nodes=5).new_tokens == (
        ar.new_tokens
    )
    for data, targets, error, message in [
        (f"{text},mystery={text}", "data", ValueError, "unknown dataset 'mystery'"),
        (f"{text},{tmp_path / 'absent.jsonl'}", "data", FileNotFoundError, "absent.jsonl"),
        (str(text), "teacher", ValueError, "targets='teacher' is not allowed"),
    ]:
        with pytest.raises(error, match=message):
            run_fit_heads(data, out_dir=str(tmp_path / "bad"), targets=targets, **options)
    with pytest.raises(ValueError, match="compute_dtype='fp8' is not allowed"):
        run_fit_heads(str(text), out_dir=str(tmp_path / "bad"), compute_dtype="fp8", **options)
    with pytest.raises(ValueError, match="teacher_loss=1 is for eagle heads"):
        run_fit_heads(str(text), out_dir=str(tmp_path / "bad"), **{**options, "heads": "medusa:1:3"}, teacher_loss=1)


def test_fit_heads_reuses_cached_features_keyed_by_data_and_settings(tiny_model_dir, tmp_path, monkeypatch):
    from tjdnet.training import fit_heads

    distill(tiny_model_dir, tmp_path, num_questions=8, max_new_tokens=10)
    passes = []
    collect = fit_heads.collect_features
    monkeypatch.setattr(fit_heads, "collect_features", lambda *a, **k: passes.append(k["targets"]) or collect(*a, **k))
    options = dict(
        model=tiny_model_dir, steps=2, batch_positions=8, hidden_dim=8, draft_vocab=None, held_out=4,
        feature_dtype="float32", features_cache=str(tmp_path / "features"),
    )  # fmt: skip
    data = str(tmp_path / "d.jsonl")
    first = run_fit_heads(data, heads="medusa:1:3", out_dir=str(tmp_path / "a"), **options)
    again = run_fit_heads(data, heads="medusa:1:3", out_dir=str(tmp_path / "b"), **options)
    assert passes == ["data"] and len(list((tmp_path / "features").glob("features-*.pt"))) == 1
    assert again["heads"]["medusa_r1_h3"]["held_out_nll_after"] == first["heads"]["medusa_r1_h3"]["held_out_nll_after"]
    run_fit_heads(data, heads="medusa:1:3", out_dir=str(tmp_path / "c"), targets="model", **options)
    run_fit_heads(data, heads="medusa:1:2", out_dir=str(tmp_path / "d"), **options)  # another horizon
    assert passes == ["data", "model", "data"] and len(list((tmp_path / "features").glob("*.pt"))) == 3
    text = tmp_path / "text.jsonl"
    text.write_text("".join(json.dumps({"question": f"q{i} 3", "answer": f"{i} 5 6 7 8"}) + "\n" for i in range(6)))
    both = run_fit_heads(f"{data},jsonl={text}", heads="medusa:1:3", out_dir=str(tmp_path / "e"), **options)
    assert passes == ["data", "model", "data", "data"]  # the distilled rows' features came from the cache
    assert both["examples"] == 8 + 6 and len(list((tmp_path / "features").glob("*.pt"))) == 4
