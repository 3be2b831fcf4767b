"""Pictures from tensors: the one place where tensors become figures and PNGs, for
training, evaluation, `decompose` and data inspection alike.

A figure is a labelled table of image cells, built on torchvision: every cell is upscaled
by a whole factor with nearest-neighbour interpolation to at least `MIN_CELL` px
(`transforms.functional.resize`), segmentations are drawn over the input with
`draw_segmentation_masks` in the fixed `PALETTE`, and the cells are laid out by
`make_grid`. Pillow's built-in font draws the text (a caption strip on top, a header row
naming the columns, a column naming the rows) and Pillow writes the PNGs.

Layout of a table, in pixels, with S the upscaled cell size:

    caption strip   caption_height(lines) tall (absent without a caption)
    header row      HEADER_HEIGHT tall (absent without column labels)
    label column    ROW_LABEL_WIDTH wide, left of the cells (absent without row labels)
    cell (r, c)     at top + PAD + r*(S+PAD), left + PAD + c*(S+PAD) (make_grid's layout)

Conventions: torch tensors are channels-first (`[3, H, W]`), numpy arrays channels-last;
floats are in [0, 1] and are quantised with `metrics.images.to_uint8` (the same rounding
FID applies). Figures come back as uint8 arrays `[H, W, 3]`, ready for `save_png` or
TensorBoard (`dataformats="HWC"`). Paths may be local or any fsspec URL.
"""
from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision.transforms.functional import InterpolationMode, resize, rgb_to_grayscale
from torchvision.utils import draw_segmentation_masks, make_grid

from .metrics.images import to_uint8
from .metrics.segmentation import ari, masks_to_labels, mean_ignoring_nan, segmentation_covering
from .storage import filesystem

MIN_CELL = 128  # px: the smallest cell side after upscaling
PAD = 2  # px between cells and around the block of cells (make_grid's padding)
HEADER_HEIGHT = 20  # px
ROW_LABEL_WIDTH = 100  # px
LINE_HEIGHT = 16  # px per caption line
FONT_SIZE = 13
OVERLAY_ALPHA = 0.5
BACKGROUND = 255  # white, behind the cells and the text
INK = (20, 20, 20)
PNG_COMPRESS_LEVEL = 1  # zlib level: figures are written during training, speed over size
CHECKER = (0.78, 0.62)  # the two greys of the neutral background behind masked components

# Sasha Trubetskoy's 20 distinct colours (facts, not code): slot or label i is drawn in
# PALETTE[i mod 20]; neighbouring indices get clearly different hues.
PALETTE = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
    (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180),
    (0, 0, 128), (128, 128, 128),
)


