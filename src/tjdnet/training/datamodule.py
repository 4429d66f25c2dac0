"""The Lightning adapter over the data layer: where batches come from."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader

from tjdnet.data import DATASETS, collate, encode_example, load_examples
from tjdnet.distill import base_model_answerer, distill_settings, self_distill
from tjdnet.loading import load_tokenizer
from tjdnet.runs import experiments_dir

logger = logging.getLogger(__name__)

SELF_DISTILL = "selfdistill"


class TJDDataModule(L.LightningDataModule):
    """Tokenised training and validation rows of one dataset (one document per row, answer-only labels).

    Args:
        dataset: ``stemp``, ``gsm8k``, ``jsonl``, ``sharegpt``, ``mt_bench`` or ``selfdistill``.
        path: file or directory of the data (required by jsonl, sharegpt, mt_bench; optional for gsm8k).
        source: with ``selfdistill``, the dataset whose questions are answered again by the base model.
        batch_size: rows per batch.
        seq_len: longest row in tokens; longer answers are cut.
        max_num_samples: training examples to use (a seeded subset; evaluation stays whole).
        max_eval_samples: validation examples to use.
        seed: seed of subsets and of the synthetic stemp generator.
        domain_shift: stemp's eval/test shift: ``in``, ``mild`` or ``hard``.
        distill_max_new_tokens: answer length when self-distilling.
        tokenizer: where the tokenizer comes from (linked to ``--model.model`` by the CLI).
    """

    def __init__(
        self,
        dataset: str = "stemp",
        path: str | None = None,
        source: str = "gsm8k",
        batch_size: int = 8,
        seq_len: int = 256,
        max_num_samples: int | None = None,
        max_eval_samples: int | None = 100,
        seed: int = 0,
        domain_shift: str = "in",
        distill_max_new_tokens: int = 256,
        num_workers: int = 0,
        tokenizer: str = "smollm2-135m",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        name = source if dataset == SELF_DISTILL else dataset
        if name not in DATASETS:
            allowed = ", ".join([*DATASETS, SELF_DISTILL])
            raise ValueError(f"unknown dataset {dataset!r}; allowed: {allowed}")
        if path is None and DATASETS[name].path == "required":
            raise ValueError(f"dataset {name} needs --data.path (a file or directory holding its data)")
        if path is not None and not Path(path).expanduser().exists():
            raise FileNotFoundError(f"--data.path {path} does not exist")
        for field in ("batch_size", "seq_len"):
            if getattr(self.hparams, field) < 1:
                raise ValueError(f"{field}={getattr(self.hparams, field)} is not allowed; use an integer >= 1")
        self.name = name
        self._examples: tuple[list, list] | None = None
        self.train_rows: list[dict] = []
        self.eval_rows: list[dict] = []

    @property
    def seq_len(self) -> int:
        return self.hparams.seq_len

    def records(self, split: str, limit: int | None):
        h = self.hparams
        return load_examples(self.name, split, h.path, limit, h.seed, h.domain_shift)

    def examples(self) -> tuple[list, list]:
        """(training, validation) records, loaded once; ValueError naming the data when either is empty."""
        if self._examples is None:
            h = self.hparams
            train, evaluation = self.records("train", h.max_num_samples), self.records("eval", h.max_eval_samples)
            where = f"{self.name} data in {h.path}" if h.path else f"the {self.name} dataset"
            if not train:
                raise ValueError(f"{where} holds no training examples (JSONL rows need a question and an answer)")
            if not evaluation:
                raise ValueError(f"{where} leaves no validation examples; give more examples")
            self._examples = (train, evaluation)
        return self._examples

    def setup(self, stage: str | None = None) -> None:
        if self.train_rows:
            return
        h = self.hparams
        module = self.trainer.lightning_module if self.trainer is not None else None
        tokenizer = module.tokenizer if module is not None else load_tokenizer(h.tokenizer)
        train, evaluation = self.examples()
        if h.dataset == SELF_DISTILL:
            if module is None:
                raise ValueError("selfdistill needs the model: use it through `tjdnet fit`")
            train = self._distill(module, tokenizer, train)
        self.pad_token_id = tokenizer.pad_token_id
        self.train_rows = [encode_example(tokenizer, e, h.seq_len) for e in train]
        self.eval_rows = [encode_example(tokenizer, e, h.seq_len) for e in evaluation]
        logger.info("%s: %d training rows, %d validation rows", self.name, len(self.train_rows), len(self.eval_rows))

    def _distill(self, module, tokenizer, examples):
        h = self.hparams
        answer = base_model_answerer(module.model, tokenizer, h.distill_max_new_tokens, h.batch_size)
        settings = distill_settings(module.settings.model, h.distill_max_new_tokens, module.settings.dtype)
        return self_distill(examples, answer, experiments_dir() / "selfdistill", h.batch_size, settings)

    def _loader(self, rows: list[dict], shuffle: bool) -> DataLoader:
        return DataLoader(
            rows,
            batch_size=self.hparams.batch_size,
            shuffle=shuffle,
            num_workers=self.hparams.num_workers,
            collate_fn=partial(collate, pad_token_id=self.pad_token_id, padding_side="right"),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_rows, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.eval_rows, shuffle=False)
