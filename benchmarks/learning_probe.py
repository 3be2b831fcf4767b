"""Learning probe: how fast does GENESIS-V2 learn objects under given knob settings?

A step-budgeted experiment driver (issue 14): trains GENESIS-V2 with the library's
`train_step` on the learning check's toy squares or on generated Multi-dSprites, and every
`--eval-every` steps scores ≥ 256 held-out images: foreground ARI and mSC-FG of the decoder
masks and of the IC-SBP attention masks, ARI over all pixels, err / KL / β, always beside the
trivial answers' scores on the same images (all pixels in one slot; the ground-truth
foreground/background split). Budget by steps, not wall time: the machine is shared; convert
with `--calibrate`, which times steps at 1 and 2 threads.

    python benchmarks/learning_probe.py --data squares --steps 600 --json out.json
    python benchmarks/learning_probe.py --data dsprites --size 32 --arch demo --slots 5 --batch 16 ...
    python benchmarks/learning_probe.py --calibrate 30 [same model/data options]

Knobs besides the library's (all default off, so a default run is the library's recipe):
`--goal-start/--goal-steps` anneal GECO's per-pixel goal linearly from a loose value to
`--goal`; `--warmup` ramps the learning rate linearly from 0 over that many steps.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

try:
    from genesis_dist.training.loop import seed_everything, train_step, use_channels_last
except ImportError:  # before the move to genesis_dist/training/
    from genesis_dist.loop import seed_everything, train_step, use_channels_last
from genesis_dist.metrics import masks_to_labels, mean_ignoring_nan, segmentation_scores
from genesis_dist.metrics.trivial import trivial_answer_scores
from genesis_dist.models import GenesisV2, count_parameters
from genesis_dist.models.genesis_v2 import masks_kl
from genesis_dist.training.curriculum import decaying_weight
from genesis_dist.objectives import GECO, BetaELBO, geco_goal, geco_step_size

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from learning_check import squares_dataset  # noqa: E402

# Reduced GENESIS-V2 of the embedded default (configs/experiment/default.yaml).
ARCHS = {
    "published": dict(encoder_filters=64, head_filters=64, decoder_filters=64, prior_hidden=256),
    "demo": dict(encoder_filters=32, head_filters=32, decoder_filters=32, prior_hidden=128),
}
SCORES = ("ari_fg", "msc_fg", "ari")


class ProbeGenesisV2(GenesisV2):
    """GenesisV2 plus one probe-only term (default off, then the library model exactly):
    `dec_att_weight · Σ_pixels KL(Cat(stopgrad(m_att)) ‖ Cat(m_dec))`, which pulls the decoder
    masks towards the IC-SBP attention masks (the reverse of V2 Eq. 7). `train_step` adds aux
    terms to the KL term, which GECO scales by β, so the probe sets `dec_att_weight` to the
    wanted weight divided by the current β."""

    dec_att_weight = 0.0
    att_dec_weight = 0.0

    def forward(self, x, stop_pixels=None):
        out = super().forward(x, stop_pixels)
        if self.training and self.att_dec_weight > 0:
            out.aux["att_dec"] = self.att_dec_weight * masks_kl(out.log_att_masks, out.log_masks.detach())
        if self.training and self.dec_att_weight > 0:
            out.aux["dec_att"] = self.dec_att_weight * masks_kl(out.log_att_masks.detach(), out.log_masks)
        return out


def dsprites_arrays(n: int, split: str, size: int, seed: int, min_sprites: int, max_sprites: int,
                    extent: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` generated Multi-dSprites images `[n, 3, size, size]` in [0, 1] and label maps `[n, size, size]`,
    cached under /tmp. `extent` overrides the sprite size at scale 1 (fraction of the side; library: 0.3)."""
    from genesis_dist.data.formats import sprites
    from genesis_dist.data.formats.base import SourceItem
    from genesis_dist.data.formats.multi_dsprites import MultiDSprites

    tag = f"{split}-{n}-{size}-{seed}-{min_sprites}-{max_sprites}-{extent}"
    cache = Path("/tmp/learning_probe_cache") / f"mds-{tag}.npz"
    if cache.exists():
        with np.load(cache) as f:
            return torch.from_numpy(f["images"]), torch.from_numpy(f["labels"])
    if extent is not None:
        sprites._EXTENT = extent
        sprites.sprite_patch.cache_clear()
    gen = MultiDSprites({split: n}, img_size=size, seed=seed, min_sprites=min_sprites, max_sprites=max_sprites)
    images = np.empty((n, 3, size, size), dtype=np.float32)
    labels = np.empty((n, size, size), dtype=np.int64)
    for i, item in enumerate(gen.items(split, on_error=None)):
        sample = gen.convert(item)[0]
        images[i] = sample.image.transpose(2, 0, 1) / 255.0
        labels[i] = sample.mask
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(cache, images=images, labels=labels)
    return torch.from_numpy(images), torch.from_numpy(labels)


