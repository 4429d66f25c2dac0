"""``tjdnet bench`` on a tiny trained checkpoint: every field, sane values, interleaved baselines."""

import json

import pytest
import torch

from tjdnet.cli import main
from tjdnet.commands.bench import BENCH_MODES, parse_bench_modes, run_bench, run_bench_cli

MODE_FIELDS = (
    "new_tokens",
    "forward_passes",
    "tau",
    "acceptance_rate",
    "per_position_acceptance",
    "decode_time_s",
    "prefill_time_s",
    "tokens_per_s",
    "decode_tokens_per_s",
    "decode_ms_per_step",
    "draft_ms_per_step",
    "speedup_vs_ar",
    "speedup_vs_hf_generate",
    "identical_to_ar",
    "accuracy",
)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls on a shared CPU: more threads only spin
    yield
    torch.set_num_threads(threads)


def test_bench_cli_writes_every_field(tiny_ckpt, tmp_path):
    out = tmp_path / "bench.json"
    run_bench_cli(
        ["--ckpt_path", str(tiny_ckpt), "--gen_modes", ",".join(BENCH_MODES), "--num_prompts", "2",
         "--max_new_tokens", "8", "--repeats", "2", "--warmup", "1", "--num_threads", "1", "--out", str(out)]
    )  # fmt: skip
    payload = json.loads(out.read_text())
    assert payload["args"]["num_prompts"] == 2 and payload["args"]["repeats"] == 2
    assert payload["machine"]["threads"] == 1 and payload["dataset"] == "stemp"
    assert payload["attention"] == ("exact" if payload["dtype"] in ("bfloat16", "float16") else "sdpa")
    assert payload["args"]["draft_weights"] == "auto" and payload["draft_weights"] in ("int8", "model")
    assert set(payload["results"]) == set(BENCH_MODES) and payload["skipped"] == {}
    (costs,) = payload["pass_costs"]  # measured once, for speculative_tree_auto at batch 1
    assert costs["batch"] == 1 and len(costs["ms"]) == costs["max_tokens"] and min(costs["ms"]) > 0
    for mode, result in payload["results"].items():
        assert all(field in result for field in MODE_FIELDS), mode
        assert result["tau"] >= 1.0, mode
        assert 0 < result["new_tokens"] <= 2 * 8
        assert len(result["decode_time_s"]["runs"]) == 2
        assert result["decode_time_s"]["min"] <= result["decode_time_s"]["median"] <= result["decode_time_s"]["max"]
        assert result["tokens_per_s"] > 0 and 0.0 <= result["accuracy"] <= 1.0
    results = payload["results"]
    # Lossless modes reproduce greedy decoding token for token; the transformers baseline is the same model.
    for mode in ("ar", "speculative", "speculative_tree", "speculative_tree_auto", "hf_generate", "prompt_lookup"):
        assert results[mode]["identical_to_ar"] == 1.0, mode
    # One backbone pass per token for plain decoding, counted by the hook for ours and transformers' alike.
    for mode in ("ar", "hf_generate"):
        assert results[mode]["forward_passes"] == results[mode]["new_tokens"] and results[mode]["tau"] == 1.0
    assert results["ar"]["speedup_vs_ar"] == 1.0 and results["hf_generate"]["speedup_vs_hf_generate"] == 1.0
    # Draft mode emits H = 3 tokens per pass until the 8-token budget: 1 + 3 + 3 + 1 -> 4 passes per prompt.
    assert results["draft"]["forward_passes"] == 2 * 3 and results["draft"]["tau"] == pytest.approx(16 / 6)
    spec = results["speculative"]
    assert 0.0 <= spec["acceptance_rate"] <= 1.0 and len(spec["per_position_acceptance"]) == 2
    # A step's time and its drafting share: our modes time their own steps; transformers' report none.
    for mode in ("speculative", "speculative_tree", "speculative_tree_auto", "draft"):
        assert 0 < results[mode]["draft_ms_per_step"] < results[mode]["decode_ms_per_step"], mode
    assert results["ar"]["draft_ms_per_step"] is None and results["ar"]["decode_ms_per_step"] > 0
    assert results["hf_generate"]["decode_ms_per_step"] is None


def test_batched_bench_skips_prompt_lookup_with_a_reason(tiny_ckpt, tmp_path):
    payload = run_bench(
        ckpt_path=str(tiny_ckpt),
        gen_modes="ar,speculative,hf_generate,prompt_lookup",
        num_prompts=3,
        max_new_tokens=6,
        batch_size=2,
        repeats=1,
        warmup=0,
        out=tmp_path / "b.json",
    )
    assert set(payload["results"]) == {"ar", "speculative", "hf_generate"}
    assert "batch size 1" in payload["skipped"]["prompt_lookup"]
    assert payload["results"]["speculative"]["identical_to_ar"] == 1.0


def test_base_model_without_checkpoint(tiny_model_dir, tmp_path):
    payload = run_bench(
        model=tiny_model_dir, gen_modes="ar,hf_generate", num_prompts=1, max_new_tokens=4, repeats=1, warmup=0,
        out=tmp_path / "m.json",
    )  # fmt: skip
    assert payload["checkpoint"] is None and payload["model"]["model_head"] == "stp"
    assert payload["results"]["hf_generate"]["identical_to_ar"] == 1.0
    with pytest.raises(ValueError, match="needs a trained joint head"):
        run_bench(model=tiny_model_dir, gen_modes="ar,speculative", out=tmp_path / "x.json")


def test_save_pretrained_directory_benches_like_a_checkpoint(tiny_model_dir, tmp_path):
    from tjdnet.model import TJDModel

    model, _ = TJDModel.from_base(
        tiny_model_dir, model_head="mps", horizon=3, rank=2, hidden_dim=8, train_mode="head", loss_mode="draft"
    )
    model.save_pretrained(tmp_path / "head")
    payload = run_bench(
        ckpt_path=str(tmp_path / "head"), gen_modes="ar,speculative", num_prompts=2, max_new_tokens=6, repeats=1,
        warmup=0, out=tmp_path / "h.json",
    )  # fmt: skip
    assert payload["model"]["model_head"] == "mps" and payload["model"]["rank"] == 2
    assert payload["results"]["speculative"]["identical_to_ar"] == 1.0
    assert payload["results"]["speculative"]["tau"] >= 1.0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"gen_modes": "ar,turbo"}, "unknown gen_mode 'turbo'"),
        ({"gen_modes": ""}, "--gen_modes is empty"),
        ({"num_prompts": 0}, "num_prompts=0"),
        ({"repeats": 0}, "repeats=0"),
        ({"batch_size": -1}, "batch_size=-1"),
        ({"data": {"dataset": "nope"}}, "unknown dataset 'nope'"),
        ({"ckpt_path": None}, "exactly one of --ckpt_path"),
    ],
)
def test_bad_input_is_a_one_line_value_error(tiny_ckpt, tmp_path, overrides, message):
    kwargs = {"ckpt_path": str(tiny_ckpt), "out": tmp_path / "never.json", **overrides}
    with pytest.raises(ValueError, match=message) as error:
        run_bench(**kwargs)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "never.json").exists()


def test_cli_reports_bad_mode_in_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--model", "unused", "--gen_modes", "ar,bogus"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tjdnet: error: unknown gen_mode 'bogus'") and "\n" not in err


def test_parse_bench_modes_rejects_duplicates():
    assert parse_bench_modes("ar, speculative") == ["ar", "speculative"]
    with pytest.raises(ValueError, match="twice"):
        parse_bench_modes("ar,ar")
