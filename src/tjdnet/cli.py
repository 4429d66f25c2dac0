"""``tjdnet fit | test | generate | bench | bench-heads | bench-plot`` (also ``python main.py ...``).

``fit`` is a LightningCLI (every ``--model.*``, ``--data.*``, ``--trainer.*`` flag and ``--config``);
the others are plain commands that load a checkpoint written by ``fit``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from pathlib import Path

COMMANDS = ("fit", "test", "generate", "bench", "bench-heads", "bench-plot")
USAGE = f"usage: tjdnet {{{','.join(COMMANDS)}}} [--help] [options]"

logger = logging.getLogger("tjdnet")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        _fail(f"unknown command {command!r}; allowed: {', '.join(COMMANDS)}")
    try:
        if command == "fit":
            from tjdnet.training.fit import run_fit

            run_fit(rest)
        elif command == "test":
            from tjdnet.training.test import run_test_cli

            run_test_cli(rest)
        elif command == "generate":
            from tjdnet.training.generate_cli import run_generate_cli

            run_generate_cli(rest)
        elif command == "bench":
            from tjdnet.bench.runner import run_bench_cli

            run_bench_cli(rest)
        elif command == "bench-plot":
            from tjdnet.bench.plots import run_bench_plot_cli

            run_bench_plot_cli(rest)
        else:
            from tjdnet.bench.heads import run_bench_heads_cli

            run_bench_heads_cli(rest)
    except (ValueError, FileNotFoundError) as error:
        _fail(str(error).splitlines()[0] if str(error) else type(error).__name__)


def _fail(message: str) -> None:
    print(f"tjdnet: error: {message}", file=sys.stderr)
    sys.exit(2)


def run_name(model: dict, data: dict) -> str:
    """A readable, stable run name: the key hyper-parameters plus a hash of every model and data setting.

    Trainer settings (epochs, steps) are left out, so extending a run resumes it from ``last.ckpt``.
    """
    base = Path(str(model["model"]).rstrip("/")).name
    head = f"{model['model_head']}-h{model['horizon']}-r{model['rank']}"
    blob = json.dumps({"model": model, "data": data}, sort_keys=True, default=str)
    return f"{base}-{head}-{model['train_mode']}-{data['dataset']}-{hashlib.sha1(blob.encode()).hexdigest()[:8]}"


def experiments_dir() -> Path:
    return Path(os.environ.get("TJDNET_EXPERIMENTS", "experiments"))


if __name__ == "__main__":
    main()
