"""Trivial segmentation answers against independent oracles: scikit-learn's ARI per image and
a numpy re-derivation of mSC (GENESIS Appendix C, Eq. 12)."""
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from genesis_dist.metrics.trivial import colour_labels, fg_bg_labels, one_slot_labels, trivial_answer_scores


def random_label_maps(seed: int, n: int = 24, size: int = 12) -> torch.Tensor:
    """Label maps with 0–3 rectangles painted in order on background 0 (some images have
    one object, some none, some occluded objects)."""
    rng = np.random.default_rng(seed)
    maps = np.zeros((n, size, size), dtype=np.int64)
    for i in range(n):
        for label in range(1, rng.integers(0, 4) + 1):
            top, left = rng.integers(0, size - 2, 2)
            h, w = rng.integers(2, size // 2 + 1, 2)
            maps[i, top : top + h, left : left + w] = label
    return torch.from_numpy(maps)


def oracle_msc_fg(true: np.ndarray, pred: np.ndarray) -> float:
    """Mean over objects of the best IoU with a predicted segment cut to the foreground."""
    fg = true != 0
    ious = []
    for r in np.unique(true[fg]):
        region = true == r
        best = 0.0
        for p in np.unique(pred[fg]):
            segment = (pred == p) & fg
            best = max(best, (region & segment).sum() / (region | segment).sum())
        ious.append(best)
    return float(np.mean(ious))


def oracle_scores(true: torch.Tensor, pred: torch.Tensor) -> dict[str, float]:
    ari_fg, ari_all, msc_fg = [], [], []
    for t, p in zip(true.numpy(), pred.numpy()):
        ari_all.append(adjusted_rand_score(t.ravel(), p.ravel()))
        fg = t != 0
        if fg.any():
            ari_fg.append(adjusted_rand_score(t[fg], p[fg]))
            msc_fg.append(oracle_msc_fg(t, p))
    return {"ari_fg": np.mean(ari_fg), "ari": np.mean(ari_all), "msc_fg": np.mean(msc_fg)}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_trivial_scores_match_sklearn_and_numpy_oracles(seed):
    true = random_label_maps(seed)
    scores = trivial_answer_scores(true)
    for name, pred in (("one_slot", one_slot_labels(true)), ("fg_bg", fg_bg_labels(true))):
        expected = oracle_scores(true, pred)
        for key, value in expected.items():
            assert scores[name][key] == pytest.approx(value, abs=1e-12), (name, key)


def test_known_values_by_hand():
    one_object = torch.zeros(1, 4, 4, dtype=torch.long)
    one_object[0, :2, :2] = 1
    two_objects = torch.zeros(1, 4, 4, dtype=torch.long)
    two_objects[0, :2, :] = 1
    two_objects[0, 2:, :2] = 2  # 8 + 4 foreground pixels, 4 background
    true = torch.cat([one_object, two_objects])
    scores = trivial_answer_scores(true)
    # one object: any single foreground segment scores ARI-FG 1; two objects: 0
    assert scores["one_slot"]["ari_fg"] == pytest.approx(0.5)
    assert scores["fg_bg"]["ari_fg"] == pytest.approx(0.5)
    # mSC-FG: IoU 1 for the lone object; 8/12 and 4/12 for the two
    assert scores["one_slot"]["msc_fg"] == pytest.approx((1 + (8 / 12 + 4 / 12) / 2) / 2)
    # all pixels: one slot is chance (0); the fg/bg split is exact with one object
    assert scores["one_slot"]["ari"] == pytest.approx(0.0)
    assert scores["fg_bg"]["ari"] > 0.0
    assert math.isclose(float(adjusted_rand_score(one_object.ravel(), fg_bg_labels(one_object).ravel())), 1.0)


def test_image_without_foreground_is_left_out_of_fg_scores():
    empty = torch.zeros(1, 4, 4, dtype=torch.long)
    one_object = torch.zeros(1, 4, 4, dtype=torch.long)
    one_object[0, 1:3, 1:3] = 1
    scores = trivial_answer_scores(torch.cat([empty, one_object]))
    assert scores["one_slot"]["ari_fg"] == pytest.approx(1.0)
    assert scores["one_slot"]["msc_fg"] == pytest.approx(1.0)


def test_float_labels_are_refused():
    with pytest.raises(TypeError, match="integer"):
        trivial_answer_scores(torch.zeros(2, 4, 4))


def test_colour_answer_is_one_segment_per_distinct_colour():
    """Images painted from the label maps: a palette colour per label, label 3 sharing label 1's
    colour. Oracle: sklearn on numpy's own colour codes."""
    true = random_label_maps(3)
    # red and blue have equal channel sums, so a code that mixes the channels loosely merges them
    palette = torch.tensor([[0.2, 0.2, 0.2], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    images = palette[true].permute(0, 3, 1, 2).contiguous()
    labels = colour_labels(images)
    codes = np.round(images.numpy() * 255).astype(np.int64)
    codes = (codes[:, 0] * 256 + codes[:, 1]) * 256 + codes[:, 2]
    for pred, code in zip(labels.numpy(), codes):
        assert adjusted_rand_score(code.ravel(), pred.ravel()) == 1.0
    scores = trivial_answer_scores(true, images)
    expected = oracle_scores(true, labels)
    for key, value in expected.items():
        assert scores["colour"][key] == pytest.approx(value, abs=1e-12)
    assert scores["colour"]["ari_fg"] < 1.0  # label 3 shares label 1's colour
    assert "colour" not in trivial_answer_scores(true)
