"""``tjdnet distill | fit | fit-heads | test | generate | bench | bench-heads | bench-plot`` (also ``python main.py``).

``fit`` is a LightningCLI (every ``--model.*``, ``--data.*``, ``--trainer.*`` flag and ``--config``); ``distill``
writes a head's training data with the model itself, ``fit-heads`` trains heads on it over cached features; the
others are plain commands that load a checkpoint or saved head.
"""

from __future__ import annotations

import importlib
import logging
import sys

COMMANDS = ("distill", "fit", "fit-heads", "test", "generate", "bench", "bench-heads", "bench-plot")
USAGE = f"usage: tjdnet {{{','.join(COMMANDS)}}} [--help] [options]"

logger = logging.getLogger("tjdnet")


# module and entry point of each command, imported on use: `tjdnet generate` does not pay for matplotlib
COMMAND_LINES = {
    "distill": ("commands.distill", "run_distill_cli"),
    "fit-heads": ("training.fit_heads", "run_fit_heads_cli"),
    "test": ("commands.test", "run_test_cli"),
    "generate": ("commands.generate", "run_generate_cli"),
    "bench": ("commands.bench", "run_bench_cli"),
    "bench-heads": ("commands.bench_heads", "run_bench_heads_cli"),
    "bench-plot": ("commands.bench_plot", "run_bench_plot_cli"),
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        _fail(f"unknown command {command!r}; allowed: {', '.join(COMMANDS)}")
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # a bar per weights file loaded says nothing
    try:
        if command == "fit":
            from tjdnet.training.fit import run_fit  # Lightning is imported by fit only

            run_fit(rest)
        else:
            module, function = COMMAND_LINES[command]
            getattr(importlib.import_module(f"tjdnet.{module}"), function)(rest)
    except (ValueError, FileNotFoundError) as error:
        _fail(str(error).splitlines()[0] if str(error) else type(error).__name__)
    except KeyboardInterrupt:
        print("tjdnet: interrupted", file=sys.stderr)
        sys.exit(130)


def _fail(message: str) -> None:
    print(f"tjdnet: error: {message}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    main()
