"""``tjdnet bench-plot``: PNGs that open, from bench and bench-heads JSON."""

import json

import matplotlib.image
import pytest

from tjdnet.cli import main
from tjdnet.commands.bench_heads import run_bench_heads
from tjdnet.commands.bench_plot import make_plots


def _bench_payload(horizon: int, rank: int, speedup: float) -> dict:
    result = {"tau": 1.5, "speedup_vs_ar": speedup, "decode_tokens_per_s": 10.0 * speedup, "accuracy": 0.5}
    return {
        "model": {"model_head": "cp", "rank": rank, "horizon": horizon},
        "args": {"horizon": None, "batch_size": 1},
        "results": {"ar": {**result, "tau": 1.0, "speedup_vs_ar": 1.0}, "speculative": result, "draft": result},
    }


def test_plots_open(tmp_path):
    files = []
    for i, (horizon, rank) in enumerate([(2, 1), (4, 1), (4, 2)]):
        files.append(tmp_path / f"results{i}.json")
        files[-1].write_text(json.dumps(_bench_payload(horizon, rank, 1.0 + 0.1 * i)))
    heads = run_bench_heads(heads="cp,mps", ranks="1,2", horizons="2", vocab=32, hidden=8, batch=1, seq_len=4,
                            iters=1, chunking="", out=tmp_path / "heads.json", isolate=False)  # fmt: skip
    assert len(heads["configs"]) == 4
    main(["bench-plot", *map(str, files), str(tmp_path / "heads.json"), "--out_dir", str(tmp_path / "plots")])
    pngs = sorted((tmp_path / "plots").glob("*.png"))
    assert [p.name for p in pngs] == ["accuracy_vs_speed.png", "head_costs.png", "speedup_tau_vs_horizon.png"]
    for png in pngs:
        image = matplotlib.image.imread(png)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_unknown_json_is_a_value_error(tmp_path):
    bad = tmp_path / "other.json"
    bad.write_text(json.dumps({"hello": 1}))
    with pytest.raises(ValueError, match="neither"):
        make_plots([bad], tmp_path)
    with pytest.raises(FileNotFoundError):
        make_plots([tmp_path / "missing.json"], tmp_path)
