"""``tjdnet fit``: LightningCLI over TJDLitModule and TJDDataModule, with run directories,
atomic best/last checkpoints, resuming from ``last`` and an optional test after fitting."""

from __future__ import annotations

import logging
import warnings
from argparse import ArgumentError
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from tjdnet.checkpoints import checkpoint_settings, load_checkpoint_file
from tjdnet.commands.options import option_error
from tjdnet.commands.test import run_test
from tjdnet.files import check_writable
from tjdnet.kernels import cpu_kernels
from tjdnet.runs import experiments_dir, run_name
from tjdnet.training.callbacks import PrintSampleCallback
from tjdnet.training.checkpoint_io import AtomicCheckpointIO
from tjdnet.training.datamodule import TJDDataModule
from tjdnet.training.module import FitSettings, TJDLitModule

logger = logging.getLogger(__name__)

TRAINER_DEFAULTS = {"max_epochs": 1, "log_every_n_steps": 5, "num_sanity_val_steps": 0}


class TJDCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--ckpt_path", type=str | None, default=None, help="checkpoint to resume from")
        parser.add_argument("--run_name", type=str | None, default=None, help="name of experiments/<run_name>")
        parser.add_argument("--test_after_fit", type=bool, default=False, help="run `tjdnet test` on best.ckpt")
        parser.add_argument("--test.gen_modes", type=str, default="ar,speculative", help="modes for the test")
        parser.add_argument("--test.max_num_samples", type=int | None, default=None, help="test examples")
        parser.add_argument("--test.max_new_tokens", type=int, default=128)
        parser.add_argument("--test.batch_size", type=int, default=1)
        parser.link_arguments("model.model", "data.tokenizer")

    def before_instantiate_classes(self) -> None:
        """Check the settings (before the slow model load) and name the run from the resolved ones."""
        config = self.config
        settings = FitSettings(**vars(config.model))
        if settings.horizon + 1 > config.data.seq_len:
            raise ValueError(
                f"horizon={settings.horizon} does not fit in seq_len={config.data.seq_len}; use horizon < seq_len"
            )
        name = config.run_name or run_name(asdict(settings), _plain(config.data))
        self.run_dir = experiments_dir() / name
        last = check_writable(self.run_dir / "last.ckpt")  # before the model loads, not at the first checkpoint
        if config.ckpt_path is None and last.is_file():
            check_same_run(last, asdict(settings), _plain(config.data))

    def instantiate_trainer(self, **kwargs: Any):
        trainer_config = self.config_init.get("trainer", {})
        callbacks = list(trainer_config.get("callbacks") or [])
        callbacks += [
            ModelCheckpoint(
                dirpath=self.run_dir,
                filename="best",
                monitor="val_loss",
                mode="min",
                save_last=True,
                save_top_k=1,
                enable_version_counter=False,
            ),
            PrintSampleCallback(max_new_tokens=self.config.model.max_new_tokens),
        ]
        kwargs["callbacks"] = callbacks
        if trainer_config.get("logger") in (None, True):
            kwargs["logger"] = [
                CSVLogger(self.run_dir, name="", version=_unused_log_dir(self.run_dir)),
                TensorBoardLogger(self.run_dir, name="", version="logs"),
            ]
        kwargs["plugins"] = [*(trainer_config.get("plugins") or []), AtomicCheckpointIO()]
        kwargs.setdefault("default_root_dir", str(self.run_dir))
        return super().instantiate_trainer(**kwargs)


# Data settings that change how a run loads its data, not what it learns from.
UNCOMPARED_DATA = ("num_workers", "tokenizer")


def check_same_run(last: Path, model: dict, data: dict) -> None:
    """Resuming ``last`` must continue the same run: ValueError naming the first setting that differs (only
    ``--trainer.*`` settings, such as more epochs, may change)."""
    checkpoint = load_checkpoint_file(last)
    saved = {"model": checkpoint_settings(checkpoint, last), "data": checkpoint.get("datamodule_hyper_parameters", {})}
    for group, now in (("model", model), ("data", data)):
        for key in sorted(set(now) & set(saved[group]) - set(UNCOMPARED_DATA)):
            if saved[group][key] != now[key]:
                raise ValueError(
                    f"{last.parent} holds a run with --{group}.{key} {saved[group][key]!r}, not {now[key]!r}; "
                    "give another --run_name (or remove that directory) to start a new run"
                )


def _unused_log_dir(run_dir: Path) -> str:
    """``logs`` or, when a resumed run already wrote metrics there, ``logs-<k>``: Lightning's CSV logger would
    delete the earlier history."""
    name, k = "logs", 1
    while (run_dir / name / "metrics.csv").exists():
        name, k = f"logs-{k}", k + 1
    return name


def _plain(namespace) -> dict:
    return {k: v for k, v in vars(namespace).items() if k != "tokenizer"}


# Lines that say nothing about this run: device availability on CPU, advertisements, dependencies' notices.
NOISE = ("GPU available:", "TPU available:", "HPU available:", "💡 Tip:", "litlogger", "litmodels")
NOISY_WARNINGS = (
    "LightningCLI's args parameter",
    r"Checkpoint directory .* exists and is not empty",  # the run directory holds the logs before any checkpoint
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    "The number of training batches",
)


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(noise in message for noise in NOISE)


def quiet_lightning() -> None:
    """Each Lightning message once, through the handlers of the ``tjdnet`` command (Lightning adds its own
    ``INFO:`` handler too), without the lines in ``NOISE`` and the warnings in ``NOISY_WARNINGS``."""
    logging.getLogger("lightning").handlers.clear()
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _DropNoise) for f in handler.filters):
            handler.addFilter(_DropNoise())
    for message in NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=message)


def run_fit(args: list[str]) -> Path:
    """Fit (resuming from the run's last.ckpt when it exists); returns the run directory."""
    quiet_lightning()
    try:
        cli = TJDCLI(
            TJDLitModule,
            TJDDataModule,
            args=args,
            run=False,
            trainer_defaults=TRAINER_DEFAULTS,
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"prog": "tjdnet fit", "exit_on_error": False},
        )
    except ArgumentError as error:
        raise ValueError(option_error(str(error))) from None
    run_dir: Path = cli.run_dir
    cli.datamodule.examples()  # bad data is an error before any log or checkpoint is written
    ckpt_path = cli.config.ckpt_path
    last = run_dir / "last.ckpt"
    if ckpt_path is None and last.is_file():
        ckpt_path = str(last)
        logger.info("resuming from %s", last)
    with cpu_kernels(cli.model.model):
        cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path)
    logger.info("checkpoints in %s", run_dir)
    if cli.config.test_after_fit and cli.trainer.is_global_zero:
        best = run_dir / "best.ckpt"
        test = cli.config.test
        run_test(
            best if best.is_file() else last,
            gen_modes=test.gen_modes,
            max_new_tokens=test.max_new_tokens,
            batch_size=test.batch_size,
            data={"max_num_samples": test.max_num_samples},
        )
    return run_dir