class Batches:
    """Training batches: fresh toy squares every step, or epochs over a fixed generated set."""

    def __init__(self, args, rng: np.random.Generator):
        self.args, self.rng = args, rng
        if args.data == "dsprites":
            self.images, _ = dsprites_arrays(args.train_images, "train", args.size, args.data_seed,
                                             args.min_sprites, args.max_sprites, args.extent)
            self.order, self.pos = rng.permutation(len(self.images)), 0

    def next(self) -> torch.Tensor:
        b = self.args.batch
        if self.args.data == "squares":
            return squares_dataset(b, self.args.size, self.rng)[0]
        if self.pos + b > len(self.order):
            self.order, self.pos = self.rng.permutation(len(self.images)), 0
        idx = torch.from_numpy(self.order[self.pos:self.pos + b])
        self.pos += b
        return self.images[idx]


def held_out(args) -> tuple[torch.Tensor, torch.Tensor]:
    if args.data == "squares":
        # The learning check's held-out seed (10,000 + seed), fixed at seed 0 here so every
        # trial is scored on the same images.
        return squares_dataset(args.test_images, args.size, np.random.default_rng(10_000))
    return dsprites_arrays(args.test_images, "test", args.size, args.data_seed, args.min_sprites,
                           args.max_sprites, args.extent)


@torch.no_grad()
def evaluate(model: GenesisV2, images: torch.Tensor, labels: torch.Tensor, chunk: int = 64) -> dict[str, float]:
    """Held-out scores with fixed noise (the training RNG stream is left untouched)."""
    was_training = model.training
    model.eval()
    per_image: dict[str, list[torch.Tensor]] = {}
    err, kl = [], []
    with torch.random.fork_rng():
        torch.manual_seed(1234)
        for start in range(0, len(images), chunk):
            out = model(images[start:start + chunk])
            y = labels[start:start + chunk]
            err.append(out.err)
            kl.append(out.kl)
            for source, log_masks in (("dec", out.log_masks), ("att", out.log_att_masks)):
                for name, values in segmentation_scores(y, masks_to_labels(log_masks)).items():
                    if name in SCORES:
                        per_image.setdefault(f"{name}_{source}", []).append(values)
    model.train(was_training)
    row = {name: mean_ignoring_nan(torch.cat(values))[0] for name, values in per_image.items()}
    row["eval_err"] = float(torch.cat(err).mean())
    row["eval_kl"] = float(torch.cat(kl).mean())
    return row


def build(args) -> tuple[GenesisV2, GECO | BetaELBO, torch.optim.Optimizer]:
    model = ProbeGenesisV2(img_size=args.size, num_slots=args.slots, kernel=args.kernel, pixel_std=args.pixel_std,
                      mask_loss=args.mask_loss, **ARCHS[args.arch])
    use_channels_last(model)
    if args.objective == "elbo":
        objective = BetaELBO(args.beta)
    else:
        step = args.step_size if args.step_size is not None else geco_step_size(args.size)
        objective = GECO(goal=geco_goal(args.goal_start if args.goal_start is not None else args.goal, args.size),
                         step_size=step, beta_init=args.beta_init, beta_min=args.beta_min, speedup=args.speedup)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    return model, objective, optimizer


