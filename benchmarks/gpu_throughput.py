"""Training images/s per GPU for GENESIS-V2 and GENESIS (64 px, K = 7): fp32 / bf16 autocast,
eager / torch.compile, per-GPU batch 32 / 64 / 128, with the fraction of each step the GPU
is busy (CUDA kernel time over wall time, torch.profiler).

    python benchmarks/gpu_throughput.py                  # on a GPU: the full table, < 5 minutes
    python benchmarks/gpu_throughput.py --device cpu     # CPU rows: batch 8, 3 steps (correctness, ratios)
    python benchmarks/gpu_throughput.py --markdown       # also print the table as markdown

Raw results (rows and machine) go to benchmarks/results/ (benchmarks/record.py;
`GENESIS_BENCH_RESULTS` elsewhere).

A step is `genesis_dist.training.loop.train_step` (the one the training loop runs:
forward, GECO loss, backward, Adam, GECO update; its metrics stay on the device) on
channels-last weights and synthetic images already on the device, so data loading is
not measured (benchmarks/data_throughput.py measures it). Needs torch only: no Ray,
OmegaConf or webdataset. Goal (issue 13): ≥ 3,000 img/s per GPU for GENESIS-V2 in bf16.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace

import torch

from genesis_dist.models import build_model
from genesis_dist.schema import ModelConfig
from genesis_dist.training.loop import train_step, use_channels_last
from genesis_dist.training.objective import TrainingObjective, base_objective

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import Recorder  # noqa: E402  (benchmarks/ is not a package)

GOAL_V2_BF16 = 3000  # img/s per GPU
OBJECTIVE = SimpleNamespace(name="geco", goal=0.5655, step_size=None, alpha=0.99, speedup=10.0, beta_init=1.0,
                            beta_min=1e-10, beta_max=1e10, beta=1.0)


@dataclass
class Row:
    model: str
    precision: str
    mode: str
    batch: int
    img_per_s: float | None = None
    ms_per_step: float | None = None
    gpu_busy: float | None = None  # fraction of wall time with a CUDA kernel running
    warmup_s: float | None = None  # first steps, compilation included
    memory_gib: float | None = None
    note: str = ""


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gpu_busy_fraction(step, device: torch.device, steps: int) -> float:
    """Summed CUDA kernel time of `steps` profiled steps over their wall time (kernels of
    one stream do not overlap, so the sum is the time the GPU had work)."""
    from torch.profiler import ProfilerActivity, profile

    synchronize(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        synchronize(device)
        wall = time.perf_counter() - start
    kernel_us = sum(getattr(e, "self_device_time_total", 0) for e in prof.key_averages())  # each kernel once
    return min(1.0, kernel_us / 1e6 / wall)


def measure(name: str, precision: str, mode: str, batch: int, device: torch.device, steps: int, warmup: int,
            profile_steps: int) -> Row:
    """One row: build, (compile,) warm up, time `steps` steps with one synchronisation at the end."""
    row = Row(name, precision, mode, batch)
    torch.manual_seed(0)
    model = use_channels_last(build_model(ModelConfig(name=name, img_size=64, num_slots=7)).to(device))
    objective = TrainingObjective(base_objective(OBJECTIVE, 64)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    trained = torch.compile(model) if mode == "compiled" else model
    images = torch.rand(batch, 3, 64, 64, device=device)

    def step():
        return train_step(trained, objective, optimizer, images, precision=precision, channels_last=True)  # noqa: F821 (deleted after the last call)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        start = time.perf_counter()
        for _ in range(warmup):
            metrics = step()
        synchronize(device)
        row.warmup_s = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(steps):
            metrics = step()
        synchronize(device)
        elapsed = time.perf_counter() - start
        if not torch.isfinite(metrics["loss"]):
            row.note = "non-finite loss"
        row.img_per_s, row.ms_per_step = batch * steps / elapsed, 1000 * elapsed / steps
        if device.type == "cuda":
            row.memory_gib = torch.cuda.max_memory_allocated(device) / 2**30
            if profile_steps:
                row.gpu_busy = gpu_busy_fraction(step, device, profile_steps)
    except torch.OutOfMemoryError:
        row.note = "out of memory"
    finally:
        del model, trained, optimizer, images
        if device.type == "cuda":
            torch.cuda.empty_cache()
        torch._dynamo.reset()
    return row


def fmt(value, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def table(rows: list[Row]) -> str:
    lines = ["| model | precision | mode | batch | img/s | ms/step | GPU busy | warm-up s | peak GiB | note |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r.model} | {r.precision} | {r.mode} | {r.batch} | {fmt(r.img_per_s, ',.1f')} | "
                     f"{fmt(r.ms_per_step, '.1f')} | {fmt(r.gpu_busy and 100 * r.gpu_busy, '.0f')}{'%' if r.gpu_busy else ''} | "
                     f"{fmt(r.warmup_s, '.1f')} | {fmt(r.memory_gib, '.2f')} | {r.note} |")
    return "\n".join(lines)


def machine(device: torch.device) -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU only ({platform.processor() or platform.machine()})"
    return (f"{where}, {cores} cores, torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"load average {os.getloadavg()[0]:.1f}")


def main(argv: list[str] | None = None) -> list[Row]:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--models", nargs="+", default=["genesis_v2", "genesis"])
    parser.add_argument("--precisions", nargs="+", default=None, help="default: fp32 bf16 (GPU), fp32 (CPU)")
    parser.add_argument("--modes", nargs="+", default=["eager", "compiled"])
    parser.add_argument("--batches", nargs="+", type=int, default=None, help="default: 32 64 128 (GPU), 8 (CPU)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per row (default 20 GPU, 3 CPU)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    parser.add_argument("--profile-steps", type=int, default=5, help="profiled steps for the GPU-busy fraction")
    parser.add_argument("--budget-s", type=float, default=270.0, help="rows not started by then are skipped")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--no-save", action="store_true", help="print only; write no results file")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    precisions = args.precisions or (["fp32", "bf16"] if gpu else ["fp32"])
    batches = args.batches or ([32, 64, 128] if gpu else [8])
    steps = args.steps or (20 if gpu else 3)
    if gpu:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    print(f"[gpu_throughput] {machine(device)}", flush=True)
    recorder = Recorder("gpu_throughput", argv=None if argv is None else [sys.argv[0], *argv])
    # Eager rows first (seconds each), then the compiled ones (a compilation each), bf16 before
    # fp32 and GENESIS-V2 first, so that a spent budget skips the least needed rows; the table
    # keeps the model × precision × mode × batch order.
    plan = [(name, precision, mode, batch) for name in args.models for precision in precisions
            for mode in args.modes for batch in batches]
    order = sorted(plan, key=lambda r: (args.modes.index(r[2]), r[1] != "bf16", args.models.index(r[0]),
                                        batches.index(r[3])))
    started, measured = time.perf_counter(), {}
    for name, precision, mode, batch in order:
        if time.perf_counter() - started > args.budget_s:
            measured[(name, precision, mode, batch)] = Row(name, precision, mode, batch,
                                                           note=f"skipped: {args.budget_s:.0f} s budget spent")
            continue
        row = measure(name, precision, mode, batch, device, steps, args.warmup, args.profile_steps if gpu else 0)
        measured[(name, precision, mode, batch)] = row
        print(f"[gpu_throughput] {name} {precision} {mode} batch {batch}: {fmt(row.img_per_s, '.1f')} img/s, "
              f"{fmt(row.ms_per_step, '.1f')} ms/step, GPU busy {fmt(row.gpu_busy, '.2f')}, "
              f"warm-up {fmt(row.warmup_s, '.1f')} s {row.note}", flush=True)
    rows = [measured[key] for key in plan]
    print(f"[gpu_throughput] {time.perf_counter() - started:.0f} s in all, load average {os.getloadavg()[0]:.1f} at the end",
          flush=True)
    best = max((r.img_per_s or 0 for r in rows if r.model == "genesis_v2" and r.precision == "bf16"), default=0)
    if gpu and best:
        print(f"[gpu_throughput] GENESIS-V2 bf16 best {best:,.0f} img/s per GPU (goal ≥ {GOAL_V2_BF16:,})", flush=True)
    if args.markdown:
        print(table(rows))
    if not args.no_save:
        saved = recorder.save({"settings": {"device": machine(device), "steps": steps, "warmup": args.warmup,
                                            "profile_steps": args.profile_steps, "budget_s": args.budget_s},
                               "goal_v2_bf16_img_per_s": GOAL_V2_BF16, "rows": [asdict(r) for r in rows]})
        print(f"[gpu_throughput] raw results: {saved}", flush=True)
    return rows


if __name__ == "__main__":
    main()
