"""ARI, segmentation covering and slot statistics against independent oracles:
scikit-learn's adjusted_rand_score and a loop-over-segments numpy transcription of
GENESIS Appendix C, Eq. 11–12."""
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from genesis_dist.metrics import (
    ari,
    masks_to_labels,
    mean_ignoring_nan,
    segmentation_covering,
    segmentation_scores,
    slot_count_stats,
)


def oracle_ari(true: np.ndarray, pred: np.ndarray, foreground_only: bool) -> float:
    keep = true != 0 if foreground_only else np.ones(true.shape, bool)
    if not keep.any():
        return math.nan
    return adjusted_rand_score(true[keep], pred[keep])


def oracle_covering(true: np.ndarray, pred: np.ndarray, foreground_only: bool) -> tuple[float, float]:
    """Eq. 11 and 12, one ground-truth segment R at a time."""
    keep = true != 0 if foreground_only else np.ones(true.shape, bool)
    weighted, total, best_ious = 0.0, 0, []
    for label in np.unique(true[keep]):
        region = keep & (true == label)
        best = 0.0
        for other in np.unique(pred[keep]):
            predicted = keep & (pred == other)
            best = max(best, (region & predicted).sum() / (region | predicted).sum())
        weighted += region.sum() * best
        total += region.sum()
        best_ious.append(best)
    if total == 0:
        return math.nan, math.nan
    return weighted / total, float(np.mean(best_ious))


def blocky_labels(generator: torch.Generator, batch: int, size: int, num_labels: int) -> torch.Tensor:
    """Piecewise-constant label maps `[B, size, size]`: random labels on a 4×4 grid, upsampled."""
    coarse = torch.randint(0, num_labels, (batch, 1, 4, 4), generator=generator).float()
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="nearest")[:, 0].long()


@pytest.fixture(scope="module")
def random_maps():
    generator = torch.Generator().manual_seed(0)
    true = blocky_labels(generator, 12, 24, 5)
    true[0] = 0  # an image without foreground
    noisy = torch.randint(0, 7, true.shape, generator=generator)
    keep = torch.rand(true.shape, generator=generator) < 0.7
    # half the batch predicts a relabelled, corrupted copy of the truth; half is unrelated
    pred = torch.where(keep, (true * 3 + 1) % 7, noisy)
    pred[6:] = blocky_labels(generator, 6, 24, 6)
    return true, pred


@pytest.mark.parametrize("foreground_only", [True, False])
def test_ari_matches_sklearn_per_image(random_maps, foreground_only):
    true, pred = random_maps
    got = ari(true, pred, foreground_only)
    assert got.dtype == torch.float64 and got.shape == (12,)
    want = [oracle_ari(t.numpy(), p.numpy(), foreground_only) for t, p in zip(true, pred)]
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-12)
    assert math.isnan(got[0]) == foreground_only
    assert 0.2 < float(got[1:6].mean()) and abs(float(got[6:].mean())) < 0.2  # the maps are not all alike


