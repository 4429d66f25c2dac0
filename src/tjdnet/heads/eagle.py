"""``eagle``: an EAGLE-1-style autoregressive drafter (Li et al. 2024) behind the head interface.

The drafter predicts the backbone's next hidden state from the current one and the token after it, and reads
each drafted token's distribution off the backbone's shared output embedding E:

    u_k = W_in [n(f_{k-1}); n(e(y_k))] + p_k + c    f_0 = h, the backbone's hidden state before the block
    a_k = u_k + Attn(n(u_k); n(u_1), ..., n(u_k))  causal self-attention over the drafted block
    f_k = f_{k-1} + W_out (a_k + MLP(n(a_k)))       W_out is zero at first, so f_k starts as f_{k-1}
    q(y_1 | h) = softmax(E h)                       the backbone's own next-token distribution
    q(y_{k+1} | y_1..y_k, h) = softmax(E f_k)

with n an RMS normalisation, e the backbone's (frozen) input embedding, p_k a learned position vector and c the
fused intermediate-layer features of the same position (EAGLE-3; ``TJDConfig.feature_layers``, zero without). The
block's distribution is the product of these conditionals, exact by construction, and every drafted token is
conditioned on the ones before it (what a joint head approximates with R components). Drafting costs H - 1 small
steps and no backbone pass. Unlike EAGLE the drafter attends over the drafted block only, not the whole prefix:
h already summarises the prefix, and no drafter KV cache has to follow the verifier's rollbacks.

Training uses the same steps with teacher forcing (the true y_k as inputs, the drafter's own f_{k-1}), i.e.
the drafter is trained on the features it will itself produce at inference.

With a context window W (``HeadConfig.context_window``) the attention also reads the W latest positions before
the block, as EAGLE's drafter reads the prefix: each a layer input w_j = W_in [n(h_j); n(e(x_{j+1}))] + p'_j +
c_j built from the backbone's feature h_j there and the token after it (:mod:`tjdnet.heads.window`), so the
drafter sees which tokens came just before, and not only the summary h of them.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from tjdnet.heads.base import HeadConfig, JointHead, rms_norm
from tjdnet.heads.block import SequentialDraft
from tjdnet.heads.vocab import DraftVocab
from tjdnet.heads.window import Window
from tjdnet.tensorops.logspace import IGNORE_INDEX

HEAD_DIM = 64


class EagleHead(JointHead):
    """Autoregressive feature drafter; ``hidden_dim`` is the width of its MLP."""

    uses_adapters = False

    def __init__(self, config: HeadConfig, unembedding: nn.Module, embedding: nn.Module | None = None) -> None:
        super().__init__(config, unembedding, embedding)
        if embedding is None:
            raise ValueError("the eagle head needs the backbone's input embedding")
        d = config.hidden_size
        self.heads = max(1, d // HEAD_DIM) if d % HEAD_DIM == 0 else 1
        self.fuse = nn.Linear(2 * d, d, bias=False)
        self.position = nn.Parameter(torch.zeros(config.horizon, d))
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.attn_out = nn.Linear(d, d, bias=False)
        self.mlp_in = nn.Linear(d, config.hidden_dim, bias=False)
        self.mlp_out = nn.Linear(config.hidden_dim, d, bias=False)
        self.out = nn.Linear(d, d, bias=False)
        nn.init.zeros_(self.out.weight)
        self.window_position = nn.Parameter(torch.zeros(config.context_window, d)) if config.context_window else None

    @property
    def window_size(self) -> int:
        """W, the latest positions before the block the drafter attends over (0: none)."""
        return self.config.context_window

    def layer_input(self, f: torch.Tensor, tokens: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """W_in [n(f); n(e(tokens))] + context (..., D): a feature and the token after it, as the layer reads them."""
        dtype = self.fuse.weight.dtype
        e = self.embedding(tokens).to(dtype)
        return self.fuse(torch.cat([rms_norm(f.to(dtype)), rms_norm(e)], dim=-1)) + context.to(dtype)

    def window_keys(self, window: Window | None) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """A context window as the drafter attends over it, or None without one: (the attention keys and values of
        its W positions (B, 2 W D), laid out as a state's cache (:meth:`step`), so that they join the block's keys
        in one product; a score bias (B, W), 0 at the slots that hold a position and -inf at the others, or None
        when every slot holds one)."""
        if window is None or self.window_position is None:
            return None
        if window.size != self.window_size:
            raise ValueError(f"a window of {window.size} positions was given to a drafter of {self.window_size}")
        d = self.config.hidden_size
        w = self.layer_input(window.features[..., :d], window.tokens, self.context(window.features))
        kv = nn.functional.linear(rms_norm(w + self.window_position), self.qkv.weight[d:])  # no queries needed
        valid = window.valid
        bias = None if bool(valid.all()) else torch.zeros_like(valid, dtype=kv.dtype).masked_fill(~valid, -math.inf)
        return kv.flatten(-2), bias

    def step(self, message: torch.Tensor, k: int, tokens: torch.Tensor, window: tuple | None = None) -> torch.Tensor:
        """The drafter state after observing ``tokens`` (B, ...) at block position k (0-based); ``window``: the
        :meth:`window_keys` of the rows' context windows (the state already holds their keys, from
        :meth:`initial_state`; the score bias is read from here).

        A state (B, ..., (2 W + 2j + 2) D) packs the current feature f_j, the context c and the attention keys and
        values of the W window positions and of the layer inputs u_1..u_j of the block (each input is projected
        once, when it is observed).
        """
        d = self.config.hidden_size
        dtype = self.fuse.weight.dtype
        f, context, cache = message[..., :d].to(dtype), message[..., d : 2 * d], message[..., 2 * d :].to(dtype)
        u = self.layer_input(f, tokens, context) + self.position[k]
        q, key, value = self.qkv(rms_norm(u)).unflatten(-1, (3, self.heads, -1)).unbind(-3)  # (..., heads, hd)
        cache = torch.cat([cache, key.flatten(-2), value.flatten(-2)], dim=-1)
        keys, values = cache.unflatten(-1, (-1, 2, self.heads, q.shape[-1])).unbind(-3)  # (..., W + j + 1, heads, hd)
        scores = _dot(q, keys) / math.sqrt(q.shape[-1])
        bias = None if window is None else window[1]
        if bias is not None:  # slots of the window that hold no position yet
            size = bias.shape[-1]
            bias = bias.reshape(bias.shape[0], *([1] * (q.dim() - 2)), size)  # (B, 1 per node dim, 1 head, W)
            scores = torch.cat([scores[..., :size] + bias, scores[..., size:]], dim=-1)
        mixed = (scores.float().softmax(-1).to(dtype).transpose(-1, -2)[..., None] * values).sum(-3)
        a = u + self.attn_out(mixed.flatten(-2))
        m = a + self.mlp_out(torch.nn.functional.silu(self.mlp_in(rms_norm(a))))
        return torch.cat([f + self.out(m), context, cache], dim=-1)

    def initial_state(self, h: torch.Tensor, window: tuple | None = None) -> torch.Tensor:
        """(B, (2 + 2W) D) the state before the block, [f_0; c; the window's keys and values], from the head's input
        h (B, (1 + n) D) and the rows' context ``window`` (:meth:`window_keys`; W = 0 without one)."""
        parts = [h[..., : self.config.hidden_size], self.context(h)]
        if window is not None:
            parts.append(window[0])
        return torch.cat(parts, dim=-1)

    def emission_logits(self, message: torch.Tensor, draft: bool = True) -> torch.Tensor:
        """(..., V) float32 logits (over the draft vocabulary, when set and ``draft``) of the state's feature."""
        f = message[..., : self.config.hidden_size]
        layer = self.draft_unembedding() if draft and self.draft_vocab is not None else self.unembedding
        flat = f.reshape(-1, f.shape[-1]).to(layer.weight.dtype)
        return layer(flat).float().unflatten(0, f.shape[:-1])

    def forward(
        self,
        h: torch.Tensor,
        horizon: int | None = None,
        first: torch.Tensor | None = None,
        window: Window | None = None,
    ) -> DrafterBlock:
        """The drafter's distribution of the first ``horizon`` (default H) tokens after h (B, (1 + n) D), given the
        rows' context ``window`` (W > 0: without one, the drafter attends over the block only)."""
        self.check_hidden(h)
        vocab = None if self.draft_vocab is None else self.draft_vocab.to(h.device)
        return DrafterBlock(self, h, self.horizon if horizon is None else horizon, vocab, self.window_keys(window))

    def log_prob(
        self,
        h: torch.Tensor,
        y: torch.Tensor,
        first: torch.Tensor | None = None,
        draft: bool = False,
        inputs: torch.Tensor | None = None,
        window: Window | None = None,
    ) -> torch.Tensor:
        """log q(y | h) (B,) by teacher forcing, for h (B, (1 + n) D), y (B, H), given the context ``window``.

        -100 targets contribute nothing; as inputs of later steps they are read as ``first`` (position 0) or
        token 0, so ignored targets must end the block (as past the end of an answer) for the result to be a
        marginal. ``draft``: the distribution drafted from the draft vocabulary, targets outside it ignored.
        ``inputs`` (B, H): the tokens fed at each step instead of y's (the text, when y are another model's
        predictions of it); the result is then log q(y_k | inputs_<k, h) summed, not a joint of y.
        """
        return self.scored(h, y, first, draft, inputs, window)[0]

    def scored(
        self,
        h: torch.Tensor,
        y: torch.Tensor,
        first: torch.Tensor | None = None,
        draft: bool = False,
        inputs: torch.Tensor | None = None,
        window: Window | None = None,
        distributions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(:meth:`log_prob` (B,), the drafted features f_1..f_{H-1} (B, H - 1, D) it read them from, and with
        ``distributions`` the whole conditionals log q(. | inputs_<k, h) (B, H, V) float32 it picked from, else
        None; V is the draft vocabulary's size when ``draft``)."""
        self.check_hidden(h)
        self.check_targets(y)
        if inputs is not None and inputs.shape != y.shape:
            raise ValueError(f"inputs {tuple(inputs.shape)} must have the targets' shape {tuple(y.shape)}")
        inputs = (y if inputs is None else inputs).clamp_min(0)
        if first is not None:
            inputs = torch.cat([first[:, None], inputs[:, 1:]], dim=1)
        targets = y
        in_subset = draft and self.draft_vocab is not None
        if in_subset:
            local = self.draft_vocab.to(y.device).local(y.clamp_min(0))
            targets = torch.where((y == IGNORE_INDEX) | (local < 0), IGNORE_INDEX, local)
        window_keys = self.window_keys(window)
        picked, drafted, log_q = self.teacher_forced(
            h, inputs, targets.clamp_min(0), in_subset, window_keys, distributions
        )
        return (picked * (targets != IGNORE_INDEX)).sum(-1), drafted, log_q

    def feature_loss(self, drafted: torch.Tensor, backbone: torch.Tensor, found: torch.Tensor) -> torch.Tensor:
        """EAGLE's regression loss: the mean smooth-L1 distance (per feature) of drafted features f_k (B, K, D)
        to the backbone's own last hidden states at the same positions (B, K, D), where ``found`` (B, K)."""
        distance = torch.nn.functional.smooth_l1_loss(drafted, backbone.to(drafted.dtype), reduction="none").mean(-1)
        return (distance * found).sum() / found.sum().clamp_min(1)

    def teacher_loss(
        self, log_q: torch.Tensor, backbone: torch.Tensor, found: torch.Tensor, draft: bool = False
    ) -> torch.Tensor:
        """KL(p || q) of the backbone's own next-token distribution p = softmax(E h') from its last hidden states
        h' (B, K, D) to the drafter's conditionals log q (B, K, V) at the same positions, averaged where ``found``
        (B, K): soft targets (the backbone's whole ranking, not just its argmax). ``draft``: both over the draft
        vocabulary (p renormalised there) when the head has one, as ``log_q`` is when drafted from it."""
        with torch.no_grad():
            log_p = torch.log_softmax(self.emission_logits(backbone, draft=draft), dim=-1)
        kl = (log_p.exp() * (log_p - log_q)).sum(-1)
        return (kl * found).sum() / found.sum().clamp_min(1)

    def teacher_forced(
        self,
        h: torch.Tensor,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        draft: bool,
        window: tuple | None = None,
        distributions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """((B, L) float32 log q(targets[:, k] | inputs[:, :k], h), the features f_1..f_{L-1} (B, L - 1, D), and
        with ``distributions`` the conditionals (B, L, V) float32, else None): the drafter fed ``inputs`` (B, L)
        (vocabulary ids), scoring ``targets`` (B, L) (indices into the draft vocabulary when ``draft``, else
        vocabulary ids); ``window``: :meth:`window_keys`."""
        message, picked, drafted, conditionals = self.initial_state(h, window), [], [], []
        d = self.config.hidden_size
        for k in range(targets.shape[1]):
            if k > 0:
                message = self.step(message, k - 1, inputs[:, k - 1], window)
                drafted.append(message[..., :d])
            log_q = torch.log_softmax(self.emission_logits(message, draft=draft), dim=-1)
            picked.append(log_q.gather(-1, targets[:, k, None]).squeeze(-1))
            if distributions:
                conditionals.append(log_q)
        features = torch.stack(drafted, dim=1) if drafted else message.new_zeros(message.shape[0], 0, d)
        return torch.stack(picked, dim=1), features, torch.stack(conditionals, dim=1) if distributions else None


def _dot(q: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """(..., heads, J) dot products of queries q (..., heads, hd) with keys (..., J, heads, hd). A broadcast product
    and a sum: for the few keys of a drafted block, 4x cheaper than the batched matrix product einsum makes."""
    return (q[..., None, :, :] * keys).sum(-1).transpose(-1, -2)


class DrafterBlock(SequentialDraft):
    """An :class:`EagleHead`'s distribution of the next ``horizon`` tokens after h (B, D), drafted step by step.

    Messages are drafter states (B, ..., (2j + 2) D) (:meth:`EagleHead.step`); conditionals are over the draft
    vocabulary when ``vocab`` is set.
    """

    def __init__(
        self, head: EagleHead, h: torch.Tensor, horizon: int, vocab: DraftVocab | None, window: tuple | None = None
    ) -> None:
        self.head, self.h, self.horizon, self.vocab, self.window = head, h, horizon, vocab, window

    @property
    def batch_size(self) -> int:
        return self.h.shape[0]

    @property
    def emission_size(self) -> int:
        return self.head.config.vocab_size if self.vocab is None else self.vocab.size

    def start(self) -> torch.Tensor:
        return self.head.initial_state(self.h, self.window)

    def conditional(self, message: torch.Tensor, k: int) -> torch.Tensor:
        """(B, ..., V) log q(y_k | y_<k) given states (B, ..., M) before position k."""
        return torch.log_softmax(self.head.emission_logits(message), dim=-1)

    def observe(self, message: torch.Tensor, k: int, tokens: torch.Tensor) -> torch.Tensor:
        """States (B, ..., M) after observing tokens (B, ...) at position k (vocabulary ids)."""
        return self.head.step(message, k, tokens, self.window)

    def token_ids(self, index: torch.Tensor) -> torch.Tensor:
        return index if self.vocab is None else self.vocab.ids[index]

    def log_prob(self, y: torch.Tensor) -> torch.Tensor:
        """Exact log q(y) (B,) for blocks y (B, L) of vocabulary ids, L <= horizon; -inf for a token the draft
        vocabulary lacks. -100 positions ending a block are marginalised (they contribute nothing)."""
        tokens = y.clamp_min(0)
        local = tokens if self.vocab is None else self.vocab.local(tokens)
        picked, _, _ = self.head.teacher_forced(self.h, tokens, local.clamp_min(0), self.vocab is not None, self.window)
        picked = picked.masked_fill(local < 0, float("-inf"))
        return torch.where(y != IGNORE_INDEX, picked, 0.0).sum(-1)