def goal_at(args, step: int) -> float:
    """Per-pixel GECO goal at `step` (1-based): linear from --goal-start to --goal over --goal-steps."""
    if args.goal_rmse is not None:  # follows an annealed σ
        return rmse_goal(args.goal_rmse, pixel_std_at(args, step))
    if args.goal_start is None or args.goal_steps <= 0:
        return args.goal
    t = min(1.0, (step - 1) / args.goal_steps)
    return args.goal_start + t * (args.goal - args.goal_start)


def rmse_goal(rmse: float, pixel_std: float) -> float:
    """Per-pixel-and-channel err (nats) of a Gaussian with std `pixel_std` whose mean is off by `rmse`."""
    return 0.5 * math.log(2 * math.pi) + math.log(pixel_std) + rmse**2 / (2 * pixel_std**2)


def pixel_std_at(args, step: int) -> float:
    """σ at `step`: geometric from --pixel-std-start to --pixel-std over --pixel-std-steps."""
    if args.pixel_std_start is None or args.pixel_std_steps <= 0:
        return args.pixel_std
    t = min(1.0, max(0, step - 1 - args.pixel_std_delay) / args.pixel_std_steps)
    return math.exp((1 - t) * math.log(args.pixel_std_start) + t * math.log(args.pixel_std))


def lr_at(args, step: int) -> float:
    return args.lr * min(1.0, step / args.warmup) if args.warmup > 0 else args.lr


def calibrate(args) -> int:
    """Steps per second of this configuration at 1 and at 2 threads (after 3 warm-up steps)."""
    seed_everything(args.seed)
    model, objective, optimizer = build(args)
    batches = Batches(args, np.random.default_rng(args.seed))
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for _ in range(3):
            train_step(model, objective, optimizer, batches.next(), channels_last=True, grad_clip=args.grad_clip)
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(args.calibrate):
            train_step(model, objective, optimizer, batches.next(), channels_last=True, grad_clip=args.grad_clip)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        print(f"calibration {time.strftime('%Y-%m-%d %H:%M:%S')} threads {threads}: {args.calibrate} steps "
              f"{wall:.1f} s wall ({args.calibrate / wall:.3f} steps/s), {cpu:.1f} CPU-s; "
              f"load average {' '.join(f'{v:.2f}' for v in __import__('os').getloadavg())}", flush=True)
    return 0


