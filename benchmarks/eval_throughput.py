"""Evaluation throughput: Inception features (img/s), segmentation metrics (img/s), the
2048-d matrix square root of FID, and what one 10k-vs-10k FID per checkpoint costs.

    python benchmarks/eval_throughput.py [--inception-images 200] [--append-results benchmarks/RESULTS.md]

The FID estimate is an extrapolation: Inception throughput measured on a few hundred
images, times 10,000, plus one measured matrix function. Model sampling time is not
included. FID weights: `$TORCH_HOME/hub/checkpoints/` or, failing that, `../shared/weights/`.
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from genesis_dist.metrics import InceptionFeatures, ari, fid_from_stats, masks_to_labels, segmentation_covering
from genesis_dist.metrics.fid import WEIGHTS_FILE, weights_path

SHARED_WEIGHTS = Path(__file__).resolve().parents[1].parent / "shared" / "weights" / WEIGHTS_FILE


def ensure_weights() -> None:
    """Point TORCH_HOME at a temporary hub cache holding shared/'s weights if none is set up."""
    if os.path.exists(weights_path()) or not SHARED_WEIGHTS.exists():
        return
    home = Path(tempfile.mkdtemp(prefix="torch_home_"))
    (home / "hub" / "checkpoints").mkdir(parents=True)
    os.symlink(SHARED_WEIGHTS, home / "hub" / "checkpoints" / WEIGHTS_FILE)
    os.environ["TORCH_HOME"] = str(home)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def inception_rate(device: torch.device, num_images: int, size: int, batch_size: int) -> tuple[float, float]:
    """(images per second, CPU-seconds of this process per image) through pytorch-fid's
    Inception (input `size` px, resized to 299)."""
    features = InceptionFeatures(batch_size=batch_size)
    images = torch.rand(num_images, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    features(images[:batch_size])  # warm-up (and cuDNN autotuning)
    synchronize(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    features(images)
    synchronize(device)
    return num_images / (time.perf_counter() - start), (time.process_time() - cpu_start) / num_images


def metric_rate(device: torch.device, num_images: int, size: int, slots: int, batch_size: int, repeats: int = 3) -> float:
    """Images per second (best of `repeats` passes) for masks → labels, ARI-FG and
    SC/mSC-FG on `size`² label maps."""
    generator = torch.Generator().manual_seed(0)
    coarse = torch.randint(0, 6, (num_images, 1, 8, 8), generator=generator).float()
    true = torch.nn.functional.interpolate(coarse, size=(size, size), mode="nearest")[:, 0].long().to(device)
    log_masks = torch.randn(num_images, slots, 1, size, size, generator=generator).log_softmax(dim=1).to(device)

    def one_pass() -> float:
        synchronize(device)
        start = time.perf_counter()
        for first in range(0, num_images, batch_size):
            pred = masks_to_labels(log_masks[first:first + batch_size])
            ari(true[first:first + batch_size], pred)
            segmentation_covering(true[first:first + batch_size], pred)
        synchronize(device)
        return num_images / (time.perf_counter() - start)

    return max(one_pass() for _ in range(repeats))  # best of: other jobs share the cores


def matrix_seconds(method: str, dim: int = 2048) -> tuple[float, float]:
    """(wall, CPU) seconds for one FID from statistics at `dim` (full-rank covariances with
    a decaying spectrum)."""
    rng = np.random.default_rng(0)
    scales = 1.0 / np.sqrt(np.arange(1, dim + 1))
    stats = []
    for _ in range(2):
        samples = rng.standard_normal((dim + 500, dim)) * scales @ np.linalg.qr(rng.standard_normal((dim, dim)))[0]
        stats += [samples.mean(axis=0), np.cov(samples, rowvar=False)]
    start, cpu_start = time.perf_counter(), time.process_time()
    fid_from_stats(*stats, method=method)
    return time.perf_counter() - start, time.process_time() - cpu_start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inception-images", type=int, default=200)
    parser.add_argument("--metric-images", type=int, default=320, help="the papers' segmentation test set size")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--slots", type=int, default=7)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--fid-images", type=int, default=10_000)
    parser.add_argument("--append-results", help="append the table as a section to this markdown file")
    args = parser.parse_args()
    ensure_weights()

    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    machine = f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), " + (
        f"GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "no GPU"
    )
    load_before = os.getloadavg()[0]
    rows = []
    matrix = {method: matrix_seconds(method) for method in ("eigh", "sqrtm")}
    for device in devices:
        inception, cpu_per_image = inception_rate(device, args.inception_images, args.size, args.batch_size)
        metrics = metric_rate(device, args.metric_images, args.size, args.slots, 32)
        samples_only = args.fid_images / inception  # test-set statistics come from the cache
        rows.append((device.type, inception, cpu_per_image, metrics, samples_only, args.fid_images * 2 / inception))
    load_after = os.getloadavg()[0]

    lines = [
        f"Machine: {machine}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"load average {load_before:.1f} before / {load_after:.1f} after (other jobs share this machine).",
        "",
        f"| device | Inception img/s ({args.size} px → 299², measured on {args.inception_images}) "
        f"| ARI-FG + SC/mSC-FG img/s ({args.size}², K={args.slots}, {args.metric_images} images, best of 3) "
        f"| FID {args.fid_images // 1000}k vs cached test stats, est. | first FID incl. test stats, est. |",
        "|---|---|---|---|---|",
    ]
    for device, inception, cpu_per_image, metrics, samples_only, first in rows:
        lines.append(
            f"| {device} | {inception:.2f} ({cpu_per_image:.2f} CPU-s/img) | {metrics:.0f} | {(samples_only + matrix['eigh'][0]) / 60:.1f} min "
            f"| {(first + matrix['eigh'][0]) / 60:.1f} min |"
        )
    lines += [
        "",
        "One FID from statistics at 2048-d (CPU, float64), wall / CPU seconds: method `eigh` (default) "
        f"{matrix['eigh'][0]:.1f} / {matrix['eigh'][1]:.1f} s, method `sqrtm` (pytorch-fid's scipy sqrtm) "
        f"{matrix['sqrtm'][0]:.1f} / {matrix['sqrtm'][1]:.1f} s.",
        f"The FID times are extrapolations: {args.fid_images} / measured Inception img/s (+ {args.fid_images} more "
        "for the first run, which computes and caches the test statistics) + one `eigh` matrix step; "
        "generating the samples is not included.",
    ]
    table = "\n".join(lines)
    print(table)
    if args.append_results:
        with open(args.append_results, "a") as f:
            f.write("\n## Evaluation throughput\n\n`python benchmarks/eval_throughput.py`\n\n" + table + "\n")


if __name__ == "__main__":
    main()
