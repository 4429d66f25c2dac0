"""KV-cached generation with a TJDModel: plain (``ar``), ``draft`` and lossless ``speculative``.

One backbone pass per step in every mode. Rows of a batch advance independently: each row keeps its
own position counter, and a slot of the shared KV cache that a row rejected is masked out for that
row (trailing slots rejected by every row are cropped away), so no prefix is ever recomputed.
Finished rows leave the batch.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from tjdnet.attention import exact_attention_in, resolve_attention
from tjdnet.decoding.acceptance import greedy_accept, greedy_accept_tree, speculative_accept
from tjdnet.decoding.lookup import DEFAULT_TREE_LOOKUP, NgramIndex, check_tree_lookup, graft_chains
from tjdnet.decoding.stats import GenerationStats, RowStats
from tjdnet.decoding.tree import (
    DEFAULT_TREE_NODES,
    DEFAULT_TREE_TEMPERATURE,
    DEFAULT_TREE_TOPK,
    DraftTree,
    build_draft_tree,
    check_tree_temperature,
    tree_attention_mask,
)
from tjdnet.decoding.tree_size import PassCost, TreeSizer, check_tree_size, cost_key, measure_pass_cost
from tjdnet.heads.window import Window
from tjdnet.kernels import cpu_kernels
from tjdnet.quantization import check_draft_weights, int8_drafting, resolve_draft_weights
from tjdnet.sampling import SamplingConfig, choose_tokens, process_log_probs

GEN_MODES = ("ar", "draft", "draft_anchored", "speculative")
TREE_MODE = "speculative_tree"
AUTO_TREE_MODE = "speculative_tree_auto"
NAMED_MODES = (*GEN_MODES, TREE_MODE, AUTO_TREE_MODE)
DEFAULT_TREE_MAX_NODES = 24


def mode_arguments(
    mode: str,
    tree_nodes: int = DEFAULT_TREE_NODES,
    tree_topk: int = DEFAULT_TREE_TOPK,
    attention: str = "auto",
    tree_max_nodes: int = DEFAULT_TREE_MAX_NODES,
    draft_weights: str = "auto",
    tree_temperature: float = DEFAULT_TREE_TEMPERATURE,
    tree_lookup: int = DEFAULT_TREE_LOOKUP,
) -> dict:
    """:func:`generate` keyword arguments of a named mode: a ``gen_mode``, ``speculative_tree`` (``speculative``
    verifying a draft tree of ``tree_nodes`` nodes) or ``speculative_tree_auto`` (a tree of at most
    ``tree_max_nodes`` nodes, sized per step: ``tree_size="auto"``); ``attention``, ``draft_weights``,
    ``tree_temperature`` and ``tree_lookup`` (trees only) as in :func:`generate`."""
    if mode not in NAMED_MODES:
        raise ValueError(f"unknown gen_mode {mode!r}; allowed: {', '.join(NAMED_MODES)}")
    resolve_attention(attention, torch.float32)  # a bad choice fails here, before any model is loaded
    check_draft_weights(draft_weights)
    check_tree_temperature(tree_temperature)
    check_tree_lookup(tree_lookup)
    shared = {"attention": attention, "draft_weights": draft_weights}
    if mode in (TREE_MODE, AUTO_TREE_MODE):
        auto = mode == AUTO_TREE_MODE
        return {
            "gen_mode": "speculative",
            "tree_nodes": tree_max_nodes if auto else tree_nodes,
            "tree_topk": tree_topk,
            "tree_temperature": tree_temperature,
            "tree_lookup": tree_lookup,
            "tree_size": "auto" if auto else "fixed",
            **shared,
        }
    return {"gen_mode": mode, **shared}


@dataclass
class GenerationOutput:
    """``sequences`` (B, T + max_new_tokens): prompt then new tokens, padded with ``pad_token_id``."""

    sequences: torch.Tensor
    new_tokens: list[list[int]]
    stats: GenerationStats


class _Rows:
    """The rows still generating: their KV caches, slot masks, positions and last hidden states."""

    def __init__(self, caches: list[DynamicCache], slot_mask: torch.Tensor, next_pos: torch.Tensor) -> None:
        self.caches = caches
        self.slot_mask = slot_mask  # (A, L) 1 where a cache slot belongs to the row
        self.next_pos = next_pos  # (A,) position id of the row's next token
        self.index = torch.arange(slot_mask.shape[0], device=slot_mask.device)  # original row ids

    def feed_inputs(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention mask (A, L + n) and position ids (A, n) for n new tokens per row."""
        mask = torch.cat([self.slot_mask, self.slot_mask.new_ones(len(self.index), n)], dim=1)
        positions = self.next_pos[:, None] + torch.arange(n, device=mask.device)
        return mask, positions

    def tree_inputs(self, tree: DraftTree, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention mask (A, 1, N + 1, L + N + 1) and position ids (A, N + 1) for a root and its draft tree."""
        depths = torch.cat([tree.depths.new_zeros(len(tree.depths), 1), tree.depths], dim=1)  # root first
        return tree_attention_mask(self.slot_mask, tree, dtype), self.next_pos[:, None] + depths

    def keep_path(self, fed: int, path: torch.Tensor, kept: torch.Tensor) -> None:
        """After feeding ``fed`` tokens, keep for each row the ``kept`` (A,) fed tokens listed in ``path`` (A, W),
        moved to the front of the fed slots in path order."""
        width = int(kept.max())
        start = self.caches[0].get_seq_length() - fed
        # Slots already in place (node j at depth j, as when the best nodes form a chain) need no move.
        moved = (path[:, :width] != torch.arange(width, device=path.device)).any(dim=0).nonzero()
        first = int(moved[0]) if len(moved) else width
        index = start + path[:, first:width]
        for cache in self.caches if first < width else ():
            for layer in cache.layers:
                for name in ("keys", "values"):
                    states = getattr(layer, name)  # (A, heads, L + fed, d)
                    states[:, :, start + first : start + width] = _slots(states, index)
        self.keep_first(fed, kept)

    def keep_first(self, fed: int, kept: torch.Tensor) -> None:
        """After feeding ``fed`` tokens, keep the first ``kept`` (A,) of them for each row."""
        width = int(kept.max())
        for cache in self.caches:
            if fed > width:
                cache.crop(width - fed)
        new = torch.arange(width, device=kept.device)[None] < kept[:, None]
        self.slot_mask = torch.cat([self.slot_mask, new.to(self.slot_mask.dtype)], dim=1)
        self.next_pos = self.next_pos + kept

    def select(self, keep: torch.Tensor) -> None:
        """Drop the rows where ``keep`` (A,) is False."""
        idx = keep.nonzero().squeeze(1)
        for cache in self.caches:
            cache.batch_select_indices(idx)
        self.slot_mask, self.next_pos, self.index = self.slot_mask[idx], self.next_pos[idx], self.index[idx]


def _slots(states: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(A, heads, n, d) the cache slots ``index`` (A, n) of each row's states (A, heads, L, d)."""
    if len(index) == 1:  # one row: an index_select, half a gather's time (60 of them per step)
        return states.index_select(2, index[0])
    return states.gather(2, index[:, None, :, None].expand(-1, states.shape[1], -1, states.shape[3]))


class _Output:
    """Collects accepted tokens per row, applies EOS and ``max_new_tokens``, and streams them."""

    def __init__(
        self, batch: int, max_new_tokens: int, eos: set[int], streamer, texts: list[NgramIndex] | None = None
    ) -> None:
        self.tokens: list[list[int]] = [[] for _ in range(batch)]
        self.texts = texts  # each row's prompt and output so far, indexed for lookup drafts
        self.finished = [max_new_tokens == 0] * batch
        self.max_new_tokens = max_new_tokens
        self.eos = eos
        self.streamer = streamer

    def remaining(self, row: int) -> int:
        return self.max_new_tokens - len(self.tokens[row])

    def commit(self, row: int, tokens: list[int]) -> int:
        """Append tokens to a row, up to EOS or the budget; returns how many were taken."""
        taken = tokens[: self.remaining(row)]
        for i, token in enumerate(taken):
            if token in self.eos:
                taken = taken[: i + 1]
                self.finished[row] = True
                break
        self.tokens[row].extend(taken)
        if self.texts is not None:
            self.texts[row].extend(taken)
        if self.remaining(row) == 0:
            self.finished[row] = True
        if self.streamer is not None and taken:
            self.streamer.put(torch.tensor(taken))
        return len(taken)


def _validate_tree(
    tree_nodes: int,
    tree_topk: int,
    tree_temperature: float,
    tree_size: str,
    gen_mode: str,
    do_sample: bool,
    tree_lookup: int = 0,
) -> None:
    check_tree_size(tree_size)
    check_tree_temperature(tree_temperature)
    check_tree_lookup(tree_lookup)
    if tree_lookup and not tree_nodes:
        raise ValueError(f"tree_lookup={tree_lookup} grafts onto a draft tree: use it with tree_nodes >= 1")
    if tree_size == "auto" and not (isinstance(tree_nodes, int) and tree_nodes >= 1):
        raise ValueError(f"tree_size='auto' needs tree_nodes >= 1 (the largest tree), not {tree_nodes!r}")
    if not isinstance(tree_nodes, int) or tree_nodes < 0:
        raise ValueError(f"tree_nodes={tree_nodes!r} is not allowed; use an integer >= 0 (0 drafts a chain)")
    if not isinstance(tree_topk, int) or tree_topk < 1:
        raise ValueError(f"tree_topk={tree_topk!r} is not allowed; use an integer >= 1")
    if tree_nodes and gen_mode != "speculative":
        raise ValueError(f"tree_nodes={tree_nodes} applies to gen_mode='speculative' only, not {gen_mode!r}")
    if tree_nodes and do_sample:
        raise ValueError("tree drafting verifies greedily: use do_sample=False, or tree_nodes=0 to sample")


def left_aligned(
    input_ids: torch.Tensor, attention_mask: torch.Tensor | None, pad_ids: set[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both (B, T), with each row's real tokens moved to its right end (left padding).

    Decoding appends to the right of every row, so a right-padded batch (a tokenizer's default) would put the new
    tokens after the padding; moving the tokens left of their masked-out positions gives each row what it gives
    alone (positions follow the mask either way). Without a mask, a batch whose first or last column holds a pad
    id (``pad_ids``) is refused: it looks padded, and nothing says where.
    """
    if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool or input_ids.is_complex():
        raise ValueError(f"input_ids have dtype {input_ids.dtype}; pass integer token ids (torch.long)")
    if attention_mask is None:
        if input_ids.shape[0] > 1 and pad_ids:
            edges = torch.isin(input_ids[:, [0, -1]], torch.tensor(sorted(pad_ids), device=input_ids.device))
            if edges.any():
                row = int(edges.any(-1).nonzero()[0])
                raise ValueError(
                    f"input_ids row {row} starts or ends with a pad token but no attention_mask was given; "
                    "pass the tokenizer's attention_mask"
                )
        return input_ids, torch.ones_like(input_ids)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask of shape {tuple(attention_mask.shape)} does not match input_ids of shape "
            f"{tuple(input_ids.shape)}"
        )
    if not ((attention_mask == 0) | (attention_mask == 1)).all():
        raise ValueError("attention_mask holds values other than 0 and 1")
    if (attention_mask[:, 1:] >= attention_mask[:, :-1]).all():
        return input_ids, attention_mask
    order = torch.sort(attention_mask.long(), dim=1, stable=True).indices  # padding first, tokens in order
    return input_ids.gather(1, order), attention_mask.gather(1, order)


def _validate(model, input_ids, attention_mask, gen_mode, max_new_tokens, horizon, streamer) -> int:
    if gen_mode not in GEN_MODES:
        raise ValueError(f"unknown gen_mode {gen_mode!r}; allowed: {', '.join(GEN_MODES)}")
    if input_ids.dim() != 2 or input_ids.shape[1] == 0 or input_ids.shape[0] == 0:
        raise ValueError(f"input_ids of shape {tuple(input_ids.shape)} is empty; pass a (batch, length) prompt")
    if attention_mask is not None and (attention_mask.sum(-1) == 0).any():
        raise ValueError("a prompt row is empty (all padding); every row needs at least one token")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens!r} is not allowed; use an integer >= 0")
    horizon = model.horizon if horizon is None else horizon
    if not 1 <= horizon <= model.horizon:
        raise ValueError(f"horizon={horizon} is not allowed; this head supports 1..{model.horizon}")
    context = getattr(model.lm.config, "max_position_embeddings", None) or getattr(model.lm.config, "n_positions", None)
    prompt_len = int(attention_mask.sum(-1).max()) if attention_mask is not None else input_ids.shape[1]
    if context is not None and prompt_len + max_new_tokens > context:
        raise ValueError(
            f"prompt length {prompt_len} + max_new_tokens {max_new_tokens} exceeds the model's context of {context}"
        )
    if streamer is not None and input_ids.shape[0] != 1:
        raise ValueError(f"a streamer needs batch size 1, got {input_ids.shape[0]}")
    model.check_input_ids(input_ids)
    return horizon


GENERATION_DEFAULTS = {
    "max_new_tokens": 20,
    "do_sample": False,
    "temperature": 1.0,
    "top_k": None,
    "top_p": None,
    "eos_token_id": None,
    "pad_token_id": None,
}
FROM_THE_MODEL = ("max_new_tokens", "eos_token_id", "pad_token_id")  # read from the model's own generation config


def generation_settings(model, generation_config=None, **given) -> dict:
    """The value of each of ``GENERATION_DEFAULTS``: given (not None), else ``generation_config``'s, else the
    model's own generation config's (``FROM_THE_MODEL`` only), else the default. transformers' "no filter"
    values (``top_k=0``, ``top_p=1.0``) mean None."""
    own = getattr(model.lm, "generation_config", None)
    settings = {}
    for name, default in GENERATION_DEFAULTS.items():
        value = given.get(name)
        if value is None and generation_config is not None:
            value = _hf_value(generation_config, name)
        if value is None and own is not None and name in FROM_THE_MODEL:
            value = _hf_value(own, name)
        settings[name] = default if value is None else value
    return settings


def _hf_value(config, name: str):
    value = getattr(config, name, None)
    if (name, value) in (("top_k", 0), ("top_p", 1.0)):
        return None
    return value


@torch.inference_mode()
def generate(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    gen_mode: str = "ar",
    max_new_tokens: int | None = None,
    do_sample: bool | None = None,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
    generation_config=None,
    horizon: int | None = None,
    streamer=None,
    verify_with_base: bool = False,
    generator: torch.Generator | None = None,
    tree_nodes: int = 0,
    tree_topk: int = DEFAULT_TREE_TOPK,
    tree_size: str = "fixed",
    tree_temperature: float = DEFAULT_TREE_TEMPERATURE,
    tree_lookup: int = 0,
    attention: str = "auto",
    draft_weights: str = "auto",
) -> GenerationOutput:
    """Generate up to ``max_new_tokens`` per row (transformers meaning for every shared argument).

    ``max_new_tokens``, ``do_sample``, ``temperature``, ``top_k``, ``top_p``, ``eos_token_id`` and ``pad_token_id``
    come, in this order, from the argument, a transformers ``generation_config``, the model's own generation
    config (``eos_token_id``, ``pad_token_id`` and ``max_new_tokens`` only: decoding stays greedy unless asked)
    and the defaults (20 new tokens, greedy; see :func:`generation_settings`).

    Args:
        model: a :class:`~tjdnet.model.TJDModel`.
        input_ids: (B, T) prompts; attention_mask: (B, T), 1 for real tokens (needed for a padded batch). Right
            padding is moved to the left first (:func:`left_aligned`); ``sequences`` holds the prompts so.
        gen_mode: ``ar`` (next-token head), ``draft`` (``horizon`` tokens per pass from the joint head,
            lossy), ``draft_anchored`` (``horizon`` tokens per pass: the next-token head's token, then
            ``horizon - 1`` from the joint head given it; lossy) or ``speculative`` (joint-head drafts verified by
            the next-token head, lossless).
        horizon: tokens per block (default: the head's horizon).
        verify_with_base: with LoRA, verify against the original model (adapters off); costs a second
            backbone pass per step.
        generator: random source for sampling.
        tree_nodes: ``speculative`` only: verify a tree of this many drafted tokens per pass instead of one chain
            of ``horizon - 1`` (greedy only; see :mod:`tjdnet.decoding.tree`); 0 drafts a chain.
        tree_topk: prefixes a tree expands per depth.
        tree_temperature: T > 0: a tree keeps the most probable prefixes under the head's conditionals softened to
            q^(1/T); T > 1 keeps more alternatives near the root, for a head less sure on these prompts than it
            claims (:func:`~tjdnet.decoding.tree.build_draft_tree`). Verification, hence the output, is the same.
        tree_lookup: N > 0: each tree step also verifies up to N tokens that followed the latest earlier occurrence
            of the text's last 2-4 tokens (prompt and output), grafted onto the tree (prompt lookup decoding,
            :mod:`tjdnet.decoding.lookup`): long runs where the text repeats itself, at no drafting cost.
        tree_size: ``fixed`` verifies all ``tree_nodes`` nodes; ``auto`` keeps, each step, the number of them that
            maximises expected tokens per second, from the head's own probabilities and the time of a verifying
            pass of each width, measured on this machine the first time a model decodes a batch of this size
            (:mod:`tjdnet.decoding.tree_size`; about a second, kept in ``model.pass_costs``).
        attention: ``exact`` computes attention so that a verifying pass gives each token the bits of a one-token
            pass (:mod:`tjdnet.attention`: lossless ``speculative`` in 16-bit floats; every mode uses it, so outputs
            compare), ``model`` keeps the model's own kernel, ``auto`` is exact for bfloat16/float16 models.
        draft_weights: ``int8``: the head drafts with int8 copies of its weights (:mod:`tjdnet.quantization`:
            faster drafting on CPUs with a vectorised int8 kernel, the same verification), ``model``: with its own,
            ``auto``: int8 in ``speculative`` (lossless: only the speed can change) where a one-off measurement on
            this machine finds the int8 product faster, the head's own weights otherwise and in the draft modes.
    """
    settings = generation_settings(
        model,
        generation_config,
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
    )
    max_new_tokens, do_sample, eos_token_id, pad_token_id = (
        settings["max_new_tokens"],
        settings["do_sample"],
        settings["eos_token_id"],
        settings["pad_token_id"],
    )
    device = next(model.lm.parameters()).device
    if isinstance(input_ids, torch.Tensor):  # prompts follow the model, as transformers' generate expects of them
        input_ids = input_ids.to(device)
        attention_mask = attention_mask.to(device) if isinstance(attention_mask, torch.Tensor) else attention_mask
    eos = {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id or [])
    pad_ids = {i for i in (pad_token_id, getattr(model.lm.config, "pad_token_id", None)) if isinstance(i, int)} | eos
    if isinstance(input_ids, torch.Tensor) and input_ids.dim() == 2 and input_ids.numel():
        input_ids, attention_mask = left_aligned(input_ids, attention_mask, pad_ids)
    horizon = _validate(model, input_ids, attention_mask, gen_mode, max_new_tokens, horizon, streamer)
    config = SamplingConfig(do_sample, settings["temperature"], settings["top_k"], settings["top_p"])
    _validate_tree(tree_nodes, tree_topk, tree_temperature, tree_size, gen_mode, do_sample, tree_lookup)
    exact = resolve_attention(attention, next(model.lm.parameters()).dtype)
    int8 = resolve_draft_weights(draft_weights, gen_mode, model.head)
    if verify_with_base and not model.has_lora:
        raise ValueError("verify_with_base needs a model fine-tuned with LoRA (train_mode='lora')")
    if pad_token_id is None:
        pad_token_id = min(eos) if eos else 0
    batch = input_ids.shape[0]
    texts = None  # each row's prompt, indexed for lookup drafts
    if tree_lookup:
        real = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        texts = [NgramIndex(ids[keep].tolist()) for ids, keep in zip(input_ids, real, strict=True)]
    out = _Output(batch, max_new_tokens, eos, streamer, texts)
    stats = GenerationStats(gen_mode=gen_mode, rows=[RowStats() for _ in range(batch)], horizon=horizon)
    stats.reached, stats.accepted_at = [0] * (horizon - 1), [0] * (horizon - 1)
    if streamer is not None:
        streamer.put(input_ids[0].cpu())

    n_caches = 2 if verify_with_base else 1
    rows = _Rows([DynamicCache(config=model.lm.config) for _ in range(n_caches)], attention_mask, None)

    def forward(
        tokens: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, last_only: bool = False, count: bool = True
    ):
        """One step: (the head's input (A, n, (1 + f) D), verifier log-probs (A, n, V)), n = 1 when ``last_only``
        (the prefill: no vocabulary product for the prompt's other positions); counts the passes unless not
        ``count``."""
        keep = slice(-1, None) if last_only else slice(None)
        verify_hidden, hidden = model.features(tokens, mask, positions, rows.caches[0])
        verify_hidden, hidden = verify_hidden[:, keep], hidden[:, keep]
        if verify_with_base:
            with model.adapters_disabled():
                verify_hidden = model.hidden_states(tokens, mask, positions, rows.caches[1])[:, keep]
        if count:
            for r in rows.index.tolist():
                stats.rows[r].forward_passes += 1
            stats.forward_passes += n_caches
        return hidden, process_log_probs(model.next_token_logits(verify_hidden), config)

    with (
        cpu_kernels(model),
        int8_drafting(model.head, int8),
        exact_attention_in(model.lm, exact) as exact_attention_used,
    ):
        start = time.perf_counter()
        if max_new_tokens == 0:
            return _finish(input_ids, out, stats, pad_token_id, streamer)
        positions = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
        hidden, log_p = forward(input_ids, attention_mask, positions, last_only=True)
        if exact and not exact_attention_used():
            warnings.warn(_not_exact_message(model.lm), stacklevel=3)
        rows.next_pos = attention_mask.long().sum(-1)
        hidden, log_p = hidden[:, -1], log_p[:, -1]
        stats.prefill_time_s = time.perf_counter() - start

        # a drafter attending over the latest positions starts with none: only generated ones enter its window
        window = Window.empty(batch, model.head.window_size, hidden) if model.head.window_size else None
        if gen_mode == "draft":
            _draft_loop(model, rows, hidden, config, horizon, out, stats, forward, generator, window)
        else:
            draft_len = 0 if gen_mode == "ar" else horizon - 1
            pending = choose_tokens(log_p, config, generator)
            sizer = None
            if tree_size == "auto" and draft_len > 0:
                sizer = TreeSizer(_pass_cost(model, rows, pending, tree_nodes + 1, forward, hidden.dtype))
            _speculative_loop(
                model, rows, hidden, pending, config, draft_len, out, stats, forward, generator, tree_nodes, tree_topk,
                verify=gen_mode != "draft_anchored", sizer=sizer, window=window, tree_temperature=tree_temperature,
                tree_lookup=tree_lookup,
            )  # fmt: skip
    stats.decode_time_s = time.perf_counter() - start - stats.prefill_time_s
    return _finish(input_ids, out, stats, pad_token_id, streamer)


def _not_exact_message(lm: torch.nn.Module) -> str:
    return (
        f"{type(lm).__name__} does not compute attention through transformers' AttentionInterface, so exact "
        f"attention is not in effect: in {lm.dtype} greedy speculative output can differ from ar"
    )


def _pass_cost(model, rows: _Rows, pending: torch.Tensor, max_tokens: int, forward, hidden_dtype) -> PassCost:
    """The measured cost of verifying passes of up to ``max_tokens`` tokens per row for this batch (measured on
    the current caches, which are left as they were, on first use and kept in ``model.pass_costs``)."""
    lm = model.lm
    param = next(lm.parameters())
    key = cost_key(len(pending), max_tokens, param.dtype, param.device)
    if key not in model.pass_costs:

        def run_pass(width: int) -> None:  # a chain-shaped tree: the same kernels as a tree step's pass
            nodes = torch.arange(1, width, device=pending.device).expand(len(pending), -1)
            chain = DraftTree(pending[:, None].expand(-1, width - 1), nodes - 1, nodes)
            mask, positions = rows.tree_inputs(chain, hidden_dtype)
            forward(pending[:, None].expand(-1, width), mask, positions, count=False)
            for cache in rows.caches:
                cache.crop(-width)

        model.pass_costs[key] = measure_pass_cost(run_pass, max_tokens)
    return model.pass_costs[key]


def _speculative_loop(
    model,
    rows,
    hidden,
    pending,
    config,
    draft_len,
    out,
    stats,
    forward,
    generator,
    tree_nodes,
    tree_topk,
    verify=True,
    sizer: TreeSizer | None = None,
    window: Window | None = None,
    tree_temperature: float = DEFAULT_TREE_TEMPERATURE,
    tree_lookup: int = 0,
) -> None:
    """Commit the verifier's pending token, draft after it (a chain, or a tree of ``tree_nodes`` nodes with up to
    ``tree_lookup`` lookup tokens grafted on), verify the draft in one pass; repeat. ``window``: the rows' context
    windows, for a head that reads them.

    ``draft_len = 0`` is plain autoregressive decoding. ``verify=False`` (``draft_anchored``) takes every drafted
    token unchecked: each pass then emits the next-token head's token and ``draft_len`` tokens of the joint head
    drawn given it. ``sizer``: verify as many of a tree's nodes as it chooses each step.
    """
    while True:
        for a, r in enumerate(rows.index.tolist()):
            out.commit(r, [int(pending[a])])
            stats.rows[r].new_tokens += 1
        keep = torch.tensor([not out.finished[r] for r in rows.index.tolist()], device=hidden.device)
        if not keep.any():
            return
        if not keep.all():
            rows.select(keep)
            hidden, pending, window = hidden[keep], pending[keep], None if window is None else window[keep]
        k = min(draft_len, max(out.remaining(r) for r in rows.index.tolist()) - 1)
        if k > 0 and tree_nodes > 0:
            tree = (tree_nodes, tree_topk, tree_temperature)
            chains = None
            if out.texts is not None:
                chains = [out.texts[r].propose(min(tree_lookup, out.remaining(r) - 1)) for r in rows.index.tolist()]
            step = _tree_step(model, rows, hidden, pending, k, tree, forward, sizer, window, chains)
        else:
            step = _chain_step(model, rows, hidden, pending, k, config, forward, generator, verify, window)
        if window is not None:  # the positions this step kept: the last one before it, then those it fed
            kept = torch.arange(step.depth + 1, device=hidden.device)[None] <= step.n_accepted[:, None]
            window = window.push(
                torch.cat([hidden[:, None], step.path_hidden[:, : step.depth]], dim=1),
                torch.cat([pending[:, None], step.accepted], dim=1),
                kept,
            )
        n_accepted, pending, hidden = step.n_accepted, step.pending, step.hidden
        stats.decode_steps += 1
        stats.draft_time_s += step.draft_s
        stats.draft_blocks += k > 0  # a step with nothing left to draft (ar, a row's last token) drafts no block
        for a, r in enumerate(rows.index.tolist()):
            n = int(n_accepted[a])
            taken = out.commit(r, step.accepted[a, :n].tolist())
            row = stats.rows[r]
            row.new_tokens += taken
            if k > 0 and verify:
                row.drafted += step.drafted
                row.accepted += n
                row.lookup_accepted += int(step.lookup_accepted[a]) if step.lookup_accepted is not None else 0
                row.accepted_lengths.append(n)
                for i in range(min(n + 1, k)):
                    stats.reached[i] += 1
                    stats.accepted_at[i] += int(i < n)
            if out.finished[r]:
                pending[a] = -1  # nothing more to commit for this row
        still = pending >= 0
        if not still.any():
            return
        if not still.all():
            rows.select(still)
            hidden, pending, window = hidden[still], pending[still], None if window is None else window[still]


@dataclass
class _Step:
    """One verified step: ``n_accepted`` (A,) of the ``accepted`` (A, k) drafted tokens were taken, ``pending``
    (A,) is the verifier's next token, ``path_hidden`` (A, k + 1, F) the head's inputs at the fed positions along
    the accepted path (the first n_accepted + 1 of them kept), ``drafted`` the number of drafted tokens fed per
    row, ``draft_s`` the seconds spent drafting them, ``lookup_accepted`` (A,) how many of the accepted tokens only
    a lookup chain had drafted (None without one)."""

    accepted: torch.Tensor
    n_accepted: torch.Tensor
    pending: torch.Tensor
    path_hidden: torch.Tensor
    drafted: int
    draft_s: float = 0.0
    lookup_accepted: torch.Tensor | None = None

    @property
    def depth(self) -> int:
        """k, the longest acceptable run: the draft's depth."""
        return self.accepted.shape[1]

    @property
    def hidden(self) -> torch.Tensor:
        """(A, F) the head's input at the last kept position."""
        return self.path_hidden[torch.arange(len(self.n_accepted)), self.n_accepted]


def _head_block(head, hidden: torch.Tensor, horizon: int, first=None, window: Window | None = None):
    """The head's block distribution after ``hidden``, given the rows' context ``window`` when it reads one."""
    return head(hidden, horizon=horizon, first=first, **({} if window is None else {"window": window}))


def _chain_step(model, rows, hidden, pending, k, config, forward, generator, verify=True, window=None) -> _Step:
    """Draft one chain of k tokens after ``pending`` and verify it (k = 0: a plain step; ``verify=False``: take
    the whole chain, the verifier choosing only the token after it)."""
    draft_s = 0.0
    if k > 0:
        start = time.perf_counter()
        block = _head_block(model.head, hidden, k + 1, pending, window)
        draft, draft_log_q = block.draft(config, prefix=pending[:, None], generator=generator)
        draft_s = time.perf_counter() - start
    else:
        draft = pending.new_zeros(len(pending), 0)
    mask, positions = rows.feed_inputs(k + 1)
    step_hidden, log_p = forward(torch.cat([pending[:, None], draft], dim=1), mask, positions)
    if k == 0 or not verify:
        n_accepted = torch.full_like(pending, k)
        pending = choose_tokens(log_p[:, k], config, generator)
    elif config.do_sample:
        n_accepted, pending = speculative_accept(draft, draft_log_q, log_p, generator)
    else:
        n_accepted, pending = greedy_accept(draft, log_p)
    rows.keep_first(k + 1, n_accepted + 1)
    return _Step(draft, n_accepted, pending, step_hidden, k, draft_s)


def _tree_step(model, rows, hidden, pending, k, shape, forward, sizer=None, window=None, chains=None) -> _Step:
    """Draft a tree of ``shape`` = (nodes, topk, temperature) (:func:`build_draft_tree`; depth <= k) after
    ``pending`` and verify it greedily (the first nodes of it, as many as ``sizer`` chooses, when given), with
    each row's lookup chain in ``chains`` grafted on (:func:`graft_chains`; the step's depth is then the deepest
    node's)."""
    start = time.perf_counter()
    block = _head_block(model.head, hidden, k + 1, pending, window)
    tree = build_draft_tree(block, pending, k, *shape)
    draft_s = time.perf_counter() - start
    if sizer is not None:
        tree = sizer.choose(tree, draft_s)
    head_nodes = tree.size
    if chains is not None:
        start = time.perf_counter()
        tree = graft_chains(tree, chains)
        k = max(k, int(tree.depths.max()))
        draft_s += time.perf_counter() - start
    start = time.perf_counter()
    mask, positions = rows.tree_inputs(tree, hidden.dtype)
    step_hidden, log_p = forward(torch.cat([pending[:, None], tree.tokens], dim=1), mask, positions)
    path, n_accepted, pending = greedy_accept_tree(tree.tokens, tree.parents, log_p, k)
    lookup_accepted = None
    if chains is not None:  # once the path leaves the head's nodes it stays on a chain's
        lookup_accepted = ((path[:, 1:] > head_nodes) & (path[:, 1:] != path[:, :-1])).sum(dim=1)
    if sizer is not None:  # the head's own part: the tokens its nodes carried, against its scores
        head_accepted = n_accepted if lookup_accepted is None else n_accepted - lookup_accepted
        sizer.observe(tree, time.perf_counter() - start, head_accepted)
    accepted = tree.tokens.gather(1, (path[:, 1:] - 1).clamp_min(0))  # (A, k) tokens along the path
    rows.keep_path(tree.size + 1, path, n_accepted + 1)
    along = path.clamp_min(0)[..., None].expand(-1, -1, step_hidden.shape[-1])
    return _Step(accepted, n_accepted, pending, step_hidden.gather(1, along), tree.size, draft_s, lookup_accepted)


def _draft_loop(model, rows, hidden, config, horizon, out, stats, forward, generator, window=None) -> None:
    """Take ``horizon`` tokens per pass from the joint head alone (lossy); ``window`` as in
    :func:`_speculative_loop`."""
    while True:
        k = min(horizon, max(out.remaining(r) for r in rows.index.tolist()))
        start = time.perf_counter()
        tokens = _draft_block(model.head, hidden, k, config, generator, window)
        stats.draft_time_s += time.perf_counter() - start
        stats.draft_blocks += 1
        for a, r in enumerate(rows.index.tolist()):
            stats.rows[r].new_tokens += out.commit(r, tokens[a].tolist())
        keep = torch.tensor([not out.finished[r] for r in rows.index.tolist()], device=hidden.device)
        if not keep.any():
            return
        if not keep.all():
            rows.select(keep)
            tokens, hidden, window = tokens[keep], hidden[keep], None if window is None else window[keep]
        mask, positions = rows.feed_inputs(k)
        step_hidden, _ = forward(tokens, mask, positions)
        stats.decode_steps += 1
        rows.keep_first(k, torch.full_like(rows.next_pos, k))
        if window is not None:
            fed = torch.cat([hidden[:, None], step_hidden[:, :-1]], dim=1)
            window = window.push(fed, tokens, torch.ones_like(tokens, dtype=torch.bool))
        hidden = step_hidden[:, -1]


def _draft_block(head, hidden: torch.Tensor, k: int, config: SamplingConfig, generator, window=None) -> torch.Tensor:
    """(A, k) tokens from the head alone; a token-conditioned head first chooses y_1, then the rest given it."""
    if not head.token_conditioned or k == 1:
        return _head_block(head, hidden, k, window=window).draft(config, generator=generator)[0]
    first, _ = head(hidden, horizon=1).draft(config, generator=generator)
    rest, _ = head(hidden, horizon=k, first=first[:, 0]).draft(config, prefix=first, generator=generator)
    return torch.cat([first, rest], dim=1)


def _finish(input_ids, out: _Output, stats: GenerationStats, pad_token_id: int, streamer) -> GenerationOutput:
    if streamer is not None:
        streamer.end()
    batch, length = input_ids.shape
    sequences = input_ids.new_full((batch, length + out.max_new_tokens), pad_token_id)
    sequences[:, :length] = input_ids
    for r, tokens in enumerate(out.tokens):
        sequences[r, length : length + len(tokens)] = torch.tensor(tokens, dtype=sequences.dtype)
    return GenerationOutput(sequences=sequences, new_tokens=out.tokens, stats=stats)
