"""`python -m genesis_dist.decompose CHECKPOINT IMAGE… [--out DIR]`: scene decompositions
of your own images.

For every image (any size and format `tools/shard.py images` reads: EXIF orientation
applied, 8-bit RGB with transparency over `--background`; resized so the shorter side
matches the model, then centre-cropped, as that converter does) writes `<name>_decomposition.png` (labelled columns: input,
reconstruction, segmentation over the input, each slot's masked component, and for
GENESIS-V2 the IC-SBP attention masks; a caption with the checkpoint's step and the
ELBO) and `<name>_mask_<k>.png` / `<name>_component_<k>.png` for each slot.
CHECKPOINT is a checkpoint folder (local or s3://) written by `genesis_dist.train`; `RUN/best` is the run's best checkpoint
(the folder `RUN/best.json` points to).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

from .training.checkpoint import CheckpointError, load_checkpoint, resolve_checkpoint, stored_model
from .data.formats.images import DEFAULT_BACKGROUND, parse_background
from .data.formats.imaging import WHITE, decode_photo, read_bytes, shorter_side_centre_crop
from .storage import StorageError


class ImageError(ValueError):
    """An input image can't be read; the message names the file."""


def load_image(path: str | Path, size: int, background: tuple[int, int, int] = WHITE) -> torch.Tensor:
    """Read an image file (a local path or fsspec URL) as float `[3, size, size]` in [0, 1],
    decoded as `tools/shard.py images` decodes it (`decode_photo`: EXIF orientation, 8-bit
    RGB, transparency over `background`), shorter side resized to `size` (bilinear), then
    centre-cropped (the converters' crop, torchvision's transforms)."""
    try:
        photo = decode_photo(read_bytes(str(path)), background=background, min_side=2 * size)
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except ValueError as err:  # UnreadableImage, ImageRefused, an unsupported mode
        raise ImageError(f"{path}: not a readable image ({err})") from None
    square = shorter_side_centre_crop(photo.rgb, size)
    return torch.from_numpy(square.astype(np.float32) / 255.0).permute(2, 0, 1)


def load_model(checkpoint: str) -> tuple[torch.nn.Module, int]:
    """The model stored in a checkpoint folder, in eval mode on the CPU, and its step."""
    state, meta = load_checkpoint(resolve_checkpoint(checkpoint))
    model = stored_model(meta)
    model.load_state_dict(state["model"])
    return model.eval(), int(meta.get("step", 0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m genesis_dist.decompose", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="checkpoint folder (local path or s3:// URL)")
    parser.add_argument("images", nargs="+", help="image files (PNG, JPEG, …)")
    parser.add_argument("--out", default="decompositions", help="output folder (default: ./decompositions)")
    parser.add_argument("--background", default=DEFAULT_BACKGROUND,
                        help="colour transparent pixels are composited over, as in `tools/shard.py images` "
                             f"(default {DEFAULT_BACKGROUND})")
    args = parser.parse_args(argv)
    from .figures import decomposition_figure, save_png, scores_caption
    from .models import is_generative

    try:
        background = parse_background(args.background)
        model, step = load_model(args.checkpoint)
        size = model.img_size
        images = torch.stack([load_image(p, size, background) for p in args.images])
    except (CheckpointError, ImageError, StorageError, ValueError) as err:
        print(f"decompose: error: {err}", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    with torch.no_grad():
        out = model(images)
    for i, path in enumerate(args.images):
        stem = Path(path).stem
        sl = slice(i, i + 1)
        att = out.log_att_masks[sl] if out.log_att_masks is not None else None
        caption = scores_caption(f"{Path(path).name} decomposed", step, elbo=out.elbo[sl] if is_generative(model) else None)
        save_png(decomposition_figure(images[sl], out.recon[sl], out.log_masks[sl], out.components[sl], att, caption),
                 os.path.join(args.out, f"{stem}_decomposition.png"))
        for k in range(out.log_masks.shape[1]):
            save_png(out.log_masks[i, k].exp().expand(3, -1, -1), os.path.join(args.out, f"{stem}_mask_{k}.png"))
            save_png(out.components[i, k], os.path.join(args.out, f"{stem}_component_{k}.png"))
        print(f"{path}: {out.log_masks.shape[1]} slots → {args.out}/{stem}_*.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
