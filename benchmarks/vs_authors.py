"""Our GENESIS-V2, GENESIS and MONet-G side by side with the authors' code, in one process.

For each model, the authors' implementation (imported at run time from `--authors-dir`, a
checkout of applied-ai-lab/genesis with its `forge` submodule; see benchmarks/authors.py) and
ours are built at the same size (64 px, K = 7, batch 32 by default) and timed on the same
images with the same threads, in interleaved rounds: every round runs one of each timed call
in turn, so load from other processes falls on both alike. Two calls per implementation:
- forward+backward: the model on the batch, `mean(err) + mean(KL)` backpropagated;
- training step: their train.py's step (Adam, their GECO; zero_grad, forward, loss,
  backward, step) against ours, `training.loop.train_step` (Adam, our GECO, channels-last
  as training runs it by default).
The table gives medians over `--rounds` rounds after `--warmup` untimed ones of wall seconds
and of this process's CPU seconds, and the ratio authors / ours (> 1: ours is faster). Beside
them: the floating-point operations of one forward+backward of each (torch's FlopCounterMode),
the fp32 matrix-product rate of this machine at the same threads (`gemm_rate`), and so the
fewest seconds our forward+backward could take at that rate — the best ratio any exact
rewrite of ours could reach. `--compile` adds our forward+backward through torch.compile
(compile time, step time, and after how many steps it pays).

Both run under one allocator: `--malloc keep` (the default; what genesis-dist's CPU
training sets, training.loop.keep_freed_memory) or `default` (glibc's own), for both alike.
The raw times, the load average of every round and the machine go to
benchmarks/results/vs_authors-<UTC time>.json (benchmarks/record.py).

    python benchmarks/vs_authors.py --authors-dir /path/to/genesis [--rounds 5] [--threads 2]
        [--models genesis_v2 genesis monet] [--calls forward_backward training_step]
        [--malloc keep|default] [--compile] [--no-flops]
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from genesis_dist.config import load_config
from genesis_dist.models import build_model
from genesis_dist.training.loop import keep_freed_memory, make_optimizer, train_step, use_channels_last
from genesis_dist.training.objective import make_objective

sys.path.insert(0, str(Path(__file__).resolve().parent))
from authors import AuthorsCode  # noqa: E402  (benchmarks/ is not a package)
from record import Recorder, load_average  # noqa: E402

MODELS = ("genesis_v2", "genesis", "monet")
CALLS = ("forward_backward", "training_step")
NAMES = {"genesis_v2": "GENESIS-V2", "genesis": "GENESIS", "monet": "MONet-G"}


def our_config(name: str, img_size: int, num_slots: int, lr: float):
    """The published model `name` at the papers' training settings (GECO, Adam at `lr`)."""
    return load_config([f"model={name}", "data=multi_dsprites", f"model.img_size={img_size}",
                        f"model.num_slots={num_slots}", f"optim.lr={lr}", "optim.precision=fp32"])


def our_calls(name: str, images: torch.Tensor, num_slots: int, lr: float, compiled: bool = False,
              ) -> dict[str, Callable[[], None]]:
    """forward_backward and training_step of our model (each with its own copy of the weights),
    and with `compiled` forward_backward_compiled (a third copy through torch.compile)."""
    cfg = our_config(name, images.shape[-1], num_slots, lr)
    channels_last = bool(cfg.optim.channels_last)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    calls = {}
    torch.manual_seed(0)
    model = build_model(cfg.model).train()
    if channels_last:
        use_channels_last(model)
    batch = images.contiguous(memory_format=layout)

    def forward_backward() -> None:
        out = model(batch)
        (out.err.mean() + out.kl.mean() + sum((v.mean() for v in out.aux.values()), torch.zeros(()))).backward()
        model.zero_grad(set_to_none=True)

    calls["forward_backward"] = forward_backward
    if compiled:
        torch.manual_seed(0)
        copy = build_model(cfg.model).train()
        if channels_last:
            use_channels_last(copy)
        through_compile = torch.compile(copy)

        def forward_backward_compiled() -> None:
            out = through_compile(batch)
            (out.err.mean() + out.kl.mean() + sum((v.mean() for v in out.aux.values()), torch.zeros(()))).backward()
            copy.zero_grad(set_to_none=True)

        calls["forward_backward_compiled"] = forward_backward_compiled
    torch.manual_seed(0)
    trained = build_model(cfg.model)
    if channels_last:
        use_channels_last(trained)
    objective = make_objective(cfg, trained)
    optimizer, _ = make_optimizer(trained.parameters(), cfg.optim)
    calls["training_step"] = lambda: train_step(trained, objective, optimizer, batch, precision="fp32",
                                                channels_last=channels_last)
    return calls