def describe(args) -> str:
    parts = [f"{args.data}{args.size}", args.arch, f"K{args.slots}", f"b{args.batch}", f"lr{args.lr:g}"]
    if args.warmup:
        parts.append(f"warm{args.warmup}")
    if args.objective == "elbo":
        parts.append(f"elbo β{args.beta:g}")
    else:
        if args.goal_rmse is not None:
            parts.append(f"goal-rmse{args.goal_rmse:g}")
        goal = f"goal{args.goal:.4g}" if args.goal_start is None else f"goal{args.goal_start:g}→{args.goal:g}/{args.goal_steps}"
        parts += [goal, f"βmin{args.beta_min:g}"]
        if args.beta_init != 1.0:
            parts.append(f"βinit{args.beta_init:g}")
    parts.append(f"σ{args.pixel_std:g}" if args.pixel_std_start is None
                 else f"σ{args.pixel_std_start:g}→{args.pixel_std:g}/{args.pixel_std_steps}"
                 + (f"@{args.pixel_std_delay}" if args.pixel_std_delay else ""))
    if args.kernel != "gaussian":
        parts.append(args.kernel)
    if args.mask_loss:
        parts.append("maskloss")
    if args.dec_att_weight:
        parts.append(f"dec←att{args.dec_att_weight:g}" + (f"/{args.dec_att_steps}" if args.dec_att_steps else "")
                     + (f"≥{args.dec_att_floor:g}" if args.dec_att_floor else ""))
    if args.colour_hint:
        parts.append(f"hint{args.colour_hint:g}x{args.colour_scale:g}" + ("/{}-{}".format(*args.colour_hint_steps) if args.colour_hint_steps[1] else ""))
    if args.att_dec_weight:
        parts.append(f"att←dec{args.att_dec_weight:g}")
    if args.grad_clip:
        parts.append(f"clip{args.grad_clip:g}")
    if args.data == "dsprites":
        parts.append(f"{args.min_sprites}-{args.max_sprites}spr n{args.train_images}")
        if args.extent:
            parts.append(f"ext{args.extent:g}")
    return " ".join(parts)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", choices=("squares", "dsprites"), default="squares")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--train-images", type=int, default=2000, help="dsprites: fixed training set size")
    p.add_argument("--test-images", type=int, default=256)
    p.add_argument("--min-sprites", type=int, default=1)
    p.add_argument("--max-sprites", type=int, default=4)
    p.add_argument("--extent", type=float, default=None, help="dsprites: sprite size at scale 1 (library 0.3)")
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--arch", choices=tuple(ARCHS), default="published")
    p.add_argument("--slots", type=int, default=4)
    p.add_argument("--kernel", default="gaussian")
    p.add_argument("--pixel-std", type=float, default=0.7)
    p.add_argument("--pixel-std-start", type=float, default=None,
                   help="anneal σ geometrically from this value to --pixel-std over --pixel-std-steps")
    p.add_argument("--pixel-std-steps", type=int, default=0)
    p.add_argument("--pixel-std-delay", type=int, default=0, help="hold --pixel-std-start this many steps first")
    p.add_argument("--mask-loss", action="store_true")
    p.add_argument("--dec-att-weight", type=float, default=0.0,
                   help="weight (relative to err) of KL(stopgrad(attention) ‖ decoder masks), probe-only")
    p.add_argument("--dec-att-floor", type=float, default=0.0,
                   help="keep the decoder←attention weight at least this after its decay")
    p.add_argument("--dec-att-steps", type=int, default=0,
                   help="hold --dec-att-weight this many steps, then decay it linearly to 0 over as many more")
    p.add_argument("--colour-hint", type=float, default=0.0,
                   help="weight of the colour-affinity loss on the IC-SBP embeddings (not scaled by β)")
    p.add_argument("--colour-scale", type=float, default=2.0, help="colour scale s of the colour-affinity target")
    p.add_argument("--colour-hint-steps", type=int, nargs=2, default=(0, 0), metavar=("HOLD", "END"),
                   help="colour hint held to HOLD, linear to 0 at END (0 0: constant)")
    p.add_argument("--att-dec-weight", type=float, default=0.0,
                   help="weight (not scaled by β) of Eq. 7: KL(Cat(m_att) ‖ stopgrad(Cat(m_dec)))")
    p.add_argument("--objective", choices=("geco", "elbo"), default="geco")
    p.add_argument("--goal", type=float, default=0.5655, help="GECO goal per pixel and channel (nats)")
    p.add_argument("--goal-rmse", type=float, default=None,
                   help="set --goal to the per-pixel err of a one-Gaussian fit with this RMSE at --pixel-std")
    p.add_argument("--goal-start", type=float, default=None)
    p.add_argument("--goal-steps", type=int, default=0)
    p.add_argument("--beta-min", type=float, default=1e-10)
    p.add_argument("--beta-init", type=float, default=1.0)
    p.add_argument("--speedup", type=float, default=10.0)
    p.add_argument("--step-size", type=float, default=None)
    p.add_argument("--beta", type=float, default=1.0, help="elbo: fixed β")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=0)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--grad-clip", type=float, default=None)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--calibrate", type=int, default=0, help="time this many steps at 1 and 2 threads, then exit")
    p.add_argument("--json", help="write the curve here")
    p.add_argument("--samples", help="write a PNG of reconstructions and prior samples here")
    p.add_argument("--name", default="")
    p.add_argument("--summarize", nargs="+", metavar="JSON", help="print a markdown table of finished trials, then exit")
    args = p.parse_args()
    if args.summarize:
        print(summarize(args.summarize))
        return 0
    if args.goal_rmse is not None:
        args.goal = rmse_goal(args.goal_rmse, args.pixel_std)

    if args.calibrate:
        return calibrate(args)
    torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    test_images, test_labels = held_out(args)
    trivial = trivial_answer_scores(test_labels, test_images)
    model, objective, optimizer = build(args)
    batches = Batches(args, np.random.default_rng(args.seed))
    print(f"{args.name} | {describe(args)} | {count_parameters(model):,} params | seed {args.seed} | "
          f"{len(test_images)} test images", flush=True)
    print("trivial answers: " + "; ".join(
        f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in s.items()) for name, s in trivial.items()), flush=True)
    print(f"{'step':>5} {'cpu s':>6} {'err':>7} {'goal':>6} {'kl':>7} {'beta':>8} {'gnorm':>7} | "
          f"{'ARIfg dec':>9} {'att':>5} {'mSCfg dec':>9} {'att':>5} {'ARI dec':>7} | {'ev err':>7} {'ev kl':>7}",
          flush=True)
    curve, window = [], []
    train_cpu = 0.0
    # Step 0: the untrained model. Its IC-SBP masks are a spatial partition around random seeds
    # (the embedding starts as pixel coordinates), which scores above the one-slot answer.
    untrained = {"step": 0, "train_cpu_s": 0.0, **evaluate(model, test_images, test_labels)}
    print(f"untrained: ARI-FG dec {untrained['ari_fg_dec']:.3f} att {untrained['ari_fg_att']:.3f}, "
          f"mSC-FG dec {untrained['msc_fg_dec']:.3f} att {untrained['msc_fg_att']:.3f}", flush=True)
    for step in range(1, args.steps + 1):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(args, step)
        model.pixel_std = pixel_std_at(args, step)
        if args.dec_att_weight > 0:
            hold = args.dec_att_steps
            w = args.dec_att_weight * (1.0 if hold <= 0 or step <= hold else max(0.0, 2.0 - step / hold))
            w = max(w, args.dec_att_floor)
            model.dec_att_weight = w / max(objective.beta, 1e-12)
        if args.colour_hint > 0:
            model.colour_hint = decaying_weight(args.colour_hint, args.colour_hint_steps, step)
            model.colour_hint_scale = args.colour_scale
        if args.att_dec_weight > 0:
            model.att_dec_weight = args.att_dec_weight / max(objective.beta, 1e-12)
        if isinstance(objective, GECO):
            objective.goal = geco_goal(goal_at(args, step), args.size)
        images = batches.next()
        t0 = time.process_time()
        metrics = train_step(model, objective, optimizer, images, channels_last=True, grad_clip=args.grad_clip)
        window.append({name: float(value) for name, value in metrics.items()})
        train_cpu += time.process_time() - t0
        if step % args.eval_every == 0 or step == args.steps:
            t0 = time.process_time()
            row = {"step": step, "train_cpu_s": round(train_cpu, 1)}
            for key in ("err", "kl", "beta", "grad_norm", "mask_loss", "dec_att", "att_dec", "colour_hint"):
                if key in window[-1]:
                    row[key] = float(np.mean([m[key] for m in window])) if key != "beta" else window[-1][key]
            row["goal"] = objective.goal if isinstance(objective, GECO) else None
            row.update(evaluate(model, test_images, test_labels))
            row["eval_cpu_s"] = round(time.process_time() - t0, 1)
            window = []
            curve.append(row)
            print(f"{step:>5} {train_cpu:>6.0f} {row['err']:>7.0f} {row['goal'] or 0:>6.0f} {row['kl']:>7.1f} "
                  f"{row['beta']:>8.2g} {row['grad_norm']:>7.1f} | {row['ari_fg_dec']:>9.3f} {row['ari_fg_att']:>5.3f} "
                  f"{row['msc_fg_dec']:>9.3f} {row['msc_fg_att']:>5.3f} {row['ari_dec']:>7.3f} | "
                  f"{row['eval_err']:>7.0f} {row['eval_kl']:>7.1f}", flush=True)
    last = curve[-1]
    print(f"final: ARI-FG dec {last['ari_fg_dec']:.3f} att {last['ari_fg_att']:.3f}, mSC-FG dec {last['msc_fg_dec']:.3f}"
          f" (one slot: ARI-FG {trivial['one_slot']['ari_fg']:.3f}, mSC-FG {trivial['one_slot']['msc_fg']:.3f}), "
          f"KL {last['eval_kl']:.0f}, β {last['beta']:.2g}; {args.steps} steps, {train_cpu:.0f} train CPU-s "
          f"({args.steps / train_cpu:.3f} steps per CPU-s)", flush=True)
    if args.samples:
        save_samples(model, test_images[:8], args.samples)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"name": args.name, "describe": describe(args), "args": vars(args), "trivial": trivial,
                       "untrained": untrained, "curve": curve}, f, indent=1)
    return 0


