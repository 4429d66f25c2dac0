"""What sizing the draft tree per step could buy: fixed tree sizes, the sizer's rule and an oracle, replayed.

    python benchmarks/tree_oracle.py --head DIR --dataset mt_bench [--prompts 40] [--nodes 32] [--topk 4]
        [--ar_ms 26.4] [--token_ms 0.6] [--draft_ms 3.5] [--out FILE]

Decodes the prompts once with a large tree (``--nodes``), recording every step's nodes in the order the tree
keeps them (best first: its first n nodes are the n-node tree) with the head's log q of each node's prefix, and the
path greedy verification accepted. Because verification is lossless, the decoded text does not depend on the tree,
so cutting a recorded tree to its first n nodes replays what an n-node tree would have accepted at that step: the
accepted path's leading nodes with index <= n. Three policies are replayed on the same steps:

- fixed n: every step verifies n nodes;
- sized: each step keeps the n maximising (1 + s sum_{i <= n} q_i) / (cost(n + 1) + draft), the rule of
  ``speculative_tree_auto`` (tjdnet.decoding.tree_size), with s the accepted / expected ratio over all steps;
- oracle: each step keeps the n that maximises its own accepted tokens per millisecond, knowing the path.

Also printed: the nodes bucketed by their score q, with how often each bucket lay on the accepted path (whether
the head is calibrated node by node), and the steps bucketed by the verifier's probability of their root token
(known before drafting), with what 8 nodes accepted in each (whether the verifier's certainty tells long steps).

Times come from a linear model of a step, fitted to measured loops (benchmarks/tree_shapes.py): an `ar` step of
``--ar_ms``, a verifying pass ``--token_ms`` dearer per token beyond the first, plus ``--draft_ms`` of drafting and
bookkeeping per tree step (the defaults fit MT-Bench's 8x4, 12x4 and 16x4 loops on a 2-core AMD EPYC to ~0.5 ms).
Printed: tau (tokens per step) and the modelled speedup over `ar` of each policy.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math

import real_prompts

from tjdnet.decoding import mode_arguments

GENERATE = importlib.import_module("tjdnet.decoding.generate")


def record(model, tokenizer, prompts, nodes: int, topk: int, max_new_tokens: int) -> list[dict]:
    """[{"log_q": node scores best first, "path": accepted node indices from depth 1, "root_p": the verifier's
    probability of the step's root token (known before the step; None at a prompt's first step)}] for every tree
    step, the prompts decoded one at a time."""
    steps, last = [], {}
    build, accept = GENERATE.build_draft_tree, GENERATE.greedy_accept_tree

    def recording_build(*args, **kwargs):
        last["tree"] = build(*args, **kwargs)
        return last["tree"]

    def recording_accept(tokens, parents, log_p, depth):
        path, n_accepted, after = accept(tokens, parents, log_p, depth)
        end = int(n_accepted[0])
        steps.append(
            {"log_q": last["tree"].log_q[0].tolist(), "path": path[0, 1 : end + 1].tolist(), "root_p": last["root_p"]}
        )
        last["root_p"] = float(log_p[0, path[0, end]].float().softmax(-1).max())  # the next step's root
        return path, n_accepted, after

    GENERATE.build_draft_tree, GENERATE.greedy_accept_tree = recording_build, recording_accept
    try:
        for ids in prompts:
            last["root_p"] = None
            kwargs = mode_arguments("speculative_tree", nodes, topk, tree_lookup=0)  # the head's nodes only
            model.generate(ids, max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id, **kwargs)
    finally:
        GENERATE.build_draft_tree, GENERATE.greedy_accept_tree = build, accept
    return steps


def accepted(step: dict, n: int) -> int:
    """Drafted tokens the first n nodes of the step's tree accept: the path's leading nodes among them."""
    count = 0
    for node in step["path"]:
        if node > n:
            break
        count += 1
    return count


def replay(steps: list[dict], sizes: list[int], step_ms) -> dict:
    """tau and tokens per millisecond when step i verifies sizes[i] nodes."""
    tokens = sum(1 + accepted(step, n) for step, n in zip(steps, sizes, strict=True))
    return {"tau": tokens / len(steps), "tokens_per_ms": tokens / sum(step_ms(n) for n in sizes)}


def calibration(steps: list[dict], n: int) -> float:
    """Accepted / expected drafted tokens of the steps' first n nodes, expected under the head's scores."""
    return sum(accepted(s, n) for s in steps) / sum(sum(math.exp(v) for v in s["log_q"][:n]) for s in steps)


def by_root_confidence(steps: list[dict], n: int, edges=(0.0, 0.3, 0.5, 0.7, 0.9, 0.97)) -> list[dict]:
    """Per bucket of the verifier's probability of the root: steps, mean tokens the first n nodes accept, and
    accepted / expected under the head's scores (does the verifier's own certainty tell the long steps?)."""
    rows = []
    for low, high in zip(edges, (*edges[1:], 1.01), strict=True):
        chosen = [s for s in steps if s["root_p"] is not None and low <= s["root_p"] < high]
        if chosen:
            took = sum(accepted(s, n) for s in chosen) / len(chosen)
            rows.append({"root_p": [low, high], "steps": len(chosen), "accepted": took,
                         "calibration": calibration(chosen, n)})  # fmt: skip
    return rows


def by_node_score(steps: list[dict], edges=(0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)) -> list[dict]:
    """Per bucket of a node's score q (the head's probability of its prefix): nodes, mean q, and how often the
    node lay on the accepted path (a calibrated head: as often as q)."""
    rows, scores = [], [(math.exp(v), i in s["path"]) for s in steps for i, v in enumerate(s["log_q"], start=1)]
    for low, high in zip(edges, (*edges[1:], 1.01), strict=True):
        chosen = [(q, hit) for q, hit in scores if low <= q < high]
        if chosen:
            rows.append({"q": [low, high], "nodes": len(chosen), "mean_q": sum(q for q, _ in chosen) / len(chosen),
                         "on_path": sum(hit for _, hit in chosen) / len(chosen)})  # fmt: skip
    return rows


def sized(step: dict, scale: float, step_ms) -> int:
    """The sizer's choice for one step: the n with the best expected tokens per millisecond, the head's expected
    tokens scaled by ``scale`` (its :func:`calibration`)."""
    expected, best, best_n = 0.0, -1.0, 1
    for n, log_q in enumerate(step["log_q"], start=1):
        expected += math.exp(log_q)
        rate = (1 + scale * expected) / step_ms(n)
        if rate > best:
            best, best_n = rate, n
    return best_n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    real_prompts.add_arguments(parser)
    parser.add_argument("--nodes", type=int, default=32, help="the recorded tree's size")
    parser.add_argument("--topk", type=int, default=4)
    parser.add_argument("--ar_ms", type=float, default=26.4, help="an ar step, ms")
    parser.add_argument("--token_ms", type=float, default=0.6, help="a verifying pass's cost per extra token, ms")
    parser.add_argument("--draft_ms", type=float, default=3.5, help="drafting and bookkeeping per tree step, ms")
    parser.add_argument("--out", help="write the report as JSON here")
    args = parser.parse_args()
    model, tokenizer, prompts = real_prompts.load(args)
    steps = record(model, tokenizer, prompts, args.nodes, args.topk, args.max_new_tokens)

    def step_ms(n: int) -> float:
        return args.ar_ms + args.token_ms * n + args.draft_ms

    ar_rate = 1 / args.ar_ms
    report = {}
    for n in sorted({n for n in (1, 2, 4, 6, 8, 10, 12, 16, 24) if n < args.nodes} | {args.nodes}):
        report[f"fixed {n}"] = replay(steps, [n] * len(steps), step_ms)
    at_8 = calibration(steps, 8)
    report["sized"] = replay(steps, [sized(s, at_8, step_ms) for s in steps], step_ms)
    best = [max(range(1, len(s["log_q"]) + 1), key=lambda n, s=s: (1 + accepted(s, n)) / step_ms(n)) for s in steps]
    report["oracle"] = replay(steps, best, step_ms)
    for name, row in report.items():
        row["speedup_vs_ar"] = row.pop("tokens_per_ms") / ar_rate
        print(f"{args.dataset} {name:9s} tau {row['tau']:.3f}  modelled {row['speedup_vs_ar']:.3f}x")
    buckets = by_root_confidence(steps, 8)
    for row in buckets:
        low, high = row["root_p"]
        print(f"root p in [{low:.2f}, {high:.2f}): {row['steps']} steps, {row['accepted']:.2f} accepted of 8 nodes, "
              f"calibration {row['calibration']:.2f}")  # fmt: skip
    nodes = by_node_score(steps)
    for row in nodes:
        print(f"node q in [{row['q'][0]:.2f}, {row['q'][1]:.2f}): {row['nodes']} nodes, mean q {row['mean_q']:.3f}, "
              f"on the accepted path {row['on_path']:.3f}")  # fmt: skip
    payload = {
        "args": vars(args), "steps": len(steps), "calibration_at_8": at_8, "report": report,
        "by_root_confidence_at_8": buckets, "by_node_score": nodes,
    }  # fmt: skip
    print(json.dumps(payload))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(payload, f, indent=1)


if __name__ == "__main__":
    main()
