"""Does GENESIS-V2 learn to segment? A 15-minute CPU check on a toy dataset.

One or two coloured squares (6–12 px) on a coloured background at 32×32, each
colour channel from {0, 63, 127, 191, 255}; K = 4, batch 32, GECO. Every
`--eval-every` steps: steps, seconds, err against the GECO goal, KL, β and
foreground ARI (decoder masks and IC-SBP attention masks) on 64 held-out
images. Exits non-zero unless foreground ARI (decoder masks) reaches
`--target` (default 0.3).

    python benchmarks/learning_check.py [--minutes 15] [--lr 1e-3]
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from genesis_dist.config import ObjectiveConfig
from genesis_dist.training.loop import Hook, TrainState, fit, make_objective, seed_everything, use_channels_last
from genesis_dist.metrics import ari, masks_to_labels
from genesis_dist.models import GenesisV2, count_parameters

PALETTE = np.array([0, 63, 127, 191, 255], dtype=np.float32) / 255.0


def squares_dataset(n: int, size: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` images `[n, 3, size, size]` in [0, 1] and label maps `[n, size, size]`
    (0 background, 1..2 squares in painter's order)."""
    images = np.empty((n, 3, size, size), dtype=np.float32)
    labels = np.zeros((n, size, size), dtype=np.int64)
    for i in range(n):
        background = rng.choice(PALETTE, 3)
        images[i] = background[:, None, None]
        for label in range(1, rng.integers(1, 3) + 1):
            colour = rng.choice(PALETTE, 3)
            while np.array_equal(colour, background):
                colour = rng.choice(PALETTE, 3)
            side = rng.integers(6, 13)
            top, left = rng.integers(0, size - side + 1, 2)
            images[i, :, top : top + side, left : left + side] = colour[:, None, None]
            labels[i, top : top + side, left : left + side] = label
    return torch.from_numpy(images), torch.from_numpy(labels)


@torch.no_grad()
def foreground_ari(model: GenesisV2, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Mean foreground ARI of the decoder masks and of the IC-SBP attention masks."""
    model.eval()
    out = model(images)
    model.train()
    decoder = ari(labels, masks_to_labels(out.log_masks), foreground_only=True)
    attention = ari(labels, masks_to_labels(out.log_att_masks), foreground_only=True)
    return float(decoder.nanmean()), float(attention.nanmean())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--max-steps", type=int, default=100_000)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--kernel", default="gaussian")
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--target", type=float, default=0.3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--beta-min", type=float, default=1e-10, help="GECO's lower clamp on β")
    parser.add_argument("--nchw", action="store_true", help="keep NCHW activations (default: channels-last)")
    parser.add_argument("--cpu-budget", action="store_true",
                        help="stop at threads × minutes of process CPU time instead of wall-clock time: "
                             "the same compute on a machine shared with other jobs")
    parser.add_argument("--json", help="write the curve here")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    rng = np.random.default_rng(args.seed)
    size = 32
    held_out_images, held_out_labels = squares_dataset(64, size, np.random.default_rng(10_000 + args.seed))
    model = GenesisV2(img_size=size, num_slots=args.slots, kernel=args.kernel)
    channels_last = not args.nchw
    if channels_last:
        use_channels_last(model)
    objective = make_objective(ObjectiveConfig(beta_min=args.beta_min), size)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    print(
        f"GENESIS-V2 {count_parameters(model):,} params, K={args.slots}, batch {args.batch_size}, "
        f"lr {args.lr}, GECO goal {objective.goal:.0f} nats, β_min {args.beta_min:g}, {args.threads} threads, "
        f"{'NCHW' if args.nchw else 'channels-last'}"
    )
    print(f"{'step':>6} {'sec':>7} {'cpu s':>7} {'err':>8} {'goal':>6} {'kl':>7} {'beta':>8} {'ARI-FG dec':>10} {'ARI-FG att':>10}")
    curve = []
    start, cpu_start = time.perf_counter(), time.process_time()

    def within_budget() -> bool:
        if args.cpu_budget:
            return time.process_time() - cpu_start < 60 * args.minutes * args.threads
        return time.perf_counter() - start < 60 * args.minutes

    class Budget(Hook):
        def should_stop(self, state: TrainState) -> bool:
            return not within_budget()

    class HeldOut(Hook):
        """Every `--eval-every` steps: window means of err / KL, β, and held-out ARI-FG."""

        def wants_metrics(self, step: int) -> bool:
            return step % args.eval_every == 0

        def after_step(self, state: TrainState, metrics: dict[str, float] | None) -> None:
            if metrics is None or state.step % args.eval_every:
                return
            dec, att = foreground_ari(model, held_out_images, held_out_labels)
            row = {
                "step": state.step,
                "seconds": round(time.perf_counter() - start, 1),
                "cpu_seconds": round(time.process_time() - cpu_start, 1),
                "err": metrics["err"], "kl": metrics["kl"], "beta": metrics["beta"],
                "ari_fg_decoder": dec, "ari_fg_attention": att,
            }
            curve.append(row)
            print(
                f"{state.step:>6} {row['seconds']:>7.0f} {row['cpu_seconds']:>7.0f} {row['err']:>8.0f} "
                f"{objective.goal:>6.0f} {row['kl']:>7.1f} {row['beta']:>8.3g} {dec:>10.3f} {att:>10.3f}",
                flush=True,
            )

    def batches():
        while True:
            yield squares_dataset(args.batch_size, size, rng)[0]

    state = fit(TrainState(model, objective, optimizer), batches(), args.max_steps, [HeldOut(), Budget()],
                channels_last=channels_last)
    step = state.step
    best = max((r["ari_fg_decoder"] for r in curve), default=float("nan"))
    final = curve[-1]["ari_fg_decoder"] if curve else float("nan")
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    print(f"steps {step} in {wall:.0f} s wall, {cpu:.0f} CPU-s; final ARI-FG {final:.3f}, best {best:.3f}, "
          f"target {args.target}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "curve": curve}, f, indent=1)
    return 0 if best >= args.target else 1


if __name__ == "__main__":
    sys.exit(main())
