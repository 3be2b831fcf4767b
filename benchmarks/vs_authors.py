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
The table gives medians over `--rounds` rounds after `--warmup` untimed ones and the ratio
authors / ours (> 1: ours is faster); the raw times, the load average of every round and
the machine go to benchmarks/results/vs_authors-<UTC time>.json (benchmarks/record.py).

    python benchmarks/vs_authors.py --authors-dir /path/to/genesis [--rounds 5] [--threads 2]
        [--models genesis_v2 genesis monet] [--calls forward_backward training_step]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from genesis_dist.config import load_config
from genesis_dist.models import build_model
from genesis_dist.training.loop import make_objective, make_optimizer, train_step, use_channels_last

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


def our_calls(name: str, images: torch.Tensor, num_slots: int, lr: float) -> dict[str, Callable[[], None]]:
    """forward_backward and training_step of our model (each with its own copy of the weights)."""
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
    torch.manual_seed(0)
    trained = build_model(cfg.model)
    if channels_last:
        use_channels_last(trained)
    objective = make_objective(cfg.objective, cfg.model.img_size)
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
    parser.add_argument("--no-save", action="store_true", help="print only; write no results file")
    args = parser.parse_args(argv)
    if not Path(args.authors_dir).is_dir():
        parser.error(f"--authors-dir {args.authors_dir}: no such folder")
    recorder = Recorder("vs_authors", argv=None if argv is None else [sys.argv[0], *argv])
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
        ours = our_calls(name, images, args.slots, args.lr)
        for call in args.calls:
            calls[(name, call, "authors")] = theirs[call]
            calls[(name, call, "ours")] = ours[call]
    print(f"[vs_authors] batch {args.batch_size}, {args.img_size} px, K = {args.slots}, {threads} threads, "
          f"torch {torch.__version__}, {len(calls)} calls per round, {args.warmup} + {args.rounds} rounds; "
          f"load average {load_average()}", flush=True)

    times: dict[tuple[str, str, str], list[float]] = {key: [] for key in calls}
    rounds = []
    for round_index in range(args.warmup + args.rounds):
        timed = round_index >= args.warmup
        this_round = {}
        for key, call in calls.items():
            start = time.perf_counter()
            call()
            seconds = time.perf_counter() - start
            this_round["/".join(key)] = round(seconds, 4)
            if timed:
                times[key].append(seconds)
        rounds.append({"round": round_index, "warmup": not timed, "seconds": this_round,
                       "load_average": load_average()})
        print(f"[vs_authors] round {round_index + 1}/{args.warmup + args.rounds}"
              f"{' (warm-up)' if not timed else ''}: "
              + ", ".join(f"{k} {v:.2f} s" for k, v in this_round.items()) + f"; load {load_average()}", flush=True)

    rows = []
    for name in args.models:
        for call in args.calls:
            authors, ours = times[(name, call, "authors")], times[(name, call, "ours")]
            rows.append({"model": name, "call": call,
                         "authors_median_s": statistics.median(authors), "ours_median_s": statistics.median(ours),
                         "authors_range_s": [min(authors), max(authors)], "ours_range_s": [min(ours), max(ours)],
                         "ratio": statistics.median(authors) / statistics.median(ours),
                         # the ratio of each round's pair, robust to load that changes between rounds
                         "ratio_per_round": [a / o for a, o in zip(authors, ours)]})
    print(f"\nbatch {args.batch_size}, {args.img_size} px, K = {args.slots}, CPU {threads} threads, "
          f"median of {args.rounds} interleaved rounds; load average at the end {load_average()}")
    print("| model | call | authors s (min–max) | ours s (min–max) | authors / ours | per-round ratios |")
    print("|---|---|---:|---:|---:|---|")
    for row in rows:
        print(f"| {NAMES[row['model']]} | {row['call'].replace('_', ' ')} "
              f"| {row['authors_median_s']:.2f} ({row['authors_range_s'][0]:.2f}–{row['authors_range_s'][1]:.2f}) "
              f"| {row['ours_median_s']:.2f} ({row['ours_range_s'][0]:.2f}–{row['ours_range_s'][1]:.2f}) "
              f"| **{row['ratio']:.2f}×** | {', '.join(f'{r:.2f}' for r in row['ratio_per_round'])} |")
    results = {"settings": {"batch_size": args.batch_size, "img_size": args.img_size, "num_slots": args.slots,
                            "threads": threads, "rounds": args.rounds, "warmup": args.warmup, "lr": args.lr,
                            "authors_dir": str(code.root), "stand_ins": code.stubbed},
               "rows": rows, "rounds": rounds}
    if not args.no_save:
        print(f"[vs_authors] raw results: {recorder.save(results)}")
    return results


if __name__ == "__main__":
    main()
