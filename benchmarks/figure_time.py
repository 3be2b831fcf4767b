"""Time of the figures training writes every `image_every` steps, on rank 0.

GENESIS-V2 at its published size (64 px, K = 7) decomposes 8 images and draws 8 prior
samples; the table gives the median seconds of building each figure (uint8 array), of
writing it as PNG (`save_png`: Pillow at zlib level 1) beside torchvision's `save_image`
of the same pixels (the baseline `save_png` is measured against), and of TensorBoard's
image encoding of the same array. CPU, one thread by default; timed round-robin over `--repeats` rounds after
one untimed round, so load from other processes falls on every row alike.

    python benchmarks/figure_time.py [--threads 1] [--repeats 5] [--out /tmp/figures]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time

import torch
from torch.utils.tensorboard.summary import image as tensorboard_image
from torchvision.utils import save_image

from genesis_dist.figures import decomposition_figure, generation_figure, save_png, scores_caption
from genesis_dist.config import model_config
from genesis_dist.models import build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=tempfile.mkdtemp(prefix="figure-time-"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(model_config(["img_size=64", "num_slots=7"])).eval()
    images = torch.rand(8, 3, 64, 64)
    labels = torch.randint(0, 4, (8, 64, 64))
    with torch.no_grad():
        out, samples = model(images), model.sample(8)

    def decomposition():
        caption = scores_caption("held-out decomposition", 2000, out.log_masks, labels, out.elbo)
        return decomposition_figure(images, out.recon, out.log_masks, out.components, out.log_att_masks, caption)

    def generation():
        return generation_figure(samples.images, samples.components, samples.log_masks, scores_caption("samples", 2000))

    figures = {"decomposition": decomposition(), "samples": generation()}
    rows = {f"build {name}": fn for name, fn in (("decomposition", decomposition), ("samples", generation))}
    for name, figure in figures.items():
        rows[f"save_png {name}"] = lambda f=figure, n=name: save_png(f, os.path.join(args.out, f"{n}.png"))
        rows[f"(baseline) torchvision save_image {name}"] = lambda f=figure, n=name: save_image(
            torch.from_numpy(f).permute(2, 0, 1).float().div(255), os.path.join(args.out, f"{n}_save_image.png"))
        rows[f"TensorBoard encode {name}"] = lambda f=figure, n=name: tensorboard_image(n, f, dataformats="HWC")
    times: dict[str, list[float]] = {name: [] for name in rows}
    for round_ in range(args.repeats + 1):
        for name, fn in rows.items():
            start = time.perf_counter()
            fn()
            if round_:
                times[name].append(time.perf_counter() - start)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s), "
          f"median of {args.repeats}")
    for name, figure in figures.items():
        print(f"{name}: {figure.shape[1]}×{figure.shape[0]} px")
    print("| step | seconds |\n|---|---|")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.3f} |")
    total = sum(statistics.median(v) for name, v in times.items() if not name.startswith("(baseline)"))
    print(f"| all of one image step | {total:.3f} |")
    print(f"PNGs in {args.out}")


if __name__ == "__main__":
    main()
