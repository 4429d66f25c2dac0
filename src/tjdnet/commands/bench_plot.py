"""Figures (PNG, matplotlib Agg) from the JSON written by ``tjdnet bench`` and ``tjdnet bench-heads``.

``tjdnet bench-plot results*.json heads.json --out_dir DIR`` sorts the files by kind (a bench result has
``results``, a heads result has ``configs``) and draws every figure it has the data for.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from jsonargparse import ArgumentParser  # noqa: E402

logger = logging.getLogger(__name__)

MEASURED_MODES = ("speculative", "speculative_tree", "speculative_tree_auto")  # chain and tree drafts, a line each
MODE_SUFFIX = {"speculative_tree": " tree", "speculative_tree_auto": " auto tree"}


def _head_key(payload: dict) -> tuple[str, int, int]:
    """(head, rank, horizon) of a bench result; a ``--horizon`` override wins over the trained one.

    A token-conditioned head is named ``<head>+tc``.
    """
    model = payload.get("model") or {}
    horizon = payload.get("args", {}).get("horizon") or model.get("horizon") or 1
    head = str(model.get("model_head", "?")) + ("+tc" if model.get("token_conditioned") else "")
    return head, int(model.get("rank") or 1), int(horizon)


def _run_tag(payload: dict, payloads: list[dict]) -> str:
    """A suffix such as " bs=4 bfloat16": batch size and dtype, where the plotted runs differ in them."""
    tag = ""
    batch_sizes = {p.get("args", {}).get("batch_size", 1) for p in payloads}
    if len(batch_sizes) > 1:
        tag += f" bs={payload.get('args', {}).get('batch_size', 1)}"
    if len({p.get("dtype") for p in payloads}) > 1:
        tag += f" {payload.get('dtype')}"
    return tag


def plot_speedup_tau(payloads: list[dict], path: str | Path, modes: tuple[str, ...] = MEASURED_MODES) -> Path:
    """Speedup over ``ar`` and tau of each of ``modes`` versus horizon, one line per (head, rank[, batch size],
    mode)."""
    lines: dict[str, list[tuple[int, float, float]]] = defaultdict(list)
    for payload in payloads:
        head, rank, horizon = _head_key(payload)
        for mode in modes:
            result = payload["results"].get(mode)
            if result is None:
                continue
            suffix = MODE_SUFFIX.get(mode, "")
            label = f"{head} R={rank}{_run_tag(payload, payloads)}{suffix}"
            lines[label].append((horizon, result.get("speedup_vs_ar") or float("nan"), result["tau"]))
    fig, (ax_speed, ax_tau) = plt.subplots(1, 2, figsize=(10, 4))
    for label, points in sorted(lines.items()):
        points.sort()
        xs = [p[0] for p in points]
        ax_speed.plot(xs, [p[1] for p in points], marker="o", label=label)
        ax_tau.plot(xs, [p[2] for p in points], marker="o", label=label)
    ax_speed.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    ax_speed.set(xlabel="horizon H", ylabel="speedup vs ar (decode tok/s)", title="speculative: wall-clock speedup")
    ax_tau.set(xlabel="horizon H", ylabel="tau (tokens / forward pass)", title="speculative: tau")
    for ax in (ax_speed, ax_tau):
        ax.grid(alpha=0.3)
    if lines:  # one legend, beside the plots, so it never hides a point
        ax_tau.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return _save(fig, path)


def plot_accuracy_vs_speed(payloads: list[dict], path: str | Path) -> Path:
    """Accuracy versus decode tokens/s for every mode of every result (the draft-vs-lossless Pareto view)."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    markers = {
        "ar": "s",
        "speculative": "o",
        "speculative_tree": "P",
        "speculative_tree_auto": "X",
        "draft": "^",
        "draft_anchored": "<",
        "hf_generate": "D",
        "prompt_lookup": "v",
    }
    colors = {mode: f"C{i}" for i, mode in enumerate(markers)}
    seen = set()
    for payload in payloads:
        head, rank, horizon = _head_key(payload)
        tag = _run_tag(payload, payloads)
        for mode, result in payload["results"].items():
            speed, accuracy = result.get("decode_tokens_per_s"), result.get("accuracy")
            if speed is None or accuracy is None:
                continue
            style = {"marker": markers.get(mode, "x"), "color": colors.get(mode, "C9")}
            ax.scatter(speed, accuracy, label=None if mode in seen else mode, **style)
            seen.add(mode)
            if mode in ("draft", "draft_anchored", *MEASURED_MODES):
                ax.annotate(f"{head} R{rank} H{horizon}{tag}", (speed, accuracy), fontsize=7, alpha=0.7)
    ax.set(xlabel="decode tokens/s", ylabel="accuracy", title="accuracy vs speed")
    ax.grid(alpha=0.3)
    if seen:
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_head_costs(payload: dict, path: str | Path) -> Path:
    """Peak loss memory and forward+backward time of each head on a rank x horizon grid (one row per head)."""
    by_head: dict[str, list[dict]] = defaultdict(list)
    for config in payload["configs"]:
        by_head[config["head"]].append(config)
    heads = sorted(by_head)
    fig, axes = plt.subplots(max(len(heads), 1), 2, figsize=(10, 3.2 * max(len(heads), 1)), squeeze=False)
    for row, head in enumerate(heads):
        configs = by_head[head]
        ranks = sorted({c["rank"] for c in configs})
        horizons = sorted({c["horizon"] for c in configs})
        for col, (key, label) in enumerate((("peak_loss_memory_mib", "peak loss memory (MiB)"), ("time", "s"))):
            grid = [[float("nan")] * len(horizons) for _ in ranks]
            for c in configs:
                value = c["time_s"]["median"] if key == "time" else c[key]
                grid[ranks.index(c["rank"])][horizons.index(c["horizon"])] = value
            ax = axes[row][col]
            image = ax.imshow(grid, cmap="viridis", aspect="auto")
            for i, line in enumerate(grid):
                for j, value in enumerate(line):
                    ax.text(j, i, f"{value:.3g}", ha="center", va="center", color="white", fontsize=8)
            ax.set_xticks(range(len(horizons)), [str(h) for h in horizons])
            ax.set_yticks(range(len(ranks)), [str(r) for r in ranks])
            title = "peak loss memory (MiB)" if col == 0 else "loss forward+backward (s)"
            ax.set(xlabel="horizon H", ylabel="rank R", title=f"{head}: {title}")
            fig.colorbar(image, ax=ax, label=label)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def load_results(files: list[str | Path]) -> tuple[list[dict], list[dict]]:
    """(bench payloads, heads payloads) from JSON files; anything else is a one-line ValueError."""
    bench, heads = [], []
    for file in files:
        path = Path(file)
        if not path.is_file():
            raise FileNotFoundError(f"no results file {path}")
        try:
            payload = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not JSON: {error}") from None
        if isinstance(payload, dict) and "results" in payload:
            bench.append(payload)
        elif isinstance(payload, dict) and "configs" in payload:
            heads.append(payload)
        else:
            raise ValueError(f"{path} is neither a `tjdnet bench` nor a `tjdnet bench-heads` result")
    return bench, heads


def make_plots(files: list[str | Path], out_dir: str | Path) -> list[Path]:
    """Every figure the files have data for; returns the PNG paths."""
    if not files:
        raise ValueError("no results files given; pass one or more JSON files from tjdnet bench / bench-heads")
    bench, heads = load_results(files)
    out_dir = Path(out_dir)
    written = []
    if bench:
        written.append(plot_speedup_tau(bench, out_dir / "speedup_tau_vs_horizon.png"))
        written.append(plot_accuracy_vs_speed(bench, out_dir / "accuracy_vs_speed.png"))
    for i, payload in enumerate(heads):
        suffix = f"_{i}" if len(heads) > 1 else ""
        written.append(plot_head_costs(payload, out_dir / f"head_costs{suffix}.png"))
    for path in written:
        print(f"wrote {path}")
    return written


def run_bench_plot_cli(args: list[str]) -> list[Path]:
    parser = ArgumentParser(prog="tjdnet bench-plot", description="PNG figures from bench / bench-heads JSON.")
    parser.add_argument("files", type=str, nargs="+", help="results JSON files")
    parser.add_argument("--out_dir", type=str, default="plots")
    cfg = parser.parse_args(args)
    return make_plots(cfg.files, cfg.out_dir)
