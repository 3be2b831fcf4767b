"""Forward+backward images/s of GENESIS-V2 and GENESIS at batch 32, 64 px.

Prints one row per (model, K, device, precision): seconds per step, img/s,
parameter count, and the ratio to the authors' implementation measured on a
quiet 2-core machine of this kind (GENESIS-V2 5.49 s/step, GENESIS 8.03 s/step
at K = 7; ../shared/README.md). On a GPU it adds fp32 and bf16 rows.

    python benchmarks/model_throughput.py [--steps 5] [--models genesis_v2 genesis] [--slots 7 9]
"""
from __future__ import annotations

import argparse
import time

import torch

from genesis_dist.training.loop import autocast, use_channels_last
from genesis_dist.models import build_model, count_parameters

AUTHORS_SECONDS_PER_STEP = {("genesis_v2", 7): 5.49, ("genesis", 7): 8.03}


def time_steps(model, images, precision: str, steps: int, warmup: int) -> float:
    """Median seconds per forward+backward step (after `warmup` untimed steps)."""
    device = images.device

    def step():
        with autocast(device, precision):
            out = model(images)
        (out.err.float() + out.kl.float()).mean().backward()
        model.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["genesis_v2", "genesis"])
    parser.add_argument("--slots", nargs="+", type=int, default=[7, 9])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--gpu-steps", type=int, default=50)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    configs = [("cpu", "fp32", args.steps, args.warmup, False), ("cpu", "fp32", args.steps, args.warmup, True)]
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        configs += [("cuda", p, args.gpu_steps, 10, cl) for p in ("fp32", "bf16") for cl in (False, True)]
    device_names = {"cpu": f"CPU ({torch.get_num_threads()} threads)"}
    if torch.cuda.is_available():
        device_names["cuda"] = torch.cuda.get_device_name()
    print(f"batch {args.batch_size}, {args.img_size} px, torch {torch.__version__}")
    print("| model | K | device | precision | layout | params | s/step | img/s | vs authors |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.models:
        for k in args.slots:
            for device, precision, steps, warmup, channels_last in configs:
                torch.manual_seed(0)
                model = build_model({"name": name, "img_size": args.img_size, "num_slots": k}).to(device)
                images = torch.rand(args.batch_size, 3, args.img_size, args.img_size, device=device)
                if channels_last:
                    use_channels_last(model)
                    images = images.contiguous(memory_format=torch.channels_last)
                seconds = time_steps(model, images, precision, steps, warmup)
                authors = AUTHORS_SECONDS_PER_STEP.get((name, k)) if device == "cpu" else None
                ratio = f"{authors / seconds:.2f}×" if authors else "—"
                print(
                    f"| {name} | {k} | {device_names[device]} | {precision} | {'NHWC' if channels_last else 'NCHW'} "
                    f"| {count_parameters(model):,} "
                    f"| {seconds:.3f} | {args.batch_size / seconds:.1f} | {ratio} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
