"""The one training loop, with no Ray: `fit` runs steps and calls hooks.

The Ray worker (`training/worker.py`), the tests and `benchmarks/learning_check.py`
call `fit` (the throughput benchmarks time its `train_step`); what differs between them
(checkpoints, logging, figures, reporting to Ray, time budgets) is a `Hook` (see
`training/hooks.py`), as torchtitan composes its trainer from components. The loss is
the training objective's (`training/objective.py`), outside the model.

A step never waits for the host: its scalars stay on the device, summed in a
`MetricWindow`, and are read (one synchronisation) only on steps where a hook
asks for metrics (`log_every`, checkpoints).
"""
from __future__ import annotations

import contextlib
import ctypes
import math
import random
import time
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from .objective import TrainingObjective

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
LAST_VALUE_METRICS = ("beta", "lr")  # reported as they are now, not averaged over the window


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch; optionally ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def lr_factor(step: int, warmup_steps: int = 0, decay_every: int | None = None, decay_rate: float = 0.5) -> float:
    """Learning-rate multiplier for optimiser step `step` (0-based): a linear warm-up
    over `warmup_steps` times a continuous decay by `decay_rate` per `decay_every` steps,
    `min(1, (step+1)/warmup) · decay_rate^(step/decay_every)` — Slot Attention's schedule
    with warm-up 10k and ×0.5 per 100k (Locatello et al. 2020)."""
    factor = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    if decay_every:
        factor *= decay_rate ** (step / decay_every)
    return factor


def make_optimizer(params, cfg: Any, lr: float | None = None) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """Adam at `lr` (default `optim.lr`) and its per-step schedule (`lr_factor`) from an
    OptimConfig."""
    optimizer = torch.optim.Adam(params, lr=cfg.lr if lr is None else lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, cfg.warmup_steps, cfg.decay_every, cfg.decay_rate)
    )
    return optimizer, schedule


def set_base_lr(optimizer: torch.optim.Optimizer, schedule: torch.optim.lr_scheduler.LambdaLR, lr: float) -> None:
    """Make `lr` the schedule's base learning rate, keeping its position (after resuming
    with another number of workers, the scaled learning rate follows the new global batch)."""
    schedule.base_lrs = [lr] * len(optimizer.param_groups)
    factor = schedule.lr_lambdas[0](schedule.last_epoch)
    for group in optimizer.param_groups:
        group["initial_lr"] = lr
        group["lr"] = lr * factor


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast context for `precision` (fp32: none)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def make_grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler | None:
    """A gradient scaler for fp16 (bf16 and fp32 need none)."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


def use_channels_last(model: nn.Module) -> nn.Module:
    """Store 4-D weights channels-last (NHWC): faster convolutions on CPU (oneDNN) and GPU.
    Pass `channels_last=True` to `train_step` so the inputs match."""
    return model.to(memory_format=torch.channels_last)


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory in the process instead of returning it to the OS,
    for the rest of the process. A step allocates and frees gigabytes of activations (GENESIS-V2
    at batch 32, 64 px, K = 7: about 2.5 GB of fresh pages per forward+backward); glibc serves
    each block over 32 MiB with its own mmap, so every step page-faults all of them in again
    (1.4–2.4 s of kernel time per 6–7 s step on one core). With mmap off and no trimming, freed
    blocks are reused: the process's resident memory stays at its peak. Returns whether the
    setting took (False off glibc, e.g. macOS, where nothing changes)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
    except (OSError, AttributeError):
        return False


def train_step(
    model: nn.Module,
    objective: TrainingObjective,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    *,
    step: int | None = None,
    precision: str = "fp32",
    scaler: torch.amp.GradScaler | None = None,
    grad_clip: float | None = None,
    channels_last: bool = False,
) -> dict[str, torch.Tensor]:
    """One optimisation step on `images` `[B, 3, H, W]` in [0, 1]; `step` (1-based) is the
    optimiser step the objective's schedules are evaluated at.

    `channels_last`: feed NHWC images (pair with `use_channels_last(model)`).

    Returns detached 0-dim tensors on the model's device, not yet read by the host
    (nats per image): loss, err, kl, elbo, beta (after this step's GECO update),
    grad_norm (before clipping), and the objective's extra terms (the model's auxiliary
    losses, the training aids). Nothing here synchronises with the host except the fp16
    scaler's overflow check.
    """
    model.train()
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with autocast(images.device, precision):
        out = model(images)
        loss, err, kl, extra = objective.loss(images, out, step)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    max_norm = grad_clip if grad_clip is not None else math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    err_mean = err.detach().mean()
    beta = objective.update(err_mean)
    metrics = {
        "loss": loss.detach(),
        "err": err_mean,
        "kl": kl.detach().mean(),
        "elbo": -(err + kl).detach().mean(),
        "beta": beta,
        "grad_norm": grad_norm.detach(),
    }
    metrics.update({name: v.detach().float().mean() for name, v in extra.items()})
    return metrics


class MetricWindow:
    """Sums step metrics on the device; `read` returns their means since the last read
    (`beta`, `lr`: the latest value) as Python floats — the one host sync."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.latest: dict[str, torch.Tensor] = {}
        self.steps = 0

    def add(self, metrics: dict[str, torch.Tensor]) -> None:
        for name, value in metrics.items():
            if name in LAST_VALUE_METRICS:
                self.latest[name] = value
            else:
                self.sums[name] = self.sums[name] + value.double() if name in self.sums else value.double()
        self.steps += 1

    def read(self) -> dict[str, float]:
        if not self.steps:
            return {}
        names = list(self.sums) + list(self.latest)
        values = torch.stack([(self.sums[n] / self.steps) for n in self.sums]
                             + [self.latest[n].double() for n in self.latest]).tolist()
        self.sums, self.latest, self.steps = {}, {}, 0
        return dict(zip(names, values))


