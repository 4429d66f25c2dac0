"""Trees sized per step (tree_size="auto"): the expected-rate choice, the measured pass cost, and losslessness."""

import pytest
import torch
from test_generate import EOS, build, ragged_prompts

from tjdnet.decoding import AUTO_TREE_MODE, mode_arguments
from tjdnet.decoding.tree import DraftTree, build_draft_tree
from tjdnet.decoding.tree_size import PassCost, TreeSizer, best_tree_size, measure_pass_cost, monotone_fit


def test_pass_cost_interpolates_between_measured_widths_and_never_decreases():
    cost = PassCost.interpolated([1, 5, 9], [1.0, 1.0, 3.0])
    assert cost.max_tokens == 9
    assert cost.at(torch.tensor([1, 3, 5, 7, 9])).tolist() == [1.0, 1.0, 1.0, 2.0, 3.0]
    cost.observe(3, 2.0, smoothing=0.5)  # a pass of 3 tokens took 2.0: its cost moves half way, to 1.5
    # wider is never cheaper: the dip after it is pooled with it, (1.5 + 1 + 1) / 3
    assert cost.at(torch.tensor([2, 3, 4, 5, 6])).tolist() == pytest.approx([1.0, 7 / 6, 7 / 6, 7 / 6, 1.5])


def test_monotone_fit_pools_decreasing_runs_and_keeps_an_outlier_local():
    assert monotone_fit(torch.tensor([1.0, 2.0, 2.0, 5.0])).tolist() == [1.0, 2.0, 2.0, 5.0]  # already monotone
    assert monotone_fit(torch.tensor([1.0, 3.0, 2.0, 4.0])).tolist() == [1.0, 2.5, 2.5, 4.0]
    # a slow first timing (a cold pass) is averaged away rather than lifting every width after it to 28
    fit = monotone_fit(torch.tensor([28.0, 23.0, 24.0, 25.0, 26.0, 27.0, 29.0]))
    assert fit.tolist() == pytest.approx([25.0, 25.0, 25.0, 25.0, 26.0, 27.0, 29.0])
    assert torch.all(fit[1:] >= fit[:-1])
    noisy = torch.rand(40, generator=torch.Generator().manual_seed(0)).double()
    fit = monotone_fit(noisy)
    assert torch.all(fit[1:] >= fit[:-1]) and fit.sum().item() == pytest.approx(noisy.sum().item())


def test_best_tree_size_takes_nodes_while_they_pay_for_their_pass():
    cost = PassCost([1.0, 1.0, 1.0, 1.5, 2.0])  # up to 2 nodes are free, 4 cost double
    sure = torch.log(torch.tensor([[0.9, 0.8, 0.7, 0.6]]))
    assert best_tree_size(sure, cost) == 2  # 1 + 1.7 in one pass beats 1 + 3.0 in two
    cheap = PassCost([1.0] * 5)
    assert best_tree_size(sure, cheap) == 4  # free nodes: take them all
    unlikely = torch.log(torch.tensor([[0.9, 0.01, 0.01, 0.01]]))
    assert best_tree_size(unlikely, PassCost([1.0, 1.0, 1.2, 1.3, 1.5])) == 1
    # drafting time counts in every step, so it favours wider trees: (2.7 + ...) / (1 + d) vs (4 + ...) / (2 + d)
    assert best_tree_size(sure, cost, draft_seconds=100.0) == 4


def test_best_tree_size_sums_the_batch():
    cost = PassCost([1.0, 1.0, 1.35])
    rows = torch.log(torch.tensor([[0.9, 0.3], [0.9, 0.9]]))  # row 1 alone would take 2 nodes, row 0 alone 1
    assert best_tree_size(rows[:1], cost) == 1 and best_tree_size(rows[1:], cost) == 2
    assert best_tree_size(rows, cost) == 1  # (2 + 1.8) / 1.0 = 3.8 beats (2 + 3.0) / 1.35 = 3.7