def authors_calls(code: AuthorsCode, name: str, images: torch.Tensor, num_slots: int, lr: float,
                  ) -> dict[str, Callable[[], None]]:
    """forward_backward and training_step of the authors' model (each with its own weights)."""
    img_size = images.shape[-1]
    torch.manual_seed(0)
    model = code.build(name, img_size, num_slots)

    def forward_backward() -> None:
        err, kl = code.loss_terms(model, images)
        (err + kl).backward()
        model.zero_grad(set_to_none=True)

    torch.manual_seed(0)
    step = code.training_step(code.build(name, img_size, num_slots), img_size, lr)
    return {"forward_backward": forward_backward, "training_step": lambda: step(images)}


def gemm_rate(size: int = 2048, repeats: int = 10) -> float:
    """fp32 matrix-product rate of this process's threads, GFLOP/s (best of `repeats`): the
    ceiling of convolution arithmetic on this CPU."""
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(size, size, generator=generator), torch.randn(size, size, generator=generator)
    a @ b
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def flops_of(call: Callable[[], None]) -> float:
    """Floating-point operations of one call (matrix products and convolutions, forward and
    backward), counted by torch's FlopCounterMode."""
    with FlopCounterMode(display=False) as counter:
        call()
    return float(counter.get_total_flops())


