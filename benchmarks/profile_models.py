"""Where a forward+backward step's time goes, per module: torch.profiler over one step of
our GENESIS-V2 / GENESIS / MONet-G (and, with `--authors-dir`, the authors' same model).

Each submodule down to `--depth` levels is wrapped in a profiler range while it runs
forward; every operator's self time goes to the innermost module range around it, and
every backward node's time to the module whose forward op created it (the profiler's
autograd sequence numbers link the two). Operators outside any submodule (the mixture
likelihood, the KL, IC-SBP code in the model's own forward) are "(model itself)".
Prints, per model, a table of forward / backward milliseconds per module and their share,
then the operators with the most self time.

    python benchmarks/profile_models.py [--models genesis_v2 genesis] [--batch-size 32] [--threads 1]
        [--depth 2] [--authors-dir /path/to/genesis] [--layout nhwc|nchw] [--top 15]
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

from genesis_dist.config import model_config
from genesis_dist.models import build_model
from genesis_dist.training.loop import keep_freed_memory, use_channels_last

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import Recorder, load_average  # noqa: E402

PREFIX = "module::"
OUTSIDE = "(model itself)"
BACKWARD = "autograd::engine::evaluate_function: "


def instrument(model: nn.Module, depth: int) -> list:
    """Open a profiler range named after each submodule (dotted path, ≤ `depth` levels) for
    the duration of its forward. Returns the hook handles."""
    handles, open_ranges = [], {}
    for name, module in model.named_modules():
        if not name or name.count(".") >= depth:
            continue

        def pre(mod, args, name=name):
            rf = record_function(PREFIX + name)
            rf.__enter__()
            open_ranges.setdefault(name, []).append(rf)

        def post(mod, args, out, name=name):
            open_ranges[name].pop().__exit__(None, None, None)

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    return handles


def owner(event) -> str:
    """The innermost module range around a profiler event."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith(PREFIX):
            return parent.name[len(PREFIX):]
        parent = parent.cpu_parent
    return OUTSIDE


def per_module(events) -> tuple[dict[str, float], dict[str, float]]:
    """(forward ms, backward ms) per module from the events of one profiled step."""
    forward, backward = defaultdict(float), defaultdict(float)
    module_of_sequence = {}
    for e in events:
        if e.name.startswith(PREFIX) or e.name.startswith(BACKWARD):
            continue
        if _in_backward(e):
            continue
        module = owner(e)
        forward[module] += e.self_cpu_time_total / 1e3
        if e.sequence_nr >= 0:
            module_of_sequence.setdefault(e.sequence_nr, module)
    for e in events:
        if e.name.startswith(BACKWARD):
            backward[module_of_sequence.get(e.sequence_nr, "(autograd, unattributed)")] += e.cpu_time_total / 1e3
    return dict(forward), dict(backward)


def _in_backward(event) -> bool:
    parent = event
    while parent is not None:
        if parent.name.startswith(BACKWARD):
            return True
        parent = parent.cpu_parent
    return False


def profile_step(model: nn.Module, loss_of, images: torch.Tensor, depth: int):
    """Profile one forward+backward (after one untimed)."""
    loss_of(model, images).backward()
    model.zero_grad(set_to_none=True)
    handles = instrument(model, depth)
    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            loss_of(model, images).backward()
    finally:
        for handle in handles:
            handle.remove()
    model.zero_grad(set_to_none=True)
    return prof


def ours_loss(model, images):
    out = model(images)
    return out.err.mean() + out.kl.mean() + sum((v.mean() for v in out.aux.values()), torch.zeros(()))


def report(title: str, prof, top: int) -> dict:
    events = prof.events()
    forward, backward = per_module(events)
    total = sum(forward.values()) + sum(backward.values())
    modules = sorted(set(forward) | set(backward), key=lambda m: -(forward.get(m, 0) + backward.get(m, 0)))
    print(f"\n### {title}: {total / 1e3:.2f} s of operator time in one forward+backward\n")
    print("| module | forward ms | backward ms | share |\n|---|---:|---:|---:|")
    rows = []
    for m in modules:
        f, b = forward.get(m, 0.0), backward.get(m, 0.0)
        rows.append({"module": m, "forward_ms": round(f, 1), "backward_ms": round(b, 1), "share": (f + b) / total})
        print(f"| {m} | {f:,.0f} | {b:,.0f} | {100 * (f + b) / total:.1f} % |")
    ops = sorted(prof.key_averages(), key=lambda a: -a.self_cpu_time_total)[:top]
    print(f"\n| operator (top {top} by self time) | calls | self ms | share |\n|---|---:|---:|---:|")
    top_ops = []
    for a in ops:
        top_ops.append({"op": a.key, "calls": a.count, "self_ms": round(a.self_cpu_time_total / 1e3, 1)})
        print(f"| {a.key} | {a.count} | {a.self_cpu_time_total / 1e3:,.0f} | "
              f"{100 * a.self_cpu_time_total / 1e3 / total:.1f} % |")
    return {"model": title, "total_ms": round(total, 1), "modules": rows, "top_ops": top_ops}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["genesis_v2", "genesis"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--slots", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="1 by default: less disturbed by other load")
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--layout", choices=["nhwc", "nchw"], default="nhwc", help="ours (training's default: nhwc)")
    parser.add_argument("--authors-dir", help="also profile the authors' model (benchmarks/authors.py)")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc returning freed memory to the OS (training keeps it: keep_freed_memory)")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    if not args.default_malloc:
        keep_freed_memory()
    recorder = Recorder("profile_models")
    torch.set_num_threads(args.threads)
    images = torch.rand(args.batch_size, 3, args.img_size, args.img_size, generator=torch.Generator().manual_seed(0))
    code = None
    if args.authors_dir:
        from authors import AuthorsCode

        code = AuthorsCode(args.authors_dir)
    print(f"batch {args.batch_size}, {args.img_size} px, K = {args.slots}, {args.threads} thread(s), "
          f"torch {torch.__version__}, load average {load_average()}")
    results = []
    for name in args.models:
        torch.manual_seed(0)
        model = build_model(model_config([f"img_size={args.img_size}", f"num_slots={args.slots}"], name=name)).train()
        batch = images
        if args.layout == "nhwc":
            use_channels_last(model)
            batch = images.contiguous(memory_format=torch.channels_last)
        results.append(report(f"ours {name} ({args.layout.upper()})", profile_step(model, ours_loss, batch, args.depth),
                              args.top))
        if code is not None:
            theirs = code.build(name, args.img_size, args.slots)
            results.append(report(f"authors' {name}", profile_step(
                theirs, lambda m, x: sum(code.loss_terms(m, x)), images, args.depth), args.top))
    print(f"\nload average at the end {load_average()}")
    if not args.no_save:
        print(f"raw results: {recorder.save({'settings': vars(args), 'profiles': results})}")


if __name__ == "__main__":
    main()
