"""Multi-dSprites (GENESIS, Appendix A), generated: 1–4 random dSprites per image in
painter's order, every RGB channel of the background and of each sprite drawn from
{0, 63, 127, 191, 255}; 64×64, K=5; 50k / 10k / 10k images by default.

Sprites are rendered procedurally on the dSprites latent grid (see `sprites.py`), or
taken from the real `dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz` when given.
Mask labels are the sprite's index in drawing order (1..n); a fully occluded sprite
leaves no pixels.
"""
from __future__ import annotations

import zlib
from typing import Any, Iterator

import numpy as np
from PIL import Image

from ..errors import SourceError
from .base import Converter, DatasetInfo, ErrorHandler, Sample, SourceItem, safe_key
from .sprites import LATENT_SIZES, SHAPES, render_sprite

COLOUR_LEVELS = np.array([0, 63, 127, 191, 255], dtype=np.uint8)
DEFAULT_SIZES = {"train": 50_000, "val": 10_000, "test": 10_000}


class MultiDSprites(Converter):
    def __init__(self, sizes: dict[str, int] | None = None, img_size: int = 64, seed: int = 0,
                 dsprites_npz: str | None = None, min_sprites: int = 1, max_sprites: int = 4):
        self.sizes = dict(DEFAULT_SIZES if sizes is None else sizes)
        self.img_size, self.seed, self.npz = img_size, seed, dsprites_npz
        self.min_sprites, self.max_sprites = min_sprites, max_sprites
        if not 1 <= min_sprites <= max_sprites:
            raise ValueError(f"need 1 ≤ min_sprites ≤ max_sprites, got {min_sprites}, {max_sprites}")
        self.info = DatasetInfo("multi_dsprites", "1.0", img_size, K=max_sprites + 1, background_entities=1,
                                has_mask=True)
        self._sprites: np.ndarray | None = None
        self._latents: np.ndarray | None = None

    def splits(self) -> list[str]:
        return [split for split, size in self.sizes.items() if size > 0]

    def item_count(self, split: str) -> int:
        return self.sizes[split]

    def items(self, split: str, on_error: ErrorHandler) -> Iterator[SourceItem]:
        for index in range(self.sizes[split]):
            yield SourceItem(f"generated {split} #{index}", (split, index))

    def settings(self) -> dict[str, Any]:
        return {"sizes": self.sizes, "img_size": self.img_size, "seed": self.seed, "dsprites_npz": self.npz,
                "min_sprites": self.min_sprites, "max_sprites": self.max_sprites}

    def prepare(self) -> None:
        if self.npz is None or self._sprites is not None:
            return
        try:
            with np.load(self.npz) as archive:
                sprites = archive["imgs"]
                latents = archive["latents_classes"] if "latents_classes" in archive else None
        except (OSError, KeyError, ValueError) as error:
            raise SourceError(f"{self.npz}: not a dSprites npz with 'imgs' ({error})") from None
        if sprites.ndim != 3 or len(sprites) == 0:
            raise SourceError(f"{self.npz}: 'imgs' has shape {sprites.shape}, expected [N, 64, 64]")
        self._sprites, self._latents = sprites, latents

    def _draw_sprite(self, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
        """(bool [S, S] sprite mask, its latents) drawn uniformly from the dSprites grid."""
        if self.npz is None:
            latents = tuple(int(v) for v in rng.integers(0, LATENT_SIZES))
            mask = render_sprite(latents, self.img_size)
        else:
            self.prepare()
            row = int(rng.integers(len(self._sprites)))
            mask = self._sprites[row] > 0
            if mask.shape != (self.img_size, self.img_size):
                resized = Image.fromarray(mask.astype(np.uint8) * 255).resize((self.img_size,) * 2, Image.NEAREST)
                mask = np.asarray(resized) > 0
            latents = tuple(int(v) for v in self._latents[row][-5:]) if self._latents is not None else (row,)
        if len(latents) == 5:
            described = dict(zip(("shape", "scale", "orientation", "x", "y"), latents))
            described["shape"] = SHAPES[latents[0]]
        else:
            described = {"dsprites_index": latents[0]}
        return mask, described

    def convert(self, item: SourceItem) -> list[Sample]:
        split, index = item.payload
        rng = np.random.default_rng([self.seed, zlib.crc32(split.encode()), index])
        count = int(rng.integers(self.min_sprites, self.max_sprites + 1))
        background = rng.choice(COLOUR_LEVELS, 3)
        image = np.empty((self.img_size, self.img_size, 3), dtype=np.uint8)
        image[:] = background
        mask = np.zeros((self.img_size, self.img_size), dtype=np.uint8)
        sprites = []
        for label in range(1, count + 1):
            sprite, latents = self._draw_sprite(rng)
            colour = rng.choice(COLOUR_LEVELS, 3)
            image[sprite] = colour
            mask[sprite] = label
            sprites.append({**latents, "colour": colour.tolist()})
        meta = {"source": item.source, "num_sprites": count, "visible_sprites": int(len(np.unique(mask)) - 1),
                "background": background.tolist(), "sprites": sprites}
        return [Sample(safe_key("mds", f"seed{self.seed}", split, f"{index:07d}"), image, mask, meta)]
