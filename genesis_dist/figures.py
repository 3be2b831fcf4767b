"""Pictures from tensors: the one place where tensors become PNGs.

Conventions: torch tensors are channels-first (`[3, H, W]`, `[1, H, W]` or `[H, W]`),
numpy arrays are channels-last (`[H, W, 3]` or `[H, W]`); floats are in [0, 1] and are
quantised with `metrics.images.to_uint8` (the same rounding FID applies). Figures come back
as uint8 arrays `[H, W, 3]`, ready for `save_png` or TensorBoard (`dataformats="HWC"`).
Paths may be local or any fsspec URL.
"""
from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from .metrics.images import to_uint8
from .metrics.segmentation import masks_to_labels
from .storage import filesystem

# matplotlib's tab20 colours (facts, not code): slot k is drawn in colour k mod 20
SLOT_COLOURS = torch.tensor([
    (31, 119, 180), (174, 199, 232), (255, 127, 14), (255, 187, 120), (44, 160, 44),
    (152, 223, 138), (214, 39, 40), (255, 152, 150), (148, 103, 189), (197, 176, 213),
    (140, 86, 75), (196, 156, 148), (227, 119, 194), (247, 182, 210), (127, 127, 127),
    (199, 199, 199), (188, 189, 34), (219, 219, 141), (23, 190, 207), (158, 218, 229),
], dtype=torch.float32) / 255.0