@dataclass
class TrainState:
    """Everything a step changes. `model` is what is trained (DDP-wrapped in a
    distributed run); `module` is the bare model (for saving and evaluation)."""

    model: nn.Module
    objective: TrainingObjective
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler | None = None
    scaler: torch.amp.GradScaler | None = None
    step: int = 0

    @property
    def module(self) -> nn.Module:
        """The bare model under DDP (`.module`) and torch.compile (`._orig_mod`)."""
        model = getattr(self.model, "module", self.model)
        return getattr(model, "_orig_mod", model)

    def state_dict(self) -> dict[str, Any]:
        """Model, optimiser, schedule, objective and scaler state (weights_only-safe)."""
        return {
            "model": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict() if self.schedule is not None else {},
            "objective": self.objective.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
        }

    def load_state_dict(self, state: dict[str, Any], step: int) -> None:
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.schedule is not None and state.get("schedule"):
            self.schedule.load_state_dict(state["schedule"])
        self.objective.load_state_dict(state["objective"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step = step


class Hook:
    """A component of the loop; every method is optional.

    `fit` calls, per step: `before_step(state, step)`, the step, then
    `after_step(state, metrics)` with `metrics` the window's floats on steps where
    any hook's `wants_metrics(step)` is true (else None); then stops early if any
    `should_stop(state)`. `on_end(state)` runs once when the loop ends (at `steps` or stopped).
    """

    def before_step(self, state: TrainState, step: int) -> None: ...

    def wants_metrics(self, step: int) -> bool:
        return False

    def after_step(self, state: TrainState, metrics: dict[str, float] | None) -> None: ...

    def should_stop(self, state: TrainState) -> bool:
        return False

    def on_end(self, state: TrainState) -> None: ...


def fit(
    state: TrainState,
    batches: Iterator[torch.Tensor],
    steps: int,
    hooks: Sequence[Hook] = (),
    *,
    precision: str = "fp32",
    grad_clip: float | None = None,
    channels_last: bool = False,
    world_size: int = 1,
) -> TrainState:
    """Train from `state.step + 1` to `steps`, feeding `[B, 3, H, W]` image batches.

    Metrics read on a hook's request are window means plus `img_per_s` (all
    `world_size` workers together), `lr` and `step`. Returns `state`.
    """
    device = next(state.module.parameters()).device
    state.objective.to(device)
    window = MetricWindow()
    window_start, window_images = time.perf_counter(), 0
    for step in range(state.step + 1, steps + 1):
        for hook in hooks:
            hook.before_step(state, step)
        images = next(batches).to(device, non_blocking=True)
        window.add(train_step(
            state.model, state.objective, state.optimizer, images, step=step, precision=precision,
            scaler=state.scaler, grad_clip=grad_clip, channels_last=channels_last,
        ))
        if state.schedule is not None:
            state.schedule.step()
        state.step = step
        window_images += images.shape[0]
        metrics = None
        if step == steps or any(hook.wants_metrics(step) for hook in hooks):
            metrics = window.read()
            elapsed = time.perf_counter() - window_start
            metrics.update(img_per_s=window_images * world_size / max(elapsed, 1e-9),
                           lr=state.optimizer.param_groups[0]["lr"], step=step)
            window_start, window_images = time.perf_counter(), 0
        for hook in hooks:
            hook.after_step(state, metrics)
        if any(hook.should_stop(state) for hook in hooks):
            break
    for hook in hooks:
        hook.on_end(state)
    return state


# What a step reports (besides a model's auxiliary losses) and what `fit` adds on reading.
STEP_METRICS = ("loss", "err", "kl", "elbo", "beta", "grad_norm")
WINDOW_METRICS = ("img_per_s", "lr", "step")


def heldout_metric_names(has_masks: bool, has_attention: bool) -> tuple[str, ...]:
    """The keys `evaluate_batch` returns for data with (or without) label maps and a
    model with (or without) attention masks."""
    names = ("images", "err", "kl", "elbo")
    if has_masks:
        names += ("ari_fg", "msc_fg", "ari", "one_slot_ari_fg", "one_slot_msc_fg", "fg_bg_ari",
                  "colour_ari_fg", "colour_msc_fg")
        if has_attention:
            names += ("ari_fg_att", "msc_fg_att")
    return names


@torch.no_grad()
def evaluate_batch(model: nn.Module, images: torch.Tensor, masks: torch.Tensor | None = None) -> dict[str, float]:
    """Held-out scores of one batch `[N, 3, H, W]` (eval mode): N (`images`), err, kl, elbo in nats per
    image and, when ground-truth label maps `masks [N, H, W]` are given, the decoder masks'
    foreground ARI and mSC and all-pixel ARI (and the attention masks' ARI-FG and mSC-FG
    where the model has them) beside the trivial answers' scores on the same images: every
    pixel in one slot (`one_slot_*`), the true foreground/background split (`fg_bg_ari`) and
    one segment per distinct colour (`colour_*`, metrics/trivial.py)."""
    from ..metrics import masks_to_labels, mean_ignoring_nan, segmentation_scores
    from ..metrics.trivial import trivial_answer_scores

    was_training = model.training
    model.eval()
    out = model(images)
    model.train(was_training)
    scores = {
        "images": images.shape[0],
        "err": float(out.err.mean()),
        "kl": float(out.kl.mean()),
        "elbo": float(out.elbo.mean()),
    }
    if masks is None:
        return scores
    masks = masks.to(images.device).long()
    decoder = segmentation_scores(masks, masks_to_labels(out.log_masks))
    for name in ("ari_fg", "msc_fg", "ari"):
        scores[name] = mean_ignoring_nan(decoder[name])[0]
    if out.log_att_masks is not None:
        attention = segmentation_scores(masks, masks_to_labels(out.log_att_masks))
        scores["ari_fg_att"] = mean_ignoring_nan(attention["ari_fg"])[0]
        scores["msc_fg_att"] = mean_ignoring_nan(attention["msc_fg"])[0]
    trivial = trivial_answer_scores(masks, images)
    scores.update(one_slot_ari_fg=trivial["one_slot"]["ari_fg"], one_slot_msc_fg=trivial["one_slot"]["msc_fg"],
                  fg_bg_ari=trivial["fg_bg"]["ari"], colour_ari_fg=trivial["colour"]["ari_fg"],
                  colour_msc_fg=trivial["colour"]["msc_fg"])
    return scores
