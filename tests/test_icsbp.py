"""IC-SBP (GENESIS-V2 Algorithm 1): initialisation, scope, seeds, flexible stop."""
import math

import pytest
import torch

from genesis_dist.models.blocks import coordinate_grid
from genesis_dist.models.icsbp import InstanceColouringSBP, initial_kernel_scale


@pytest.mark.parametrize("num_slots", [5, 7, 9, 10])
def test_kernel_scale_at_init_matches_appendix_c(num_slots):
    expected = {
        "gaussian": 1 / (num_slots * math.log(2)),
        "laplacian": 1 / (math.sqrt(num_slots) * math.log(2)),
        "epanechnikov": 2 / num_slots,
    }
    for kernel, sigma in expected.items():
        sbp = InstanceColouringSBP(num_slots, kernel)
        assert sbp.sigma.item() == pytest.approx(sigma, rel=1e-6)
        # Each kernel is one half at squared distance 1/K.
        half = sbp.similarity(torch.tensor(1.0 / num_slots))
        assert half.item() == pytest.approx(0.5, rel=1e-5)


def test_unknown_kernel_is_rejected():
    with pytest.raises(ValueError, match="cosine"):
        initial_kernel_scale("cosine", 5)


def _run(embeddings, num_slots, seed, **kw):
    sbp = InstanceColouringSBP(num_slots)
    gen = torch.Generator().manual_seed(seed)
    return sbp(embeddings, generator=gen, **kw)


def test_masks_sum_to_one_and_scope_never_increases():
    torch.manual_seed(0)
    emb = torch.randn(3, 8, 16, 16)
    sbp = InstanceColouringSBP(6)
    out = sbp(emb)
    masks = out.log_masks.exp()
    assert masks.shape == (3, 6, 1, 16, 16)
    assert torch.allclose(masks.sum(1), torch.ones(3, 1, 16, 16), atol=1e-5)
    # Scope after k masks = 1 - sum of the first k masks: non-increasing pixel-wise.
    scope = 1 - masks.cumsum(dim=1)
    assert (scope[:, 1:] <= scope[:, :-1] + 1e-6).all()
    assert (scope > -1e-5).all()


def test_first_seed_is_argmax_of_seed_scores():
    emb = coordinate_grid(12, 12, torch.zeros(())).unsqueeze(0)  # [1, 2, 12, 12]
    gen = torch.Generator().manual_seed(3)
    scores = torch.rand(1, 144, generator=gen)
    seed_pixel = int(scores.argmax())
    out = _run(emb, 4, seed=3)
    first = out.log_masks.exp()[0, 0, 0].flatten()
    # The seed pixel is most similar to itself: α = 0.99 (clamped) there, the mask's maximum.
    assert int(first.argmax()) == seed_pixel
    assert first[seed_pixel].item() == pytest.approx(0.99, abs=1e-6)


def test_different_seeds_order_masks_differently():
    emb = coordinate_grid(16, 16, torch.zeros(())).unsqueeze(0).repeat(1, 4, 1, 1)
    a = _run(emb, 5, seed=0).log_masks.exp()
    b = _run(emb, 5, seed=1).log_masks.exp()
    assert not torch.allclose(a, b, atol=1e-3)
    assert (a[0, :-1].flatten(1).argmax(1) != b[0, :-1].flatten(1).argmax(1)).any()


def test_flexible_stop_returns_fewer_masks_on_two_region_image():
    # Two flat regions with far-apart embeddings: two masks cover everything.
    emb = torch.zeros(1, 8, 16, 16)
    emb[:, 0, :, 8:] = 10.0
    fixed = _run(emb, 7, seed=0)
    flexible = _run(emb, 7, seed=0, stop_pixels=20.0)
    assert fixed.log_masks.shape[1] == 7
    # Two region masks, then the remaining scope (what α ≤ 0.99 left behind) as the last.
    assert flexible.log_masks.shape[1] == 3
    assert int(flexible.num_slots[0]) == 3
    masks = flexible.log_masks.exp()
    assert torch.allclose(masks.sum(1), torch.ones(1, 1, 16, 16), atol=1e-5)
    assert masks[0, -1].sum() < 20.0
    # Each of the first two masks covers one region almost entirely.
    halves = torch.stack([masks[0, :2, 0, :, :8].mean((1, 2)), masks[0, :2, 0, :, 8:].mean((1, 2))])
    assert sorted(halves.max(1).values.tolist()) > [0.95, 0.95]


def test_flexible_stop_pads_per_image_with_empty_slots():
    two = torch.zeros(1, 8, 16, 16)
    two[:, 0, :, 8:] = 10.0
    four = torch.zeros(1, 8, 16, 16)
    four[:, 0, :, 8:] = 10.0
    four[:, 1, 8:, :] = 10.0
    out = _run(torch.cat([two, four]), 7, seed=0, stop_pixels=20.0)
    assert out.num_slots.tolist() == [3, 5]
    assert out.log_masks.shape[1] == 5
    masks = out.log_masks.exp()
    assert torch.allclose(masks.sum(1), torch.ones(2, 1, 16, 16), atol=1e-5)
    assert masks[0, 3:].sum() == 0
    assert not out.slot_mask[0, 3:].any()


def test_alpha_clamp_keeps_gradient_straight_through():
    emb = torch.randn(1, 8, 8, 8, requires_grad=True)
    sbp = InstanceColouringSBP(3)
    sbp(emb).log_masks[:, 0].exp().sum().backward()
    assert emb.grad is not None and emb.grad.abs().sum() > 0
    assert sbp.log_sigma.grad is not None and sbp.log_sigma.grad != 0