@pytest.mark.parametrize("foreground_only", [True, False])
def test_covering_matches_appendix_c_loops(random_maps, foreground_only):
    true, pred = random_maps
    sc, msc = segmentation_covering(true, pred, foreground_only)
    want = np.array([oracle_covering(t.numpy(), p.numpy(), foreground_only) for t, p in zip(true, pred)])
    np.testing.assert_allclose(sc.numpy(), want[:, 0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(msc.numpy(), want[:, 1], rtol=0, atol=1e-12)
    assert not np.allclose(sc.numpy()[1:], msc.numpy()[1:])  # weighted and unweighted differ here


def test_sparse_and_large_label_values_are_just_names():
    generator = torch.Generator().manual_seed(1)
    true = blocky_labels(generator, 3, 16, 4)
    pred = blocky_labels(generator, 3, 16, 5)
    renamed_true = torch.where(true == 0, 0, true * 1000 + 7)
    renamed_pred = pred * 50_000 - 3
    torch.testing.assert_close(ari(renamed_true, renamed_pred), ari(true, pred))
    for a, b in zip(segmentation_covering(renamed_true, renamed_pred), segmentation_covering(true, pred)):
        torch.testing.assert_close(a, b)


def one_object_scene() -> torch.Tensor:
    true = torch.zeros(1, 10, 10, dtype=torch.long)
    true[0, 2:6, 3:8] = 1
    return true


def test_one_object_perfectly_segmented():
    true = one_object_scene()
    pred = true * 4 + 2  # any naming of the two segments
    assert float(ari(true, pred)) == 1.0 and float(ari(true, pred, False)) == 1.0
    for score in segmentation_covering(true, pred) + segmentation_covering(true, pred, False):
        assert float(score) == 1.0


def test_no_foreground_is_nan_and_excluded_from_means():
    true = one_object_scene().repeat(3, 1, 1)
    true[1] = 0
    pred = torch.randint(0, 3, true.shape, generator=torch.Generator().manual_seed(0))
    scores = segmentation_scores(true, pred)
    for name in ("ari_fg", "sc_fg", "msc_fg"):
        assert torch.isnan(scores[name]).tolist() == [False, True, False]
        mean, excluded = mean_ignoring_nan(scores[name])
        assert excluded == 1 and mean == pytest.approx(float(scores[name][[0, 2]].mean()), abs=1e-15)
    for name in ("ari", "sc", "msc"):
        assert not torch.isnan(scores[name]).any()
    assert math.isnan(mean_ignoring_nan(torch.full((2,), math.nan))[0])


def test_single_predicted_cluster():
    true = torch.zeros(1, 8, 8, dtype=torch.long)
    true[0, :4, :4], true[0, 4:, :2], true[0, 6:, 6:] = 1, 2, 3  # objects of 16, 8, 4 pixels
    pred = torch.zeros_like(true)
    assert float(ari(true, pred)) == pytest.approx(0.0, abs=1e-15)
    assert float(ari(true, pred)) == pytest.approx(adjusted_rand_score(true[true > 0], pred[true > 0]), abs=1e-15)
    sc, msc = segmentation_covering(true, pred)
    # one predicted FG segment of 28 pixels covers each object R with IoU |R| / 28
    assert float(sc) == pytest.approx((16**2 + 8**2 + 4**2) / 28 / 28, abs=1e-15)
    assert float(msc) == pytest.approx((16 + 8 + 4) / 28 / 3, abs=1e-15)


def test_background_over_segmentation_lowers_covering_but_not_ari_fg():
    """GENESIS Figure 13: ARI-FG ignores how the background is segmented. Objects segmented
    perfectly and the background cut into three stripes keep ARI-FG at 1, while the
    all-pixel covering drops (the background's best IoU is a third)."""
    true = torch.zeros(1, 12, 12, dtype=torch.long)
    true[0, 1:4, 1:4], true[0, 6:10, 5:9] = 1, 2
    pred = true.clone()
    stripes = torch.arange(12).div(4, rounding_mode="floor").add(3).expand(12, 12)
    pred[0][true[0] == 0] = stripes[true[0] == 0]
    assert float(ari(true, pred)) == 1.0
    sc_fg, msc_fg = segmentation_covering(true, pred)
    assert float(sc_fg) == 1.0 and float(msc_fg) == 1.0
    sc, msc = segmentation_covering(true, pred, foreground_only=False)
    assert float(sc) < 0.7 and float(msc) < 0.8
    want_sc, want_msc = oracle_covering(true[0].numpy(), pred[0].numpy(), False)
    assert (float(sc), float(msc)) == pytest.approx((want_sc, want_msc), abs=1e-12)
    assert float(ari(true, pred, foreground_only=False)) < 1.0


def test_masks_to_labels_is_argmax_over_slots():
    log_masks = torch.randn(2, 5, 1, 6, 7).log_softmax(dim=1)
    labels = masks_to_labels(log_masks)
    assert labels.shape == (2, 6, 7) and labels.dtype == torch.long
    b, y, x = 1, 3, 4
    assert labels[b, y, x] == int(np.argmax(log_masks[b, :, 0, y, x].numpy()))
    with pytest.raises(ValueError, match=r"\[B, K, 1, H, W\]"):
        masks_to_labels(log_masks[:, :, 0])


def test_slot_count_stats():
    stats = slot_count_stats(torch.tensor([3, 5, 4, 7]), torch.tensor([3, 4, 6, 7]))
    assert stats == {"mean_slots": pytest.approx(4.75), "mae": pytest.approx(0.75)}


def test_rejects_mismatched_or_float_maps():
    with pytest.raises(ValueError, match="label maps"):
        ari(torch.zeros(2, 4, 4, dtype=torch.long), torch.zeros(2, 4, 5, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        segmentation_covering(torch.zeros(2, 4, 4, dtype=torch.long), torch.zeros(2, 4, 4))


def test_foreground_labels_merge_background_entities():
    from genesis_dist.metrics import foreground_labels

    masks = torch.tensor([[[0, 1, 2, 3, 4, 5]]])
    assert foreground_labels(masks, 4).tolist() == [[[0, 0, 0, 0, 4, 5]]]
    assert foreground_labels(masks, 1).tolist() == masks.tolist()
    assert foreground_labels(masks, None).tolist() == masks.tolist()
