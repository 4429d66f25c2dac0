"""``tjdnet generate``: stream a completion of ``--prompt`` with the chosen mode, then print its stats."""

from __future__ import annotations

import torch
from jsonargparse import ArgumentParser
from transformers import TextStreamer

from tjdnet.data import Example, encode_prompt
from tjdnet.decoding import NAMED_MODES, add_decoding_arguments, mode_arguments


def run_generate_cli(args: list[str]):
    parser = ArgumentParser(prog="tjdnet generate", description="Generate a completion, streamed.")
    parser.add_argument("--prompt", type=str, required=True)
    parser.add_argument("--ckpt_path", type=str | None, default=None, help="a run's checkpoint (joint head)")
    parser.add_argument("--model", type=str, default="smollm2-135m", help="base model when no checkpoint is given")
    parser.add_argument("--gen_mode", type=str, default="speculative", help=", ".join(NAMED_MODES))
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--do_sample", type=bool, default=False)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top_k", type=int | None, default=None)
    parser.add_argument("--top_p", type=float | None, default=None)
    parser.add_argument("--horizon", type=int | None, default=None)
    add_decoding_arguments(parser)
    parser.add_argument("--dtype", type=str | None, default=None)
    parser.add_argument("--verify_with_base", type=bool, default=False, help="LoRA: verify with the original model")
    parser.add_argument("--seed", type=int, default=0)
    cfg = parser.parse_args(args)
    mode = mode_arguments(cfg.gen_mode, cfg.tree_nodes, cfg.tree_topk, cfg.attention)
    if cfg.ckpt_path is not None:
        from tjdnet.training.restore import load_trained

        module, _ = load_trained(cfg.ckpt_path, cfg.dtype)
        model, tokenizer = module.model, module.tokenizer
        if not cfg.verify_with_base:
            model.merge_adapters()
    else:
        from tjdnet.model import TJDModel

        model, tokenizer = TJDModel.from_base(cfg.model, dtype=cfg.dtype or "float32", head="stp", horizon=1, rank=1)
        model.eval()
    ids = torch.tensor([encode_prompt(tokenizer, Example(cfg.prompt, None))])
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    out = model.generate(
        ids,
        **mode,
        max_new_tokens=cfg.max_new_tokens,
        do_sample=cfg.do_sample,
        temperature=cfg.temperature,
        top_k=cfg.top_k,
        top_p=cfg.top_p,
        eos_token_id=tokenizer.eos_token_id,
        horizon=cfg.horizon,
        streamer=streamer,
        verify_with_base=cfg.verify_with_base,
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    s = out.stats
    print(
        f"[{cfg.gen_mode}] {s.new_tokens} tokens, {s.forward_passes} forward passes, tau={s.tau:.2f}, "
        f"acceptance={s.acceptance_rate:.2f}, prefill={s.prefill_time_s:.3f}s, decode={s.decode_time_s:.3f}s, "
        f"{s.tokens_per_s:.1f} tokens/s"
    )
    return out
