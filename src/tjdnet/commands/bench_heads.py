"""``tjdnet bench-heads``: what the heads alone cost — parameters, peak memory and time of the training loss.

The loss is the forward and backward pass of ``head.log_prob(h, y)`` (the memory-chunked training path) on
N = batch x seq_len positions, with a random ``nn.Linear(D, V, bias=False)`` as the frozen output embedding, so
no model is needed. ``h`` requires grad, as with LoRA or full fine-tuning.

Peak memory is measured in a fresh child process per configuration, on Linux as the rise of the resident set
during the first full loss pass: the peak-RSS mark (``VmHWM``) is reset through ``/proc/self/clear_refs`` once
the inputs exist and a one-position pass has paged in the code, and the child's ``malloc`` hands large blocks
straight back to the system (``MALLOC_MMAP_THRESHOLD_``), so what the loss freed does not hide what it
needs. Where ``clear_refs`` is not writable, the rise of ``resource.getrusage().ru_maxrss`` is used; the method is
written into the results.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import nn

from tjdnet.commands.options import parse_call
from tjdnet.files import write_json
from tjdnet.heads import HEADS, HeadConfig, make_head, validate_head_config
from tjdnet.heads.base import DEFAULT_LOSS_CHUNK_ELEMENTS
from tjdnet.kernels import flushed_denormals
from tjdnet.machine import machine_info

logger = logging.getLogger(__name__)

SMOLLM2_135M_PARAMETERS = 134_515_008  # the embedded SmolLM2-135M (tied embeddings)
UNCHUNKED = 2**62  # a loss_chunk_elements that materialises every logit at once
MIB = 2**20


@dataclass(frozen=True)
class HeadCase:
    """One configuration to measure."""

    head: str
    rank: int
    horizon: int
    vocab: int = 49152
    hidden: int = 576
    hidden_dim: int = 64
    positions: int = 1024
    loss_chunk_elements: int = DEFAULT_LOSS_CHUNK_ELEMENTS
    iters: int = 2
    num_threads: int | None = None
    seed: int = 0

    def head_config(self) -> HeadConfig:
        return HeadConfig(
            name=self.head,
            hidden_size=self.hidden,
            vocab_size=self.vocab,
            horizon=self.horizon,
            rank=self.rank,
            hidden_dim=self.hidden_dim,
            loss_chunk_elements=self.loss_chunk_elements,
        )


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process; False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def measure_head(case: HeadCase) -> dict:
    """Parameters, peak memory (first pass) and median time of the loss forward+backward, in this process."""
    if case.num_threads:
        torch.set_num_threads(case.num_threads)
    torch.manual_seed(case.seed)
    unembedding = nn.Linear(case.hidden, case.vocab, bias=False).requires_grad_(False)
    head = make_head(case.head_config(), unembedding)
    h = torch.randn(case.positions, case.hidden, requires_grad=True)  # (N, D)
    y = torch.randint(case.vocab, (case.positions, case.horizon))  # (N, H)
    # One pass on a single position first, so the code and thread pools the backward pass touches are already
    # resident and only the loss's own buffers are measured.
    (-head.log_prob(h[:1], y[:1]).sum()).backward()
    head.zero_grad(set_to_none=True)
    h.grad = None
    exact = _reset_peak_rss()
    before_kib = _status_kib("VmRSS") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for i in range(case.iters):
        start = time.perf_counter()
        loss = -head.log_prob(h, y).mean()
        loss.backward()
        times.append(time.perf_counter() - start)
        if i == 0:
            peak_kib = _status_kib("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        head.zero_grad(set_to_none=True)
        h.grad = None
    timed = times[1:] or times
    return {
        **asdict(case),
        "parameters": head.num_parameters(),
        "peak_loss_memory_mib": max(peak_kib - before_kib, 0) / 1024,
        "logits_mib_if_materialised": case.positions * case.rank * case.horizon * case.vocab * 4 / MIB,
        "time_s": {"median": statistics.median(timed), "min": min(timed), "max": max(timed), "runs": times},
        "memory_method": "VmHWM - VmRSS after clear_refs" if exact else "ru_maxrss delta",
    }


def measure_in_child(case: HeadCase) -> dict:
    """:func:`measure_head` in a fresh Python process (one allocator history per configuration)."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    proc = subprocess.run(
        [sys.executable, "-m", "tjdnet.commands.bench_heads"],
        input=json.dumps(asdict(case)),
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
        raise RuntimeError(f"measuring {case.head} R={case.rank} H={case.horizon} failed: {tail[0]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def parse_int_list(value: str | list[int], name: str) -> list[int]:
    items = [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else list(value)
    try:
        numbers = [int(v) for v in items]
    except ValueError:
        raise ValueError(f"--{name}={value!r} is not a comma-separated list of integers") from None
    if not numbers or any(n < 1 for n in numbers):
        raise ValueError(f"--{name}={value!r} is not allowed; give one or more integers >= 1")
    return numbers


def parse_cases(value: str, base: HeadCase) -> list[HeadCase]:
    """``head:rank:horizon,...`` -> cases built on ``base``."""
    cases = []
    for item in (v.strip() for v in value.split(",") if v.strip()):
        parts = item.split(":")
        if len(parts) != 3 or parts[0] not in HEADS or not all(p.isdigit() for p in parts[1:]):
            raise ValueError(f"bad configuration {item!r}; use head:rank:horizon, e.g. cp:4:4")
        cases.append(replace(base, head=parts[0], rank=int(parts[1]), horizon=int(parts[2])))
    return cases


def grid_cases(heads: list[str], ranks: list[int], horizons: list[int], base: HeadCase) -> list[HeadCase]:
    """Every head x rank x horizon; heads of rank 1 (multihead) only at R = 1."""
    for head in heads:
        if head not in HEADS or head == "stp":
            raise ValueError(f"unknown head {head!r}; allowed: {', '.join(h for h in HEADS if h != 'stp')}")
    return [
        replace(base, head=head, rank=rank, horizon=horizon)
        for head in heads
        for rank in ranks
        for horizon in horizons
        if head != "multihead" or rank == 1
    ]


def run_bench_heads(
    heads: str | list[str] = "multihead,cp,mps",
    ranks: str | list[int] = "1,2,4,8,16",
    horizons: str | list[int] = "2,4,8",
    vocab: int = 49152,
    hidden: int = 576,
    hidden_dim: int = 64,
    batch: int = 8,
    seq_len: int = 128,
    iters: int = 2,
    chunking: str = "cp:1:2,cp:2:2,mps:2:2",
    backbone_params: int = SMOLLM2_135M_PARAMETERS,
    num_threads: int | None = None,
    out: str | Path = "heads.json",
    isolate: bool = True,
) -> dict:
    """Measure every configuration (and the chunking comparison); returns the JSON payload (also written to ``out``).

    Args:
        heads: comma-separated heads (multihead, cp, mps).
        ranks: comma-separated ranks (multihead is measured at rank 1 only).
        horizons: comma-separated horizons.
        vocab: vocabulary size V of the random output embedding.
        hidden: hidden size D of the backbone.
        hidden_dim: width of each component's adapter.
        batch: sequences per loss pass.
        seq_len: positions per sequence (N = batch x seq_len).
        iters: loss passes per configuration (time: the median of passes 2..).
        chunking: head:rank:horizon configurations measured twice, with the default ``loss_chunk_elements`` and
            with every logit materialised (``""`` for none).
        backbone_params: parameters of the backbone the heads are compared with (default: SmolLM2-135M).
        num_threads: torch CPU threads (default: torch's choice).
        out: JSON path.
        isolate: one child process per configuration (the memory figures need it; tests may skip it).
    """
    args = dict(locals())
    head_names = [h.strip() for h in heads.split(",") if h.strip()] if isinstance(heads, str) else list(heads)
    for name, value in (("vocab", vocab), ("hidden", hidden), ("hidden_dim", hidden_dim), ("batch", batch),
                        ("seq_len", seq_len), ("iters", iters), ("backbone_params", backbone_params)):  # fmt: skip
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"--{name}={value!r} is not allowed; use an integer >= 1")
    base = HeadCase(
        "cp", 1, 1, vocab, hidden, hidden_dim, batch * seq_len, iters=iters, num_threads=num_threads or None
    )
    cases = grid_cases(head_names, parse_int_list(ranks, "ranks"), parse_int_list(horizons, "horizons"), base)
    paired = parse_cases(chunking, base)
    for case in [*cases, *paired]:
        validate_head_config(case.head_config())
    measure = measure_in_child if isolate else measure_head
    configs = []
    for case in cases:
        configs.append(_with_fraction(measure(case), backbone_params))
        logger.info("%s", _row(configs[-1]))
    chunk_rows = []
    for case in paired:
        chunked = measure(case)
        unchunked = measure(replace(case, loss_chunk_elements=UNCHUNKED))
        chunk_rows.append(
            {
                "head": case.head,
                "rank": case.rank,
                "horizon": case.horizon,
                "positions": case.positions,
                "chunked_mib": chunked["peak_loss_memory_mib"],
                "unchunked_mib": unchunked["peak_loss_memory_mib"],
                "chunked_time_s": chunked["time_s"]["median"],
                "unchunked_time_s": unchunked["time_s"]["median"],
                "logits_mib_if_materialised": chunked["logits_mib_if_materialised"],
            }
        )
    payload = {
        "args": {**args, "out": str(out)},
        "backbone_params": backbone_params,
        "loss_chunk_elements": DEFAULT_LOSS_CHUNK_ELEMENTS,
        "machine": machine_info() | {"threads": num_threads or torch.get_num_threads()},
        "memory_method": configs[0]["memory_method"] if configs else None,
        "configs": configs,
        "chunking": chunk_rows,
    }
    write_json(Path(out), payload)
    print(format_heads_table(payload))
    print(f"results written to {out}")
    return payload


def _with_fraction(result: dict, backbone_params: int) -> dict:
    return {**result, "fraction_of_backbone": result["parameters"] / backbone_params}


def _row(r: dict) -> str:
    return (
        f"{r['head']:>9} {r['rank']:>3} {r['horizon']:>3} {r['parameters']:>10,} {r['fraction_of_backbone']:>8.4f} "
        f"{r['peak_loss_memory_mib']:>9.1f} {r['time_s']['median']:>8.3f}"
    )


def format_heads_table(payload: dict) -> str:
    header = f"{'head':>9} {'R':>3} {'H':>3} {'params':>10} {'fraction':>8} {'peak_MiB':>9} {'fwd+bwd_s':>8}"
    lines = [header, *(_row(r) for r in payload["configs"])]
    if payload["chunking"]:
        lines.append(f"{'head':>9} {'R':>3} {'H':>3} {'chunked_MiB':>12} {'unchunked_MiB':>14} {'logits_MiB':>11}")
        lines += [
            f"{c['head']:>9} {c['rank']:>3} {c['horizon']:>3} {c['chunked_mib']:>12.1f} {c['unchunked_mib']:>14.1f} "
            f"{c['logits_mib_if_materialised']:>11.1f}"
            for c in payload["chunking"]
        ]
    return "\n".join(lines)


def run_bench_heads_cli(args: list[str]) -> dict:
    return parse_call(run_bench_heads, args, "tjdnet bench-heads", "Parameters, loss memory and time of the heads.")


if __name__ == "__main__":
    with flushed_denormals():  # as in training, so a denormal slowdown does not skew the times
        print(json.dumps(measure_head(HeadCase(**json.loads(sys.stdin.read())))))