def to_image_array(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """uint8 `[H, W, 3]` from a tensor `[3|1, H, W]` / `[H, W]` or an array `[H, W, 3|1]` /
    `[H, W]`, float in [0, 1] or uint8. Grey images are repeated over RGB."""
    if isinstance(image, np.ndarray):
        array = image if image.dtype == np.uint8 else to_uint8(torch.from_numpy(np.asarray(image, np.float32))).numpy()
        array = array if array.ndim == 3 else array[:, :, None]
    else:
        tensor = to_uint8(image.detach().cpu())
        tensor = tensor if tensor.dim() == 3 else tensor.unsqueeze(0)
        array = tensor.permute(1, 2, 0).numpy()
    if array.ndim != 3 or array.shape[2] not in (1, 3):
        raise ValueError(f"not an image: shape {tuple(image.shape)}")
    return np.ascontiguousarray(np.repeat(array, 3, axis=2) if array.shape[2] == 1 else array)


def _write_bytes(data: bytes, url: str, storage_options: dict | None) -> None:
    fs, path = filesystem(url, storage_options)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    with fs.open(path, "wb") as f:
        f.write(data)


def save_png(image: torch.Tensor | np.ndarray, url: str, storage_options: dict | None = None) -> None:
    """Write one image (see `to_image_array` for accepted shapes) as an RGB PNG to a local
    path or fsspec URL, creating folders as needed."""
    buffer = io.BytesIO()
    Image.fromarray(to_image_array(image)).save(buffer, format="PNG")
    _write_bytes(buffer.getvalue(), url, storage_options)


def image_grid(
    panels: Sequence[Sequence[torch.Tensor | None]], padding: int = 2, pad_value: float = 1.0
) -> np.ndarray:
    """Rows of equally sized panels (tensors `[3|1, H, W]` in [0, 1]; None leaves a blank
    cell) on a background of `pad_value`, `padding` pixels apart and around.

    Panel (r, c) lands at rows `padding + r*(H+padding)`, columns `padding + c*(W+padding)`.
    Returns uint8 `[R*(H+padding)+padding, C*(W+padding)+padding, 3]`.
    """
    first = next((p for row in panels for p in row if p is not None), None)
    if first is None:
        raise ValueError("image_grid needs at least one panel")
    height, width = first.shape[-2:]
    rows, cols = len(panels), max(len(row) for row in panels)
    fill = to_image_array(torch.full((3, 1, 1), pad_value))[0, 0]
    grid = np.empty((rows * (height + padding) + padding, cols * (width + padding) + padding, 3), np.uint8)
    grid[:] = fill
    for r, row in enumerate(panels):
        for c, panel in enumerate(row):
            if panel is None:
                continue
            if panel.shape[-2:] != (height, width):
                raise ValueError(f"panel ({r}, {c}) is {tuple(panel.shape)}; expected {height}×{width}")
            top, left = padding + r * (height + padding), padding + c * (width + padding)
            grid[top:top + height, left:left + width] = to_image_array(panel)
    return grid


def segmentation_colours(labels: torch.Tensor) -> torch.Tensor:
    """Colour-coded label maps: `[B, H, W]` integer slot indices → float `[B, 3, H, W]`."""
    return SLOT_COLOURS.to(labels.device)[labels % len(SLOT_COLOURS)].permute(0, 3, 1, 2)


def decomposition_grid(
    images: torch.Tensor,
    recon: torch.Tensor,
    log_masks: torch.Tensor,
    components: torch.Tensor,
    att_log_masks: torch.Tensor | None = None,
    padding: int = 2,
) -> np.ndarray:
    """Scene decompositions, one row per image: input, reconstruction, segmentation (mask
    argmax, slot k in `SLOT_COLOURS[k]`), then each slot's masked component `m_k * x_k`.

    Args:
        images, recon: `[B, 3, H, W]` in [0, 1].
        log_masks: `[B, K, 1, H, W]` log mixture masks.
        components: `[B, K, 3, H, W]` per-slot means in [0, 1].
        att_log_masks: optional second mask set `[B, K, 1, H, W]` (e.g. IC-SBP attention
            masks): adds a row under each image with its segmentation (column 2) and the
            masks themselves in grey (columns 3 …).

    Returns uint8 `[H', W', 3]` laid out as `image_grid` with `padding`.
    """
    images, recon, log_masks, components = (t.detach().cpu().float() for t in (images, recon, log_masks, components))
    masks = log_masks.exp()
    segmentation = segmentation_colours(masks_to_labels(log_masks))
    rows = []
    for b in range(images.shape[0]):
        rows.append([images[b], recon[b], segmentation[b], *(masks[b] * components[b])])
        if att_log_masks is not None:
            att = att_log_masks[b : b + 1].detach().cpu().float()
            rows.append([None, None, segmentation_colours(masks_to_labels(att))[0], *att[0].exp()])
    return image_grid(rows, padding)


def generation_steps_figure(components: torch.Tensor, log_masks: torch.Tensor, padding: int = 2) -> np.ndarray:
    """Step-by-step generation (GENESIS Figure 3), one row per sample: column k shows the
    first k+1 slots composed on black, `Σ_{j≤k} m_j * x_j`; the last column is the sample.

    Args:
        components: `[N, K, 3, H, W]` per-slot means in [0, 1].
        log_masks: `[N, K, 1, H, W]` log mixture masks.

    Returns uint8 `[H', W', 3]` laid out as `image_grid` with `padding`.
    """
    steps = (log_masks.detach().cpu().float().exp() * components.detach().cpu().float()).cumsum(dim=1)
    return image_grid([list(sample) for sample in steps], padding)


def plot_metrics(history: Sequence[dict], keys: Sequence[str], url: str, storage_options: dict | None = None) -> None:
    """Metrics against training step, one panel per key, saved as PNG.

    `history` is a list of records such as the lines of `metrics.jsonl`; the x axis is each
    record's `step` (its index when absent); records without a key are skipped in its panel.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 2.2 * len(keys)), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(keys), 1, squeeze=False)[:, 0]
    for axis, key in zip(axes, keys):
        points = [(r.get("step", i), r[key]) for i, r in enumerate(history) if r.get(key) is not None]
        if points:
            axis.plot(*zip(*points), marker="." if len(points) < 50 else None)
        axis.set_ylabel(key)
        axis.grid(alpha=0.3)
    axes[-1].set_xlabel("step")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    _write_bytes(buffer.getvalue(), url, storage_options)
