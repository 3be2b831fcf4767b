"""The three dSprites shapes rendered procedurally on the dSprites latent grid.

Grid (as in dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz): shape ∈ {square, ellipse,
heart}, 6 scales in [0.5, 1], 40 orientations in [0, 2π), 32×32 positions in [0, 1]².
A sprite at scale 1 spans about 0.3 of the image side; position (0, 0)..(1, 1) maps
the sprite centre to 0.2..0.8 of the image, keeping every sprite inside the frame.
Masks are binary (sampled at pixel centres), like the dSprites images.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

SHAPES = ("square", "ellipse", "heart")
SCALES = np.linspace(0.5, 1.0, 6)
ORIENTATIONS = np.arange(40) * (2 * np.pi / 40)
POSITIONS = np.linspace(0.0, 1.0, 32)
LATENT_SIZES = (3, 6, 40, 32, 32)  # shape, scale, orientation, x, y

_EXTENT = 0.3  # sprite size at scale 1, as a fraction of the image side


def _inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Membership in the unit-size shape, coordinates in [-1, 1] (v points down)."""
    if shape == "square":
        return (np.abs(u) <= 0.8) & (np.abs(v) <= 0.8)
    if shape == "ellipse":
        return (u / 1.0) ** 2 + (v / 0.5) ** 2 <= 1.0
    # heart: (x² + y² − 1)³ − x² y³ ≤ 0, scaled to the unit box, point at the bottom
    x, y = u * 1.15, -(v * 1.15 - 0.15)
    return (x**2 + y**2 - 1) ** 3 - x**2 * y**3 <= 0


@lru_cache(maxsize=None)
def sprite_patch(shape: int, scale: int, orientation: int, img_size: int) -> np.ndarray:
    """bool [P, P] patch of one sprite, centred in the patch (P odd)."""
    half = _EXTENT * SCALES[scale] * img_size / 2
    radius = int(np.ceil(half * 1.5)) + 1
    coords = np.arange(-radius, radius + 1, dtype=np.float64)
    py, px = np.meshgrid(coords, coords, indexing="ij")
    angle = ORIENTATIONS[orientation]
    u = (np.cos(angle) * px + np.sin(angle) * py) / half
    v = (-np.sin(angle) * px + np.cos(angle) * py) / half
    return _inside(SHAPES[shape], u, v)


def render_sprite(latents: tuple[int, int, int, int, int], img_size: int) -> np.ndarray:
    """bool [img_size, img_size] mask of the sprite with latent indices (shape, scale, orientation, x, y)."""
    shape, scale, orientation, x, y = latents
    patch = sprite_patch(shape, scale, orientation, img_size)
    radius = patch.shape[0] // 2
    cx = int(round((0.2 + 0.6 * POSITIONS[x]) * (img_size - 1)))
    cy = int(round((0.2 + 0.6 * POSITIONS[y]) * (img_size - 1)))
    canvas = np.zeros((img_size, img_size), dtype=bool)
    top, left = cy - radius, cx - radius
    r0, c0 = max(0, -top), max(0, -left)
    r1 = min(patch.shape[0], img_size - top)
    c1 = min(patch.shape[1], img_size - left)
    canvas[top + r0: top + r1, left + c0: left + c1] = patch[r0:r1, c0:c1]
    return canvas
