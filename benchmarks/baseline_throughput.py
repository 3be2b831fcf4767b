"""Forward+backward throughput of the baselines beside GENESIS-V2, measured in one run.

Batch 32 at 64 px, K = 7 (single-latent VAEs: one slot), CPU with one thread by
default. Models are timed round-robin (one step of each in turn, `--steps` rounds
after `--warmup` untimed ones), so load from other processes on a shared machine
falls on every model alike; the table gives the median seconds per step, images per
second, the parameter count, and the speed relative to GENESIS-V2 in the same run.
The loss is `mean(err + kl)`, as the training objectives see it.

    python benchmarks/baseline_throughput.py [--threads 1] [--steps 5] [--layout nchw nhwc]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from genesis_dist.config import model_config
from genesis_dist.models import build_model, count_parameters
from genesis_dist.training.loop import use_channels_last

MODELS = ("genesis_v2", "genesis", "monet", "slot_attention", "bd_vae", "dc_vae")


def one_step(model: torch.nn.Module, images: torch.Tensor) -> float:
    """Seconds for one forward+backward pass (gradients cleared afterwards)."""
    start = time.perf_counter()
    out = model(images)
    (out.err + out.kl + sum(out.aux.values(), torch.zeros_like(out.err))).mean().backward()
    seconds = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--slots", type=int, default=7)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--layout", nargs="+", default=["nchw", "nhwc"], choices=["nchw", "nhwc"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"batch {args.batch_size}, {args.img_size} px, K={args.slots}, CPU {args.threads} thread(s) "
          f"({platform.processor() or platform.machine()}, {os.cpu_count()} cores), torch {torch.__version__}, "
          f"load average {os.getloadavg()[0]:.2f} at start")
    for layout in args.layout:
        torch.manual_seed(0)
        models = {name: build_model(model_config([f"img_size={args.img_size}", f"num_slots={args.slots}"], name=name)).train()
                  for name in args.models}
        images = torch.rand(args.batch_size, 3, args.img_size, args.img_size)
        if layout == "nhwc":
            for model in models.values():
                use_channels_last(model)
            images = images.contiguous(memory_format=torch.channels_last)
        times: dict[str, list[float]] = {name: [] for name in models}
        for round_index in range(args.warmup + args.steps):
            for name, model in models.items():
                seconds = one_step(model, images)
                if round_index >= args.warmup:
                    times[name].append(seconds)
        median = {name: statistics.median(t) for name, t in times.items()}
        reference = median.get("genesis_v2")
        print(f"\nlayout {layout.upper()}, load average {os.getloadavg()[0]:.2f} at end")
        print("| model | K | params | s/step (median) | min–max | img/s | vs GENESIS-V2 |")
        print("|---|---|---|---|---|---|---|")
        for name, model in models.items():
            k = 1 if name in ("bd_vae", "dc_vae") else args.slots
            ratio = f"{reference / median[name]:.2f}×" if reference else "—"
            print(f"| {name} | {k} | {count_parameters(model):,} | {median[name]:.2f} | "
                  f"{min(times[name]):.2f}–{max(times[name]):.2f} | {args.batch_size / median[name]:.1f} | {ratio} |",
                  flush=True)


if __name__ == "__main__":
    main()