def test_measured_pass_cost_covers_every_width_and_never_decreases():
    calls = []

    def run_pass(width):
        calls.append(width)

    cost = measure_pass_cost(run_pass, max_tokens=12, repeats=2)
    assert cost.max_tokens == 12
    assert calls[0] == 12 and sorted(set(calls)) == [1, 2, 3, 5, 9, 12] and len(calls) == 1 + 2 * 6


def test_first_nodes_of_a_built_tree_form_a_tree():
    model = build("llama", "mps", 4, rank=2, perturb=0.5)
    ids, _ = ragged_prompts(3, seed=1)
    hidden = model.hidden_states(ids)[:, -1]
    root = ids[:, -1]
    tree = build_draft_tree(model.head(hidden, horizon=4, first=root), root, 3, 10, 3)
    assert torch.all(tree.log_q[:, 1:] <= tree.log_q[:, :-1])  # best first
    for n in (1, 4, 10):
        part = tree.first(n)
        assert part.size == n and torch.all(part.parents < torch.arange(1, n + 1))


def test_tree_sizer_learns_costs_draft_time_and_calibration_from_its_steps():
    tree = DraftTree(
        tokens=torch.tensor([[5, 6, 7]]),
        parents=torch.tensor([[0, 1, 2]]),
        depths=torch.tensor([[1, 2, 3]]),
        log_q=torch.log(torch.tensor([[0.9, 0.8, 0.01]])),
    )
    sizer = TreeSizer(PassCost([1.0, 1.0, 1.0, 2.0]), smoothing=0.5)
    kept = sizer.choose(tree, 0.5)
    assert kept.size == 2 and sizer.draft_seconds == 0.5
    sizer.choose(tree, 1.5)
    assert sizer.draft_seconds == 0.5 * 0.5 + 0.5 * 1.5
    sizer.observe(kept, 3.0, torch.tensor([0]))  # the 3-token pass took 3.0 and nothing was accepted
    assert sizer.cost.at(torch.tensor([3])).item() == 2.0
    assert sizer.calibration == pytest.approx(0.5 / (0.5 + 0.5 * 1.7))  # accepted 0 of an expected 1.7


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize("head", ["mps", "eagle"])
@pytest.mark.parametrize("batch", [1, 3])
def test_auto_sized_tree_speculative_equals_ar(kind, head, batch):
    model = build(kind, head, 4, perturb=0.1)
    ids, mask = ragged_prompts(batch, seed=4)
    kwargs = dict(max_new_tokens=20, eos_token_id=EOS)
    ar = model.generate(ids, mask, gen_mode="ar", **kwargs)
    auto = model.generate(ids, mask, **mode_arguments(AUTO_TREE_MODE, tree_max_nodes=10, tree_lookup=0), **kwargs)
    assert auto.new_tokens == ar.new_tokens and torch.equal(auto.sequences, ar.sequences)
    assert auto.stats.forward_passes == auto.stats.decode_steps + 1  # the cost measurement is not counted
    assert len(model.pass_costs) == 1  # measured once for this batch, outside the counted passes
    drafted = [r.drafted / max(len(r.accepted_lengths), 1) for r in auto.stats.rows]
    assert all(1 <= d <= 10 for d in drafted if d)


def test_auto_tree_size_needs_a_largest_tree_and_a_known_choice():
    model = build("llama", "mps", 4)
    ids, mask = ragged_prompts(1, seed=0)
    with pytest.raises(ValueError, match="tree_size='auto' needs tree_nodes >= 1"):
        model.generate(ids, mask, gen_mode="speculative", tree_size="auto", tree_nodes=0)
    with pytest.raises(ValueError, match="tree_size='wide' is not allowed; use one of fixed, auto"):
        model.generate(ids, mask, gen_mode="speculative", tree_size="wide", tree_nodes=4)