def summarize(paths: list[str]) -> str:
    """Markdown rows, one per trial JSON: settings, steps, CPU-s, final and best scores, trivial answers."""
    lines = ["| trial | settings | seed | steps | train CPU-s | ARI-FG dec | ARI-FG att | mSC-FG dec | ARI dec | "
             "best ARI-FG dec (step) | eval KL | β end | one-slot ARI-FG / mSC-FG |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for path in paths:
        with open(path) as f:
            trial = json.load(f)
        last, one = trial["curve"][-1], trial["trivial"]["one_slot"]
        best = max(trial["curve"], key=lambda r: r["ari_fg_dec"])
        lines.append(
            f"| {trial['name']} | {trial['describe']} | {trial['args']['seed']} | {last['step']} | {last['train_cpu_s']:.0f} | "
            f"**{last['ari_fg_dec']:.3f}** | {last['ari_fg_att']:.3f} | {last['msc_fg_dec']:.3f} | {last['ari_dec']:.3f} | "
            f"{best['ari_fg_dec']:.3f} ({best['step']}) | {last['eval_kl']:.0f} | {last['beta']:.2g} | "
            f"{one['ari_fg']:.3f} / {one['msc_fg']:.3f} |")
    return "\n".join(lines)


@torch.no_grad()
def save_samples(model: GenesisV2, images: torch.Tensor, path: str) -> None:
    """Rows: 8 inputs, their reconstructions, the decoder segmentation, 16 prior samples (two rows),
    then for the first two inputs each slot's masked component, decoder mask and attention mask;
    4× nearest-neighbour upscaled."""
    from torchvision.utils import save_image

    model.eval()
    with torch.random.fork_rng():
        torch.manual_seed(99)
        out = model(images)
        samples = model.sample(16).images
    palette = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.3, 0.9], [0.9, 0.8, 0.1],
                            [0.8, 0.1, 0.8], [0.1, 0.8, 0.8], [1, 1, 1], [0.5, 0.5, 0.5]])
    seg = palette[masks_to_labels(out.log_masks) % len(palette)].permute(0, 3, 1, 2)
    # Slots of the first two test images: each slot's masked component, then its decoder mask
    # and attention mask (white = 1), one row per kind, padded to 8 columns.
    k = out.log_masks.shape[1]
    pad = torch.ones(8 - k, 3, *images.shape[-2:]) if k < 8 else None
    rows = []
    for i in range(2):
        masks, att = out.log_masks[i].exp(), out.log_att_masks[i].exp()
        for row in (masks * out.components[i] + (1 - masks), masks.expand(-1, 3, -1, -1), att.expand(-1, 3, -1, -1)):
            rows.append(torch.cat([row[:8], pad]) if pad is not None else row[:8])
    grid = torch.cat([images, out.recon.clamp(0, 1), seg, samples.clamp(0, 1), *rows])
    grid = torch.nn.functional.interpolate(grid, scale_factor=4, mode="nearest")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_image(grid, path, nrow=8, padding=2, pad_value=1.0)


if __name__ == "__main__":
    sys.exit(main())
