"""The spatial Gaussian mixture likelihood against a float64 direct computation."""

import numpy as np
from oracles import direct_nll
import torch

from genesis_dist.models.mixture import compose, mixture_nll


def test_mixture_nll_matches_float64_direct_computation():
    torch.manual_seed(0)
    x = torch.rand(3, 3, 8, 8)
    log_masks = torch.log_softmax(torch.randn(3, 4, 1, 8, 8) * 3, dim=1)
    means = torch.rand(3, 4, 3, 8, 8)
    ours = mixture_nll(x.double(), log_masks.double(), means.double(), 0.7).numpy()
    np.testing.assert_allclose(ours, direct_nll(x, log_masks.double().exp(), means, 0.7), rtol=1e-10)
    ours32 = mixture_nll(x, log_masks, means, 0.7).numpy()
    np.testing.assert_allclose(ours32, direct_nll(x, log_masks.exp(), means, 0.7), rtol=1e-5)


def test_mixture_nll_is_stable_with_near_zero_masks():
    x = torch.rand(1, 3, 4, 4)
    log_masks = torch.full((1, 2, 1, 4, 4), -1e4)
    log_masks[:, 0] = 0.0
    means = torch.rand(1, 2, 3, 4, 4)
    assert torch.isfinite(mixture_nll(x, log_masks, means)).all()


def test_compose_is_mask_weighted_sum():
    masks = torch.softmax(torch.randn(2, 3, 1, 4, 4), dim=1)
    comps = torch.rand(2, 3, 3, 4, 4)
    expected = sum(masks[:, k] * comps[:, k] for k in range(3))
    assert torch.allclose(compose(masks.log(), comps), expected, atol=1e-6)