def timed(call: Callable[[], None]) -> tuple[float, float]:
    """(wall, CPU) seconds of one call; CPU counts every thread of this process."""
    wall, cpu = time.perf_counter(), time.process_time()
    call()
    return time.perf_counter() - wall, time.process_time() - cpu


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--authors-dir", required=True, help="checkout of applied-ai-lab/genesis (with forge/)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--calls", nargs="+", default=list(CALLS), choices=CALLS)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--slots", type=int, default=7)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for both (default: all usable cores)")
    parser.add_argument("--malloc", choices=["keep", "default"], default="keep",
                        help="keep: glibc keeps freed memory, as our CPU training sets it (both alike)")
    parser.add_argument("--compile", action="store_true", help="also time our forward+backward through torch.compile")
    parser.add_argument("--no-flops", action="store_true", help="skip counting operations (one extra call each)")
    parser.add_argument("--no-save", action="store_true", help="print only; write no results file")
    args = parser.parse_args(argv)
    if not Path(args.authors_dir).is_dir():
        parser.error(f"--authors-dir {args.authors_dir}: no such folder")
    recorder = Recorder("vs_authors", argv=None if argv is None else [sys.argv[0], *argv])
    if args.malloc == "keep":
        keep_freed_memory()
    threads = args.threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    torch.set_num_threads(threads)
    try:
        code = AuthorsCode(args.authors_dir)
    except (FileNotFoundError, ImportError) as error:
        sys.exit(f"vs_authors: {error}")
    images = torch.rand(args.batch_size, 3, args.img_size, args.img_size, generator=torch.Generator().manual_seed(0))

    calls: dict[tuple[str, str, str], Callable[[], None]] = {}
    for name in args.models:
        theirs = authors_calls(code, name, images, args.slots, args.lr)
        ours = our_calls(name, images, args.slots, args.lr, compiled=args.compile)
        for call in args.calls:
            calls[(name, call, "authors")] = theirs[call]
            calls[(name, call, "ours")] = ours[call]
        if args.compile:
            calls[(name, "forward_backward", "ours compiled")] = ours["forward_backward_compiled"]
    rate = gemm_rate()
    print(f"[vs_authors] batch {args.batch_size}, {args.img_size} px, K = {args.slots}, {threads} threads, "
          f"malloc {args.malloc}, torch {torch.__version__}, fp32 matrix product {rate:.0f} GFLOP/s; "
          f"{len(calls)} calls per round, {args.warmup} + {args.rounds} rounds; load average {load_average()}",
          flush=True)
    flops = {}
    if not args.no_flops:
        for (name, call, impl), fn in calls.items():
            if call == "forward_backward" and impl != "ours compiled":
                flops[(name, impl)] = flops_of(fn)

    times: dict[tuple[str, str, str], list[tuple[float, float]]] = {key: [] for key in calls}
    first_call: dict[tuple[str, str, str], float] = {}
    rounds = []
    for round_index in range(args.warmup + args.rounds):
        warm = round_index < args.warmup
        this_round = {}
        for key, call in calls.items():
            wall, cpu = timed(call)
            first_call.setdefault(key, wall)
            this_round["/".join(key)] = {"wall_s": round(wall, 4), "cpu_s": round(cpu, 4)}
            if not warm:
                times[key].append((wall, cpu))
        rounds.append({"round": round_index, "warmup": warm, "seconds": this_round, "load_average": load_average()})
        print(f"[vs_authors] round {round_index + 1}/{args.warmup + args.rounds}{' (warm-up)' if warm else ''}: "
              + ", ".join(f"{k} {v['wall_s']:.2f} s" for k, v in this_round.items())
              + f"; load {load_average()}", flush=True)

    def median(key, which):
        return statistics.median(t[which] for t in times[key])

    rows = []
    for name in args.models:
        for call in args.calls:
            a, o = (name, call, "authors"), (name, call, "ours")
            row = {"model": name, "call": call,
                   "authors_wall_s": median(a, 0), "ours_wall_s": median(o, 0),
                   "authors_cpu_s": median(a, 1), "ours_cpu_s": median(o, 1),
                   "authors_wall_range_s": [min(t[0] for t in times[a]), max(t[0] for t in times[a])],
                   "ours_wall_range_s": [min(t[0] for t in times[o]), max(t[0] for t in times[o])],
                   # each round's pair: robust to load that changes between rounds
                   "ratio_per_round": [ta[0] / to[0] for ta, to in zip(times[a], times[o])]}
            row["ratio_wall"] = row["authors_wall_s"] / row["ours_wall_s"]
            row["ratio_cpu"] = row["authors_cpu_s"] / row["ours_cpu_s"]
            if call == "forward_backward" and flops:
                row["authors_gflop"], row["ours_gflop"] = flops[(name, "authors")] / 1e9, flops[(name, "ours")] / 1e9
                row["ours_fewest_s"] = row["ours_gflop"] / rate
                row["best_possible_ratio"] = row["authors_wall_s"] / row["ours_fewest_s"]
            rows.append(row)
    compiled_rows = []
    for name in args.models if args.compile else []:
        c, e = (name, "forward_backward", "ours compiled"), (name, "forward_backward", "ours")
        eager, step = median(e, 0), median(c, 0)
        compile_s = first_call[c] - step
        compiled_rows.append({"model": name, "eager_s": eager, "compiled_s": step, "first_call_s": first_call[c],
                              "compile_s": compile_s,
                              "pays_after_steps": math.ceil(compile_s / (eager - step)) if step < eager else None})

    print(f"\nbatch {args.batch_size}, {args.img_size} px, K = {args.slots}, CPU {threads} threads, malloc {args.malloc}, "
          f"median of {args.rounds} interleaved rounds; load average at the end {load_average()}; "
          f"fp32 matrix product {rate:.0f} GFLOP/s")
    print("| model | call | authors s (min–max) | ours s (min–max) | authors / ours | per-round ratios | CPU-s ratio "
          "| GFLOP authors / ours | ours at the matrix-product rate | best possible ratio |")
    print("|---|---|---:|---:|---:|---|---:|---:|---:|---:|")
    for row in rows:
        floor = (f"{row['authors_gflop']:.0f} / {row['ours_gflop']:.0f} | {row['ours_fewest_s']:.2f} s "
                 f"| {row['best_possible_ratio']:.2f}×") if "ours_gflop" in row else "— | — | —"
        print(f"| {NAMES[row['model']]} | {row['call'].replace('_', ' ')} "
              f"| {row['authors_wall_s']:.2f} ({row['authors_wall_range_s'][0]:.2f}–{row['authors_wall_range_s'][1]:.2f}) "
              f"| {row['ours_wall_s']:.2f} ({row['ours_wall_range_s'][0]:.2f}–{row['ours_wall_range_s'][1]:.2f}) "
              f"| **{row['ratio_wall']:.2f}×** | {', '.join(f'{r:.2f}' for r in row['ratio_per_round'])} "
              f"| {row['ratio_cpu']:.2f}× | {floor} |")
    if compiled_rows:
        print("\n| model | ours eager s | ours compiled s | first compiled call s | compile pays after |")
        print("|---|---:|---:|---:|---|")
        for r in compiled_rows:
            pays = f"{r['pays_after_steps']:,} steps" if r["pays_after_steps"] else "never (not faster)"
            print(f"| {NAMES[r['model']]} | {r['eager_s']:.2f} | {r['compiled_s']:.2f} | {r['first_call_s']:.1f} | {pays} |")
    results = {"settings": {"batch_size": args.batch_size, "img_size": args.img_size, "num_slots": args.slots,
                            "threads": threads, "rounds": args.rounds, "warmup": args.warmup, "lr": args.lr,
                            "malloc": args.malloc, "authors_dir": str(code.root), "stand_ins": code.stubbed},
               "gemm_gflop_per_s": rate, "rows": rows, "compiled": compiled_rows, "rounds": rounds}
    if not args.no_save:
        print(f"[vs_authors] raw results: {recorder.save(results)}")
    return results


if __name__ == "__main__":
    main()
