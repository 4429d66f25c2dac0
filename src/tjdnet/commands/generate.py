"""``tjdnet generate``: stream a completion of ``--prompt`` with the chosen mode, then print its stats."""

from __future__ import annotations

import torch
from transformers import TextStreamer

from tjdnet.commands.options import DecodingOptions, load_for_decoding, parse_call
from tjdnet.data import Example, encode_prompt
from tjdnet.decoding import GenerationOutput

DEFAULT_MODEL = "smollm2-135m"


def run_generate(
    prompt: str,
    ckpt_path: str | None = None,
    model: str | None = None,
    gen_mode: str = "speculative",
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    verify_with_base: bool = False,
    seed: int = 0,
    **options,
) -> GenerationOutput:
    """Generate a completion of ``prompt`` (chat-formatted when the model has a template), streamed to stdout.

    Args:
        prompt: the user's message.
        ckpt_path: a run's checkpoint or a save_pretrained directory (a joint head).
        model: a base model when no checkpoint is given (default smollm2-135m; ar mode only).
        gen_mode: ar, draft, draft_anchored, speculative, speculative_tree or speculative_tree_auto.
        do_sample: sample instead of greedy decoding.
        temperature: sampling temperature.
        top_k: keep the k most likely tokens when sampling.
        top_p: nucleus sampling mass.
        verify_with_base: a LoRA checkpoint verifies with the original model (adapters off) instead of merging.
        seed: seed of the sampler.
        **options: the fields of :class:`~tjdnet.commands.options.DecodingOptions`.
    """
    decoding = DecodingOptions(**options)
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("the prompt is not valid UTF-8 text") from None
    if ckpt_path is not None and model is not None:
        raise ValueError("give --ckpt_path (a trained checkpoint) or --model (a base model), not both")
    kwargs = decoding.generate_kwargs(gen_mode)
    decoding.apply_threads()
    tjd, tokenizer, _, _ = load_for_decoding(
        ckpt_path,
        model or DEFAULT_MODEL if ckpt_path is None else None,
        decoding.dtype,
        merge_lora=not verify_with_base,
        device=decoding.device,
    )
    ids = torch.tensor([encode_prompt(tokenizer, Example(prompt, None))], device=decoding.device)
    out = tjd.generate(
        ids,
        **kwargs,
        do_sample=do_sample,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        eos_token_id=tokenizer.eos_token_id,
        streamer=TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True),
        verify_with_base=verify_with_base,
        generator=torch.Generator(device=decoding.device).manual_seed(seed),
    )
    s = out.stats
    print(
        f"[{gen_mode}] {s.new_tokens} tokens, {s.forward_passes} forward passes, tau={s.tau:.2f}, "
        f"acceptance={s.acceptance_rate:.2f}, lookup share={s.lookup_share:.2f}, prefill={s.prefill_time_s:.3f}s, "
        f"decode={s.decode_time_s:.3f}s, "
        f"{s.tokens_per_s:.1f} tokens/s"
    )
    return out


def run_generate_cli(args: list[str]) -> GenerationOutput:
    return parse_call(run_generate, args, "tjdnet generate", "Generate a completion, streamed.")
