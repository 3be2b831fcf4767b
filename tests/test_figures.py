"""Figures: where each panel lands, what it shows, and that PNGs round-trip."""
import json

import fsspec
import numpy as np
import pytest
import torch
from PIL import Image

from genesis_dist.figures import (
    SLOT_COLOURS,
    decomposition_grid,
    generation_steps_figure,
    image_grid,
    plot_metrics,
    save_png,
    to_image_array,
)

H, W, PAD = 6, 5, 2


def cell(grid: np.ndarray, row: int, col: int) -> np.ndarray:
    top, left = PAD + row * (H + PAD), PAD + col * (W + PAD)
    return grid[top:top + H, left:left + W]


def quantised(image: torch.Tensor) -> np.ndarray:
    """Independent quantisation: round-half-to-even of x*255, channels last."""
    return np.round(np.clip(image.permute(1, 2, 0).double().numpy(), 0, 1) * 255).astype(np.uint8)


@pytest.fixture
def scene():
    generator = torch.Generator().manual_seed(0)
    batch, slots = 2, 3
    images = torch.rand(batch, 3, H, W, generator=generator)
    recon = torch.rand(batch, 3, H, W, generator=generator)
    log_masks = torch.randn(batch, slots, 1, H, W, generator=generator).log_softmax(dim=1)
    components = torch.rand(batch, slots, 3, H, W, generator=generator)
    return images, recon, log_masks, components


def test_decomposition_grid_panels(scene):
    images, recon, log_masks, components = scene
    grid = decomposition_grid(images, recon, log_masks, components, padding=PAD)
    assert grid.dtype == np.uint8 and grid.shape == (2 * (H + PAD) + PAD, 6 * (W + PAD) + PAD, 3)
    for b in range(2):
        np.testing.assert_array_equal(cell(grid, b, 0), quantised(images[b]))
        np.testing.assert_array_equal(cell(grid, b, 1), quantised(recon[b]))
        for k in range(3):
            np.testing.assert_array_equal(cell(grid, b, 3 + k), quantised(log_masks[b, k].exp() * components[b, k]))
        winner = log_masks[b, :, 0].argmax(dim=0)
        np.testing.assert_array_equal(cell(grid, b, 2), quantised(SLOT_COLOURS[winner].permute(2, 0, 1)))
    assert (grid[:PAD] == 255).all() and (grid[:, -PAD:] == 255).all()


def test_decomposition_grid_attention_rows(scene):
    images, recon, log_masks, components = scene
    att = log_masks.flip(1)
    grid = decomposition_grid(images, recon, log_masks, components, att_log_masks=att, padding=PAD)
    assert grid.shape[0] == 4 * (H + PAD) + PAD
    np.testing.assert_array_equal(cell(grid, 2, 0), quantised(images[1]))  # image rows are 0 and 2
    assert (cell(grid, 1, 0) == 255).all() and (cell(grid, 1, 1) == 255).all()
    winner = att[0, :, 0].argmax(dim=0)
    np.testing.assert_array_equal(cell(grid, 1, 2), quantised(SLOT_COLOURS[winner].permute(2, 0, 1)))
    np.testing.assert_array_equal(cell(grid, 1, 3 + 1), quantised(att[0, 1].exp().expand(3, -1, -1)))


def test_generation_steps_accumulate_masked_components(scene):
    _, _, log_masks, components = scene
    grid = generation_steps_figure(components, log_masks, padding=PAD)
    assert grid.shape == (2 * (H + PAD) + PAD, 3 * (W + PAD) + PAD, 3)
    masked = log_masks.exp() * components
    np.testing.assert_array_equal(cell(grid, 1, 0), quantised(masked[1, 0]))
    np.testing.assert_array_equal(cell(grid, 1, 1), quantised(masked[1, 0] + masked[1, 1]))
    np.testing.assert_array_equal(cell(grid, 0, 2), quantised(masked[0].sum(dim=0)))


def test_image_grid_blank_cells_and_size_check():
    red = torch.zeros(3, H, W)
    red[0] = 1
    grid = image_grid([[red, None], [None, red]], padding=PAD, pad_value=0.0)
    assert (cell(grid, 0, 0)[..., 0] == 255).all() and (cell(grid, 0, 1) == 0).all()
    with pytest.raises(ValueError, match="panel"):
        image_grid([[red, torch.zeros(3, H + 1, W)]])


def test_save_png_round_trips_tensors_and_arrays(tmp_path):
    generator = torch.Generator().manual_seed(1)
    image = torch.rand(3, 7, 9, generator=generator)
    save_png(image, str(tmp_path / "sub" / "colour.png"))
    with Image.open(tmp_path / "sub" / "colour.png") as png:
        assert png.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(png), quantised(image))
    grey = torch.rand(1, 7, 9, generator=generator)
    save_png(grey, str(tmp_path / "grey.png"))
    with Image.open(tmp_path / "grey.png") as png:
        np.testing.assert_array_equal(np.asarray(png), quantised(grey.expand(3, -1, -1)))
    array = np.arange(7 * 9 * 3, dtype=np.uint8).reshape(7, 9, 3)
    save_png(array, "memory://figs/array.png")
    with fsspec.open("memory://figs/array.png", "rb") as f, Image.open(f) as png:
        np.testing.assert_array_equal(np.asarray(png), array)
    np.testing.assert_array_equal(to_image_array(torch.from_numpy(array).permute(2, 0, 1)), array)


def test_plot_metrics_writes_a_png(tmp_path):
    history = [json.loads(json.dumps({"step": s, "loss": 1 / (s + 1), "ari_fg": 0.1 * s if s % 2 else None}))
               for s in range(10)]
    plot_metrics(history, ["loss", "ari_fg"], str(tmp_path / "plots" / "metrics.png"))
    with Image.open(tmp_path / "plots" / "metrics.png") as png:
        assert png.format == "PNG" and png.size[0] > 100 and png.size[1] > 200
