"""One training step and a plain loop, with no Ray: testable alone, wrapped by
`genesis_dist.train` for distributed runs."""
from __future__ import annotations

import contextlib
import random
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
from torch import nn

from ..objectives import GECO, BetaELBO, geco_goal, geco_step_size

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch; optionally ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def make_objective(cfg: Any, img_size: int) -> GECO | BetaELBO:
    """GECO or β-ELBO from an ObjectiveConfig; GECO's goal and λ follow the image size."""
    if cfg.name == "elbo":
        return BetaELBO(cfg.beta)
    step = cfg.step_size if cfg.step_size is not None else geco_step_size(img_size)
    return GECO(
        goal=geco_goal(cfg.goal, img_size),
        step_size=step,
        alpha=cfg.alpha,
        speedup=cfg.speedup,
        beta_init=cfg.beta_init,
        beta_min=cfg.beta_min,
        beta_max=cfg.beta_max,
    )


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


def train_step(
    model: nn.Module,
    objective: GECO | BetaELBO,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    *,
    precision: str = "fp32",
    scaler: torch.amp.GradScaler | None = None,
    grad_clip: float | None = None,
    channels_last: bool = False,
) -> dict[str, float]:
    """One optimisation step on `images` `[B, 3, H, W]` in [0, 1].

    `channels_last`: feed NHWC images (pair with `use_channels_last(model)`).

    Returns scalars (nats per image): loss, err, kl, elbo, beta (after this
    step's GECO update), grad_norm, and any auxiliary losses.
    """
    model.train()
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with autocast(images.device, precision):
        out = model(images)
    err = out.err.float()
    kl = out.kl.float()
    kl_term = kl + sum((v.float() for v in out.aux.values()), torch.zeros_like(kl))
    loss = objective.loss(err, kl_term)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    max_norm = grad_clip if grad_clip is not None else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    err_mean = err.detach().mean()
    beta = objective.update(err_mean)
    metrics = {
        "loss": float(loss.detach()),
        "err": float(err_mean),
        "kl": float(kl.detach().mean()),
        "elbo": float(-(err + kl).detach().mean()),
        "beta": float(beta),
        "grad_norm": float(grad_norm),
    }
    metrics.update({name: float(v.detach().float().mean()) for name, v in out.aux.items()})
    return metrics


def forever(batches: Callable[[], Iterable[Any]]) -> Iterator[Any]:
    """Cycle through a re-iterable source of batches endlessly."""
    while True:
        yield from batches()


def train(
    model: nn.Module,
    objective: GECO | BetaELBO,
    optimizer: torch.optim.Optimizer,
    batches: Iterator[torch.Tensor],
    steps: int,
    *,
    precision: str = "fp32",
    grad_clip: float | None = None,
    channels_last: bool = False,
    start_step: int = 0,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> list[dict[str, float]]:
    """Run steps `start_step+1 .. steps`, feeding `[B,3,H,W]` image batches.

    `on_step(step, metrics)` is called after each step (logging, checkpoints,
    evaluation). Returns the per-step metrics.
    """
    device = next(model.parameters()).device
    scaler = make_grad_scaler(device, precision)
    history = []
    for step in range(start_step + 1, steps + 1):
        images = next(batches).to(device, non_blocking=True)
        metrics = train_step(
            model, objective, optimizer, images, precision=precision, scaler=scaler, grad_clip=grad_clip,
            channels_last=channels_last,
        )
        metrics["step"] = step
        history.append(metrics)
        if on_step is not None:
            on_step(step, metrics)
    return history


@torch.no_grad()
def evaluate_batch(model: nn.Module, images: torch.Tensor, masks: torch.Tensor | None = None) -> dict[str, float]:
    """Held-out scores of one batch (eval mode): err, kl, elbo in nats per image and,
    when ground-truth label maps `masks [B, H, W]` are given, foreground ARI of the
    decoder masks (and of the IC-SBP attention masks, for GENESIS-V2)."""
    from ..metrics import ari, masks_to_labels

    was_training = model.training
    model.eval()
    out = model(images)
    model.train(was_training)
    scores = {
        "err": float(out.err.mean()),
        "kl": float(out.kl.mean()),
        "elbo": float(out.elbo.mean()),
    }
    if masks is not None:
        masks = masks.to(images.device)
        scores["ari_fg"] = float(ari(masks, masks_to_labels(out.log_masks)).nanmean())
        if out.log_att_masks is not None:
            scores["ari_fg_att"] = float(ari(masks, masks_to_labels(out.log_att_masks)).nanmean())
    return scores
