"""The papers' recipe for a fixed time on generated Multi-dSprites, with held-out scores every minute.

Published GENESIS-V2 (2,729,422 parameters) at 64 px, K = 5 (the papers' Multi-dSprites
setting), batch 32, Adam at lr 1e-4, GECO with the papers' goal (0.5655 nats per pixel and
channel) and step size, no curriculum, channels-last, `--precision auto` (bf16 autocast on a
GPU, fp32 on a CPU: what `python -m genesis_dist.train` uses). The data are generated in
memory by the same converter `tools/shard.py multi_dsprites` uses (1–4 sprites of the three
dSprites shapes, uniform colours; `--train-images`, `--test-images` and a seed) and kept on
the device, so no loader runs.

Every `--report-every` seconds it prints the training img/s since the last report (evaluation
time excluded), the mean training loss terms, and on the held-out images: ELBO, err, KL, and
the foreground ARI (ARI-FG) of both GENESIS-V2 mask sets — the decoder masks and the IC-SBP
attention masks — beside the one-slot answer's and the one-segment-per-colour answer's on the
same images. At the end it prints the curve as a markdown table and saves it with the machine
through benchmarks/record.py (to `$GENESIS_BENCH_RESULTS`, else benchmarks/results/).

Torch only (the GPU machines have no Ray, OmegaConf or webdataset): models, training.loop,
objectives, metrics and the Multi-dSprites converter import none of them.

    python benchmarks/gpu_recipe.py [--minutes 8] [--device cuda] [--precision auto] [--seed 0]
    python benchmarks/gpu_recipe.py --smoke     # a few seconds on a CPU: checks that it runs
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from genesis_dist.data.formats.multi_dsprites import MultiDSprites
from genesis_dist.metrics.segmentation import ari, masks_to_labels, mean_ignoring_nan
from genesis_dist.metrics.trivial import trivial_answer_scores
from genesis_dist.models import build_model, count_parameters
from genesis_dist.objectives import GECO, geco_goal, geco_step_size
from genesis_dist.schema import ModelConfig
from genesis_dist.training.objective import TrainingObjective
from genesis_dist.training.loop import MetricWindow, autocast, seed_everything, train_step, use_channels_last

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import Recorder  # noqa: E402  (benchmarks/ is not a package)

# The papers' Multi-dSprites settings (configs/data/multi_dsprites.yaml; tests/test_gpu_recipe.py
# checks these against the composed config, which this torch-only script cannot read).
IMG_SIZE, NUM_SLOTS, GECO_GOAL, LR, BATCH = 64, 5, 0.5655, 1e-4, 32


def _render(args: tuple[int, int, str, int, int]) -> tuple[np.ndarray, np.ndarray]:
    seed, img_size, split, first, count = args
    converter = MultiDSprites({split: first + count}, img_size=img_size, seed=seed)
    items = list(converter.items(split, on_error=None))[first:first + count]
    samples = [converter.convert(item)[0] for item in items]
    return np.stack([s.image for s in samples]), np.stack([s.mask for s in samples])


def generate(split: str, count: int, seed: int, img_size: int, workers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` generated Multi-dSprites scenes of `split`: images uint8 `[N, 3, H, W]` and
    label maps uint8 `[N, H, W]` (0 = background, 1.. = sprites), the same scenes the
    converter writes to shards for this seed."""
    chunk = max(1, -(-count // max(1, workers)))
    jobs = [(seed, img_size, split, first, min(chunk, count - first)) for first in range(0, count, chunk)]
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(workers) as pool:
            parts = list(pool.map(_render, jobs))
    else:
        parts = [_render(job) for job in jobs]
    images = torch.from_numpy(np.concatenate([p[0] for p in parts])).permute(0, 3, 1, 2).contiguous()
    return images, torch.from_numpy(np.concatenate([p[1] for p in parts]))


@torch.no_grad()
def heldout_scores(model, images: torch.Tensor, labels: torch.Tensor, precision: str, batch: int = 64) -> dict:
    """ELBO, err, KL (nats per image) and ARI-FG of the decoder and attention masks over the
    held-out images (uint8 `[N, 3, H, W]` on the device, labels `[N, H, W]`). The random
    draws (posterior samples, IC-SBP seeds) are the same at every evaluation and leave the
    training's random state as it was."""
    devices = [images.device] if images.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(0)
        return _heldout_scores(model, images, labels, precision, batch)


def _heldout_scores(model, images, labels, precision, batch):
    model.eval()
    sums = {"elbo": 0.0, "err": 0.0, "kl": 0.0}
    decoder, attention = [], []
    for first in range(0, len(images), batch):
        x = images[first:first + batch].float().div_(255).contiguous(memory_format=torch.channels_last)
        true = labels[first:first + batch].long()
        with autocast(x.device, precision):
            out = model(x)
        err, kl = out.err.double(), out.kl.double()
        sums["err"] += float(err.sum())
        sums["kl"] += float(kl.sum())
        sums["elbo"] -= float((err + kl).sum())
        decoder.append(ari(true, masks_to_labels(out.log_masks.float()), foreground_only=True).cpu())
        attention.append(ari(true, masks_to_labels(out.log_att_masks.float()), foreground_only=True).cpu())
    model.train()
    scores = {name: value / len(images) for name, value in sums.items()}
    scores["ari_fg_decoder"] = mean_ignoring_nan(torch.cat(decoder))[0]
    scores["ari_fg_attention"] = mean_ignoring_nan(torch.cat(attention))[0]
    return scores


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> dict:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=8.0, help="training time, evaluations included")
    parser.add_argument("--report-every", type=float, default=60.0, help="seconds between held-out evaluations")
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--batch-size", type=int, default=BATCH)
    parser.add_argument("--train-images", type=int, default=20_000)
    parser.add_argument("--test-images", type=int, default=320, help="the papers' segmentation test set size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="processes generating data")
    parser.add_argument("--smoke", action="store_true",
                        help="a few seconds: batch 4, 64 + 16 images, reports every 2 s for 0.1 minute")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    if args.smoke:
        args.minutes, args.report_every, args.batch_size = min(args.minutes, 0.1), 2.0, 4
        args.train_images, args.test_images, args.workers = 64, 16, 1
    recorder = Recorder("gpu_recipe", argv=None if argv is None else [sys.argv[0], *argv])
    device = torch.device(args.device)
    precision = args.precision if args.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True

    start = time.perf_counter()
    train_images, _ = generate("train", args.train_images, args.seed, IMG_SIZE, args.workers)
    test_images, test_labels = generate("test", args.test_images, args.seed, IMG_SIZE, args.workers)
    trivial = trivial_answer_scores(test_labels.long(), test_images.float() / 255)
    generation_s = time.perf_counter() - start
    train_images, test_images, test_labels = train_images.to(device), test_images.to(device), test_labels.to(device)

    seed_everything(args.seed)
    model = use_channels_last(build_model(ModelConfig(name="genesis_v2", img_size=IMG_SIZE, num_slots=NUM_SLOTS)).to(device))
    objective = TrainingObjective(GECO(goal=geco_goal(GECO_GOAL, IMG_SIZE), step_size=geco_step_size(IMG_SIZE))).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"[gpu_recipe] GENESIS-V2 ({count_parameters(model):,} parameters), {IMG_SIZE} px, K = {NUM_SLOTS}, "
          f"batch {args.batch_size}, Adam {LR:g}, GECO goal {GECO_GOAL}, {precision}, on {where}; "
          f"{args.train_images:,} training / {args.test_images} held-out images generated in {generation_s:.1f} s; "
          f"held-out trivial answers: one slot ARI-FG {trivial['one_slot']['ari_fg']:.3f}, "
          f"colour {trivial['colour']['ari_fg']:.3f}", flush=True)

    generator = torch.Generator(device=device).manual_seed(args.seed)
    order = torch.randperm(len(train_images), device=device, generator=generator)
    position, step, window, curve = 0, 0, MetricWindow(), []
    budget = 60 * args.minutes
    began = last = time.perf_counter()
    trained_since, eval_seconds = 0, 0.0
    while True:
        if position + args.batch_size > len(order):
            order, position = torch.randperm(len(train_images), device=device, generator=generator), 0
        batch = train_images[order[position:position + args.batch_size]].float().div_(255)
        position += args.batch_size
        window.add(train_step(model, objective, optimizer, batch, precision=precision, channels_last=True))
        step += 1
        trained_since += args.batch_size
        now = time.perf_counter()
        finished = now - began >= budget
        if now - last < args.report_every and not finished:
            continue
        synchronize(device)
        train_seconds = time.perf_counter() - last
        training = window.read()
        eval_start = time.perf_counter()
        scores = heldout_scores(model, test_images, test_labels, precision)
        eval_seconds = time.perf_counter() - eval_start
        point = {"minutes": round((time.perf_counter() - began) / 60, 2), "step": step,
                 "img_per_s": trained_since / train_seconds, **{f"heldout_{k}": v for k, v in scores.items()},
                 **{f"train_{k}": v for k, v in training.items()}}
        curve.append(point)
        print(f"[gpu_recipe] {point['minutes']:.1f} min, step {step:,}: held-out ARI-FG decoder "
              f"{scores['ari_fg_decoder']:.3f} / attention {scores['ari_fg_attention']:.3f} (one slot "
              f"{trivial['one_slot']['ari_fg']:.3f}, colour {trivial['colour']['ari_fg']:.3f}), ELBO "
              f"{scores['elbo']:,.0f} (err {scores['err']:,.0f}, KL {scores['kl']:,.1f}), β {training['beta']:.3g}, "
              f"{point['img_per_s']:,.0f} img/s ({eval_seconds:.1f} s evaluating)", flush=True)
        last, trained_since = time.perf_counter(), 0
        if finished:
            break

    print(f"\nGENESIS-V2, {IMG_SIZE} px, K = {NUM_SLOTS}, batch {args.batch_size}, lr {LR:g}, GECO, {precision}, "
          f"{where}; {args.test_images} held-out images (one slot ARI-FG {trivial['one_slot']['ari_fg']:.3f}, "
          f"colour {trivial['colour']['ari_fg']:.3f})")
    print("| minutes | step | img/s | ARI-FG decoder | ARI-FG attention | ELBO | err | KL | β |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for p in curve:
        print(f"| {p['minutes']:.1f} | {p['step']:,} | {p['img_per_s']:,.0f} | {p['heldout_ari_fg_decoder']:.3f} "
              f"| {p['heldout_ari_fg_attention']:.3f} | {p['heldout_elbo']:,.0f} | {p['heldout_err']:,.0f} "
              f"| {p['heldout_kl']:,.1f} | {p['train_beta']:.3g} |")
    results = {"settings": {"img_size": IMG_SIZE, "num_slots": NUM_SLOTS, "batch_size": args.batch_size, "lr": LR,
                            "geco_goal": GECO_GOAL, "precision": precision, "device": where,
                            "train_images": args.train_images, "test_images": args.test_images, "seed": args.seed,
                            "minutes": args.minutes, "generation_s": generation_s},
               "trivial_answers": trivial, "curve": curve}
    if not args.no_save:
        print(f"[gpu_recipe] raw results: {recorder.save(results)}", flush=True)
    return results


if __name__ == "__main__":
    main()