def slot_colours(count: int) -> list[tuple[int, int, int]]:
    """The colours of slots (or labels) 0 … count-1: `PALETTE[i mod 20]`."""
    return [PALETTE[i % len(PALETTE)] for i in range(count)]


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
    path or fsspec URL, creating folders as needed. The pixels are kept exactly."""
    buffer = io.BytesIO()
    # Pillow at zlib level 1, not torchvision's save_image (Pillow's level 6 after a float
    # round trip): 3.6x faster on a 1402x2126 decomposition figure, files 13% larger
    # (benchmarks/history.md, "Libraries").
    Image.fromarray(to_image_array(image)).save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    _write_bytes(buffer.getvalue(), url, storage_options)


def upscale(cells: torch.Tensor, min_size: int = MIN_CELL) -> torch.Tensor:
    """Nearest-neighbour upscaling by the smallest whole factor that makes the shorter
    side at least `min_size`: `[N, C, h, w]` → `[N, C, f*h, f*w]` (same dtype), each
    source pixel an f×f block."""
    factor = max(1, math.ceil(min_size / min(cells.shape[-2:])))
    if factor == 1:
        return cells
    size = [cells.shape[-2] * factor, cells.shape[-1] * factor]
    return resize(cells, size, interpolation=InterpolationMode.NEAREST, antialias=False)


def overlay_labels(images: torch.Tensor, labels: torch.Tensor, skip_background: bool = False,
                   alpha: float = OVERLAY_ALPHA) -> torch.Tensor:
    """Label maps drawn over the images in grey, label i in `PALETTE[i mod 20]` at opacity
    `alpha` (torchvision's `draw_segmentation_masks`: `floor((1-alpha)*grey + alpha*colour)`,
    grey from `rgb_to_grayscale`): the hue is the label's alone, the shading the image's.

    Args:
        images: `[N, 3, H, W]`, uint8 or float in [0, 1].
        labels: `[N, H, W]` integer labels (e.g. `masks_to_labels`, or ground truth).
        skip_background: leave label 0 untinted (ground truth, where 0 is background).

    Returns uint8 `[N, 3, H, W]`.
    """
    greys = rgb_to_grayscale(to_uint8(images.detach().cpu()), num_output_channels=3)
    labels = labels.detach().cpu().long()
    first = 1 if skip_background else 0
    count = int(labels.max()) + 1 if labels.numel() else 1
    ids = torch.arange(first, max(count, first + 1))
    colours = slot_colours(int(ids[-1]) + 1)[first:]
    drawn = []
    for grey, label_map in zip(greys, labels):
        masks = label_map.unsqueeze(0) == ids[:, None, None]
        drawn.append(draw_segmentation_masks(grey, masks, alpha=alpha, colors=colours))
    return torch.stack(drawn)


def on_neutral_background(painted: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """`painted + (1 - alpha) * checkerboard`: what slots paint (`m * x`, premultiplied
    by their masks `alpha = m`), with what they leave uncovered in a grey checkerboard
    (8×8 squares per image).

    Args:
        painted: float `[N, 3, H, W]` in [0, 1]; alpha: float `[N, 1, H, W]` in [0, 1].

    Returns float `[N, 3, H, W]`.
    """
    height, width = painted.shape[-2:]
    square = max(1, min(height, width) // 8)
    rows = torch.arange(height, device=painted.device) // square
    cols = torch.arange(width, device=painted.device) // square
    light = (rows[:, None] + cols[None, :]) % 2 == 0
    checker = torch.where(light, CHECKER[0], CHECKER[1]).to(painted.dtype)
    return painted + (1 - alpha) * checker


def _font(size: int = FONT_SIZE) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow's built-in font; no files needed
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def caption_lines(caption: str, width: int) -> list[str]:
    """`caption` wrapped to lines that fit in `width` px of `FONT_SIZE` text."""
    font = _font()
    average = max(1.0, font.getlength("abcdefghijklmnopqrstuvwxyz0123456789 ") / 37)
    return textwrap.wrap(caption, max(10, int((width - 12) / average))) or [""]


def caption_height(lines: int) -> int:
    """Height in px of a caption strip with `lines` lines."""
    return 8 + LINE_HEIGHT * lines


def labelled_table(rows: Sequence[Sequence[torch.Tensor | None]], column_labels: Sequence[str] | None = None,
                   row_labels: Sequence[str] | None = None, caption: str | None = None,
                   min_cell: int = MIN_CELL, column_colours: Sequence[tuple[int, int, int] | None] | None = None,
                   ) -> np.ndarray:
    """A table of equally sized image cells with text around it (layout in the module
    docstring).

    Args:
        rows: rows of cells, each a tensor `[3, h, w]` (uint8, or float in [0, 1]) or None
            for a blank cell; rows may be shorter than the longest.
        column_labels: one header per column (or None: no header row).
        row_labels: one label per row (or None: no label column); "\\n" breaks lines.
        caption: text of the caption strip, wrapped to the figure's width (None: none).
        min_cell: cells are upscaled (nearest) to at least this many px.
        column_colours: a colour swatch before each column's header (None: none), e.g. the
            slot colours of a segmentation.

    Returns uint8 `[H, W, 3]`.
    """
    first = next((cell for row in rows for cell in row if cell is not None), None)
    if first is None:
        raise ValueError("a figure needs at least one image")
    height, width = first.shape[-2:]
    columns = max(len(row) for row in rows)
    blank = torch.full((3, height, width), BACKGROUND, dtype=torch.uint8)
    cells = []
    for r, row in enumerate(rows):
        for c in range(columns):
            cell = row[c] if c < len(row) else None
            if cell is not None and cell.shape[-2:] != (height, width):
                raise ValueError(f"cell ({r}, {c}) is {tuple(cell.shape)}; expected {height}×{width}")
            cells.append(blank if cell is None else to_uint8(cell.detach().cpu()).expand(3, -1, -1))
    cells = upscale(torch.stack(cells), min_cell)
    cell_h, cell_w = cells.shape[-2:]
    if cells.shape[0] == 1:  # make_grid returns a lone image unpadded
        block = torch.nn.functional.pad(cells[0], (PAD,) * 4, value=BACKGROUND)
    else:
        block = make_grid(cells, nrow=columns, padding=PAD, pad_value=BACKGROUND)

    left = ROW_LABEL_WIDTH if row_labels is not None else 0
    figure_width = left + block.shape[-1]
    lines = caption_lines(caption, figure_width) if caption is not None else []
    top_caption = caption_height(len(lines)) if lines else 0
    top = top_caption + (HEADER_HEIGHT if column_labels is not None else 0)
    canvas = Image.new("RGB", (figure_width, top + block.shape[-2]), (BACKGROUND,) * 3)
    canvas.paste(Image.fromarray(block.permute(1, 2, 0).numpy()), (left, top))
    draw, font = ImageDraw.Draw(canvas), _font()
    if lines:
        draw.rectangle((0, 0, figure_width - 1, top_caption - 3), fill=(235, 235, 235))
        for i, line in enumerate(lines):
            draw.text((6, 4 + i * LINE_HEIGHT), line, fill=INK, font=font)
    swatches = list(column_colours or ())
    for c, label in enumerate(column_labels or ()):
        centre, middle = left + PAD + c * (cell_w + PAD) + cell_w / 2, top_caption + HEADER_HEIGHT / 2
        draw.text((centre, middle), label, fill=INK, font=font, anchor="mm")
        if c < len(swatches) and swatches[c] is not None:
            start = centre - font.getlength(label) / 2 - 15
            draw.rectangle((start, middle - 5, start + 10, middle + 5), fill=tuple(swatches[c]), outline=INK)
    for r, label in enumerate(row_labels or ()):
        centre = top + PAD + r * (cell_h + PAD) + cell_h / 2
        draw.multiline_text((6, centre), label, fill=INK, font=font, anchor="lm", spacing=2)
    return np.array(canvas)


def decomposition_figure(images: torch.Tensor, recon: torch.Tensor, log_masks: torch.Tensor,
                         components: torch.Tensor, att_log_masks: torch.Tensor | None = None,
                         caption: str | None = None, min_cell: int = MIN_CELL) -> np.ndarray:
    """Scene decompositions, one row per image, columns labelled: input, reconstruction,
    segmentation (mask argmax over the input, slot k in `PALETTE[k]`), then each slot's
    masked component `m_k * x_k` on a neutral checkerboard (`on_neutral_background`).

    Args:
        images, recon: `[B, 3, H, W]` in [0, 1].
        log_masks: `[B, K, 1, H, W]` log mixture masks (K=1 for single-latent VAEs).
        components: `[B, K, 3, H, W]` per-slot means in [0, 1].
        att_log_masks: optional attention masks `[B, K, 1, H, W]` (GENESIS-V2's IC-SBP
            masks, Slot Attention's attention): a row labelled "attention masks" under each
            image holds their argmax over the input (segmentation column) and the masks
            themselves in grey (slot columns).
        caption: text of the caption strip (see `scores_caption`).

    Returns uint8 `[H', W', 3]` (layout in the module docstring): 3 + K columns, B rows
    (2B with attention masks), a row-label column only with attention masks.
    """
    images, recon, log_masks, components = (t.detach().cpu().float() for t in (images, recon, log_masks, components))
    masks = log_masks.exp()
    overlays = overlay_labels(images, masks_to_labels(log_masks))
    batch, num_slots = masks.shape[:2]
    slots = on_neutral_background((masks * components).flatten(0, 1), masks.flatten(0, 1)).view(components.shape)
    rows, row_labels = [], []
    if att_log_masks is not None:
        att_log_masks = att_log_masks.detach().cpu().float()
        att_overlays = overlay_labels(images, masks_to_labels(att_log_masks))
    for b in range(batch):
        rows.append([images[b], recon[b], overlays[b], *slots[b]])
        row_labels.append(f"image {b + 1}")
        if att_log_masks is not None:
            rows.append([None, None, att_overlays[b], *att_log_masks[b].exp()])
            row_labels.append("attention\nmasks")
    columns = ["input", "reconstruction", "segmentation", *(f"slot {k + 1}" for k in range(num_slots))]
    return labelled_table(rows, columns, row_labels if att_log_masks is not None else None, caption, min_cell,
                          column_colours=[None, None, None, *slot_colours(num_slots)])


def generation_figure(images: torch.Tensor, components: torch.Tensor, log_masks: torch.Tensor,
                      caption: str | None = None, min_cell: int = MIN_CELL) -> np.ndarray:
    """Samples with their step-by-step generation beside them (GENESIS Figure 3), one row
    per sample: the sample, then column k the first k slots composed,
    `Σ_{j≤k} m_j x_j + (1 - Σ_{j≤k} m_j) * checkerboard`.

    Args:
        images: `[N, 3, H, W]` samples in [0, 1].
        components: `[N, K, 3, H, W]` per-slot means in [0, 1].
        log_masks: `[N, K, 1, H, W]` log mixture masks.
        caption: text of the caption strip.

    Returns uint8 `[H', W', 3]`: 1 + K labelled columns, N rows.
    """
    images, components, log_masks = (t.detach().cpu().float() for t in (images, components, log_masks))
    masks = log_masks.exp()
    count, num_slots = masks.shape[:2]
    painted = (masks * components).cumsum(dim=1).flatten(0, 1)
    covered = masks.cumsum(dim=1).clamp(max=1.0).flatten(0, 1)
    steps = on_neutral_background(painted, covered).view(components.shape)
    rows = [[images[n], *steps[n]] for n in range(count)]
    columns = ["sample", "slot 1", *(f"+ slot {k + 1}" for k in range(1, num_slots))]
    return labelled_table(rows, columns, None, caption, min_cell, column_colours=[None, *slot_colours(num_slots)])


def dataset_figure(images: torch.Tensor, labels: torch.Tensor | None = None, columns: int = 8,
                   caption: str | None = None, min_cell: int = MIN_CELL) -> np.ndarray:
    """Dataset samples in rows of `columns`; with ground-truth `labels`, each row of images
    is followed by the same images with their labels drawn over them (label 0, the
    background, untinted). Rows are labelled "images" / "masks".

    Args:
        images: `[N, 3, H, W]`, uint8 or float in [0, 1].
        labels: `[N, H, W]` integer labels or None.

    Returns uint8 `[H', W', 3]`: min(N, columns) columns, ceil(N/columns) rows (twice as many
    with labels), a row-label column and, with a caption, a caption strip.
    """
    images = to_uint8(images.detach().cpu())
    overlays = overlay_labels(images, labels, skip_background=True) if labels is not None else None
    rows, row_labels = [], []
    for start in range(0, images.shape[0], columns):
        rows.append(list(images[start:start + columns]))
        row_labels.append("images")
        if overlays is not None:
            rows.append(list(overlays[start:start + columns]))
            row_labels.append("masks")
    return labelled_table(rows, None, row_labels, caption, min_cell)


def scores_caption(title: str, step: int | None = None, log_masks: torch.Tensor | None = None,
                   labels: torch.Tensor | None = None, elbo: torch.Tensor | None = None,
                   extra: dict[str, float] | None = None, log_att_masks: torch.Tensor | None = None) -> str:
    """The caption of a figure: its title, the step, and the scores of the images it shows.

    With `log_masks` `[B, K, 1, H, W]` and ground-truth `labels` `[B, H, W]` (0 =
    background): ARI-FG and mSC-FG of the mask argmax, each beside the score of the answer
    that puts every pixel in one slot (lumping flatters ARI-FG, not mSC-FG), then those of
    the attention masks `log_att_masks` where given. `elbo` `[B]` (nats per image) adds its
    mean; `extra` adds `name value` pairs (e.g. FID).
    """
    parts = [title] + ([f"step {step}"] if step is not None else [])
    if log_masks is not None and labels is not None:
        true = labels.detach().cpu().long()
        pred = masks_to_labels(log_masks.detach().cpu())
        one_slot = torch.zeros_like(true)
        model_ari, one_ari = (mean_ignoring_nan(ari(true, p))[0] for p in (pred, one_slot))
        model_msc, one_msc = (mean_ignoring_nan(segmentation_covering(true, p)[1])[0] for p in (pred, one_slot))
        parts.append(f"{true.shape[0]} images: ARI-FG {model_ari:.2f} (one slot {one_ari:.2f})")
        parts.append(f"mSC-FG {model_msc:.2f} (one slot {one_msc:.2f})")
        if log_att_masks is not None:
            att = masks_to_labels(log_att_masks.detach().cpu())
            parts.append(f"attention masks ARI-FG {mean_ignoring_nan(ari(true, att))[0]:.2f}, "
                         f"mSC-FG {mean_ignoring_nan(segmentation_covering(true, att)[1])[0]:.2f}")
    if elbo is not None:
        parts.append(f"ELBO {float(elbo.detach().double().mean()):.0f} nats")
    parts += [f"{name} {value:.4g}" for name, value in (extra or {}).items() if value is not None]
    return " · ".join(parts)


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
