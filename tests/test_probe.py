"""The linear-probe head start (train.probe_head): the fit itself and its config rules."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from wsdm_helpers.config import RunConfig, TrainConfig, collect_problems  # noqa: E402
from wsdm_helpers.probe import fit_pair_probe  # noqa: E402


def planted(n: int, seed: int = 0):
    """Pair differences whose first feature (of 8, on very different scales) decides the winner, 10% noise."""
    rng = np.random.default_rng(seed)
    diff = rng.normal(size=(n, 8)) * np.array([1.0, 100.0, 0.01, 5, 5, 5, 5, 5])
    a_wins = (diff[:, 0] > 0) ^ (rng.random(n) < 0.1)
    return diff, a_wins


def test_the_probe_finds_the_deciding_direction_whatever_the_feature_scales():
    diff, a_wins = planted(400)
    w = fit_pair_probe(diff, a_wins, l2=0.01)
    test, truth = planted(400, seed=1)
    assert np.mean((test @ w > 0) == truth) > 0.85
    assert np.argmax(np.abs(w) * diff.std(0)) == 0  # the deciding feature carries the most weight
    assert np.allclose(fit_pair_probe(-diff, ~a_wins, l2=0.01), w)  # a swapped pair is the same vote


def test_a_larger_l2_gives_a_more_cautious_head():
    diff, a_wins = planted(200)
    margins = [np.abs(diff @ fit_pair_probe(diff, a_wins, l2)).mean() for l2 in (0.01, 1.0, 100.0)]
    assert margins[0] > margins[1] > margins[2] > 0


def test_probe_head_config_rules_name_the_fix():
    assert "set swap_augment=true" in " ".join(TrainConfig(probe_head=True, swap_augment=False).check())
    assert "set it to null" in " ".join(TrainConfig(probe_head=True, head_init_std=1e-3).check())
    assert "probe_l2=0 must be positive" in " ".join(TrainConfig(probe_l2=0).check())
    cfg = RunConfig(train=TrainConfig(probe_head=True))
    cfg.model.source = "x"
    assert not collect_problems(cfg)
    cfg.inference.tta = "selective"
    assert any("set inference.tta=swap" in p for p in collect_problems(cfg))
    cfg.inference.tta = "swap"
    for section, field, value in (("model", "num_labels", 3), ("format", "head", "mcq")):
        setattr(getattr(cfg, section), field, value)
        assert any("train.probe_head=true fits a two-class classifier head" in p for p in collect_problems(cfg))
        setattr(getattr(cfg, section), field, {"num_labels": 2, "head": "classifier"}[field])


def test_swap_loss_sees_the_swap_tta_logits_so_a_position_bias_costs_nothing():
    import torch

    from wsdm_helpers.trainer import pair_rows, swap_tta_logits

    rows = torch.tensor([3, 13, 7, 17])  # two pairs of a 10-pair set, each beside its swap
    pairs = pair_rows(rows, 10)
    content = torch.tensor([0.8, -0.3])
    for bias in (0.0, 5.0):  # every row leans to "a" by `bias`, whatever the order
        logits = torch.stack([torch.tensor([bias + content[0], 0.0]), torch.tensor([bias - content[0], 0.0]),
                              torch.tensor([bias + content[1], 0.0]), torch.tensor([bias - content[1], 0.0])])
        tta = swap_tta_logits(logits, pairs)
        assert torch.allclose(tta[:, 0] - tta[:, 1], content)
    three = swap_tta_logits(torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]), torch.tensor([0]))
    assert torch.allclose(three, torch.tensor([[3.0, 3.0, 4.5]]))  # a <-> b mapped back, a tie stays a tie
    with pytest.raises(RuntimeError, match="every row followed by its swap"):
        pair_rows(torch.tensor([3, 13, 17, 7]), 10)
    assert "set swap_in_batch=true" in " ".join(TrainConfig(swap_loss=True).check())
