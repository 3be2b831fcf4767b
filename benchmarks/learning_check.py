"""Does GENESIS-V2 learn to segment? Two CPU checks, each beside the trivial answers.

Toy squares (default): one or two coloured squares (6–12 px) on a coloured background at
32×32, each colour channel from {0, 63, 127, 191, 255}; the published GENESIS-V2
architecture (at 32 px), trained by `genesis_dist.training.loop.fit` for `--minutes` of
wall-clock time (or, with `--cpu-budget`, threads × minutes of CPU time on a shared
machine). Every `--eval-every` steps it scores `--test-images` held-out images: foreground
ARI and mSC of the decoder masks and of the IC-SBP attention masks, printed beside the
trivial answers' scores on the same images (every pixel in one slot; the true
foreground/background split; one segment per distinct colour, which these data make nearly
perfect) and the untrained model's. Exits non-zero unless the final ARI-FG of the `--masks`
(attention by default: GENESIS-V2's segmentation at inference; or decoder) reaches
`--target` (0.75) and their mSC-FG beats the one-slot answer's.

    python benchmarks/learning_check.py [--minutes 15] [--lr 1e-3] [--slots 4] [--seed 0]

`--demo` instead runs the embedded default as a user does (`python -m genesis_dist.train`,
any `key=value` after `--` passed on) in a fresh folder, times it, and reads its final
held-out scores (`run.eval_images` test images): exits non-zero unless the `--masks`' ARI-FG ≥ 0.6,
their mSC-FG above the one-slot answer's and the whole command within 10 minutes.

    python benchmarks/learning_check.py --demo [--folder DIR] [-- run.seed=1]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from genesis_dist.config import load_config
from genesis_dist.metrics import masks_to_labels, mean_ignoring_nan, segmentation_scores
from genesis_dist.metrics.trivial import trivial_answer_scores
from genesis_dist.models import GenesisV2, build_model, count_parameters
from genesis_dist.training.loop import Hook, TrainState, fit, seed_everything, use_channels_last
from genesis_dist.training.objective import make_objective

PALETTE = np.array([0, 63, 127, 191, 255], dtype=np.float32) / 255.0
DEMO_TARGET, DEMO_MINUTES = 0.6, 10.0


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
def segmentation_of(model: GenesisV2, images: torch.Tensor, labels: torch.Tensor, chunk: int = 64) -> dict[str, float]:
    """Mean ARI-FG and mSC-FG of the decoder masks (`dec_*`) and IC-SBP attention masks
    (`att_*`) over `images` `[N, 3, H, W]` against `labels` `[N, H, W]`, with fixed noise."""
    was_training = model.training
    model.eval()
    per_image: dict[str, list[torch.Tensor]] = {}
    with torch.random.fork_rng():
        torch.manual_seed(1234)
        for start in range(0, len(images), chunk):
            out = model(images[start:start + chunk])
            truth = labels[start:start + chunk]
            for source, log_masks in (("dec", out.log_masks), ("att", out.log_att_masks)):
                scores = segmentation_scores(truth, masks_to_labels(log_masks))
                for name in ("ari_fg", "msc_fg"):
                    per_image.setdefault(f"{source}_{name}", []).append(scores[name])
    model.train(was_training)
    return {name: mean_ignoring_nan(torch.cat(values))[0] for name, values in per_image.items()}


def trivial_line(labels: torch.Tensor, images: torch.Tensor) -> tuple[str, dict]:
    trivial = trivial_answer_scores(labels, images)
    one, split, colour = trivial["one_slot"], trivial["fg_bg"], trivial["colour"]
    return (f"trivial answers on these {len(labels)} images: one slot ARI-FG {one['ari_fg']:.3f}, "
            f"mSC-FG {one['msc_fg']:.3f}; true fg/bg split ARI {split['ari']:.3f}; one segment per colour "
            f"ARI-FG {colour['ari_fg']:.3f}, mSC-FG {colour['msc_fg']:.3f}"), trivial


def squares_check(args) -> int:
    torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    rng = np.random.default_rng(args.seed)
    size = 32
    test_images, test_labels = squares_dataset(args.test_images, size, np.random.default_rng(10_000))
    cfg = load_config(["model=genesis_v2", f"model.img_size={size}", f"model.num_slots={args.slots}",
                       f"model.kernel={args.kernel}", f"model.pixel_std={args.pixel_std}",
                       f"model.mask_loss={str(args.mask_loss).lower()}", f"objective.goal={args.goal}",
                       f"objective.beta_min={args.beta_min}", f"objective.beta_init={args.beta_init}",
                       *(f"curriculum.{kv}" for kv in args.curriculum)])
    model = build_model(cfg.model)
    use_channels_last(model)
    objective = make_objective(cfg, model)
    hooks: list[Hook] = []
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / args.warmup) if args.warmup else 1.0)
    line, trivial = trivial_line(test_labels, test_images)
    untrained = segmentation_of(model, test_images, test_labels)
    print(f"GENESIS-V2 (published architecture) {count_parameters(model):,} params, K={args.slots}, batch "
          f"{args.batch_size}, lr {args.lr} (warm-up {args.warmup}), GECO goal {args.goal} → {objective.base.goal:.0f} nats, "
          f"β_init {args.beta_init:g}, β_min {args.beta_min:g}, σ {args.pixel_std}, {args.threads} threads"
          + (f", curriculum {' '.join(args.curriculum)}" if args.curriculum else ""))
    print(line)
    print(f"untrained model: ARI-FG decoder {untrained['dec_ari_fg']:.3f}, attention {untrained['att_ari_fg']:.3f} "
          f"(the IC-SBP's spatial partition)")
    print(f"{'step':>6} {'sec':>6} {'cpu s':>6} {'err':>7} {'kl':>7} {'beta':>8} | {'ARI-FG dec':>10} {'att':>6} "
          f"{'mSC-FG dec':>10} {'att':>6}")
    curve: list[dict] = []
    start, cpu_start = time.perf_counter(), time.process_time()

    def within_budget() -> bool:
        if args.cpu_budget:
            return time.process_time() - cpu_start < 60 * args.minutes * args.threads
        return time.perf_counter() - start < 60 * args.minutes

    class HeldOut(Hook):
        def wants_metrics(self, step: int) -> bool:
            return step % args.eval_every == 0

        def after_step(self, state: TrainState, metrics: dict | None) -> None:
            if metrics is None:
                return
            row = {"step": state.step, "seconds": round(time.perf_counter() - start, 1),
                   "cpu_seconds": round(time.process_time() - cpu_start, 1), "err": metrics["err"],
                   "kl": metrics["kl"], "beta": metrics["beta"], **segmentation_of(model, test_images, test_labels)}
            curve.append(row)
            print(f"{row['step']:>6} {row['seconds']:>6.0f} {row['cpu_seconds']:>6.0f} {row['err']:>7.0f} "
                  f"{row['kl']:>7.1f} {row['beta']:>8.3g} | {row['dec_ari_fg']:>10.3f} {row['att_ari_fg']:>6.3f} "
                  f"{row['dec_msc_fg']:>10.3f} {row['att_msc_fg']:>6.3f}", flush=True)

        def should_stop(self, state: TrainState) -> bool:
            return not within_budget()

    def batches():
        while True:
            yield squares_dataset(args.batch_size, size, rng)[0]

    state = fit(TrainState(model, objective, optimizer, schedule), batches(), args.max_steps, [*hooks, HeldOut()],
                channels_last=True, grad_clip=args.grad_clip)
    final = segmentation_of(model, test_images, test_labels)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    one = trivial["one_slot"]
    colour = trivial["colour"]
    print(f"steps {state.step} in {wall:.0f} s wall, {cpu:.0f} CPU-s; final decoder masks ARI-FG {final['dec_ari_fg']:.3f}, "
          f"mSC-FG {final['dec_msc_fg']:.3f}; attention masks ARI-FG {final['att_ari_fg']:.3f}, mSC-FG "
          f"{final['att_msc_fg']:.3f} (one slot {one['ari_fg']:.3f} / {one['msc_fg']:.3f}; one segment per colour "
          f"{colour['ari_fg']:.3f} / {colour['msc_fg']:.3f}); judged: {args.masks} masks, target ARI-FG {args.target}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "trivial": trivial, "untrained": untrained,
                                               "curve": curve, "final": final}, indent=1))
    judged = "dec" if args.masks == "decoder" else "att"
    return 0 if final[f"{judged}_ari_fg"] >= args.target and final[f"{judged}_msc_fg"] > one["msc_fg"] else 1


def demo_check(args, overrides: list[str]) -> int:
    """The embedded default, run as a user runs it, judged by its final held-out scores."""
    folder = Path(args.folder or tempfile.mkdtemp(prefix="genesis-demo-"))
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "genesis_dist.train", *overrides], cwd=folder,
                            env={**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")})
    wall = time.perf_counter() - started
    if result.returncode != 0:
        print(f"learning_check --demo: the demo failed (status {result.returncode})", file=sys.stderr)
        return 1
    (run,) = [p.parent for p in (folder / "runs").glob("*/metrics.jsonl")]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    final = next(r for r in reversed(records) if "eval_ari_fg" in r)
    suffix = "" if args.masks == "decoder" else "_att"
    ari_fg, msc_fg = final[f"eval_ari_fg{suffix}"], final[f"eval_msc_fg{suffix}"]
    one_ari, one_msc = final["eval_one_slot_ari_fg"], final["eval_one_slot_msc_fg"]
    print(f"demo: {wall / 60:.1f} min wall (limit {DEMO_MINUTES:g}), step {final['step']}: held-out {args.masks} masks ARI-FG "
          f"{ari_fg:.3f} (one slot {one_ari:.3f}, target {DEMO_TARGET}), mSC-FG {msc_fg:.3f} (one slot {one_msc:.3f}), "
          f"colour alone ARI-FG {final.get('eval_colour_ari_fg', float('nan')):.3f}, "
          f"decoder masks ARI-FG {final['eval_ari_fg']:.3f}, attention masks ARI-FG "
          f"{final.get('eval_ari_fg_att', float('nan')):.3f}; run folder {run}")
    ok = ari_fg >= DEMO_TARGET and msc_fg > one_msc and wall <= 60 * DEMO_MINUTES
    return 0 if ok else 1


def main() -> int:
    argv = sys.argv[1:]
    overrides = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", action="store_true", help="judge the embedded default instead of the toy squares")
    parser.add_argument("--folder", help="--demo: where to run it (default: a new temporary folder)")
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--max-steps", type=int, default=1_000_000)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=0, help="linear learning-rate warm-up steps")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--kernel", default="gaussian")
    parser.add_argument("--pixel-std", type=float, default=0.7)
    parser.add_argument("--goal", type=float, default=0.5655, help="GECO goal per pixel and channel (nats)")
    parser.add_argument("--beta-min", type=float, default=1e-10, help="GECO's lower clamp on β")
    parser.add_argument("--mask-loss", action="store_true", help="GENESIS-V2 Eq. 7 mask-consistency loss")
    parser.add_argument("--beta-init", type=float, default=1.0, help="GECO's initial β")
    parser.add_argument("--curriculum", nargs="*", default=[], metavar="KEY=VALUE",
                        help="curriculum.* settings (training/curriculum.py), e.g. pixel_std_from=0.7 "
                             "'pixel_std_steps=[800,1500]' mask_guidance=0.3 'mask_guidance_steps=[600,1200]'; "
                             "--pixel-std is then the final σ")
    parser.add_argument("--grad-clip", type=float, default=None)
    parser.add_argument("--test-images", type=int, default=256)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--target", type=float, default=0.75)
    parser.add_argument("--masks", choices=("attention", "decoder"), default="attention",
                        help="which GENESIS-V2 masks the exit status judges (both are printed): the IC-SBP "
                             "attention masks, its segmentation at inference and the authors' 'FG ARI', or "
                             "the decoder masks ('FG-R ARI')")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cpu-budget", action="store_true",
                        help="stop at threads × minutes of process CPU time instead of wall-clock time: "
                             "the same compute on a machine shared with other jobs")
    parser.add_argument("--json", help="write the curve here")
    args = parser.parse_args(argv)
    return demo_check(args, overrides) if args.demo else squares_check(args)


if __name__ == "__main__":
    sys.exit(main())
