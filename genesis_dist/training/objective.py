"""What a training step minimises, composed from the config outside the model (as
torchtitan keeps the loss outside the model): the model's own objective — GECO, the
β-ELBO or Slot Attention's MSE over its `err` and `kl` (plus GENESIS-V2's Eq. 7 term,
which GECO weighs like the KL) — and the curriculum's training aids, each a term
computed from what the model returns and scheduled by the step
(`training/curriculum.py`):

- pixel σ anneal: `err` is the mixture NLL of the model's masks and components at the
  scheduled σ instead of the model's own `model.pixel_std`, and GECO's goal keeps the
  reconstruction RMSE it allowed at the starting σ;
- mask guidance (GENESIS-V2): `w · Σ_pixels KL(stopgrad(attention masks) ‖ decoder masks)`;
- colour hint (GENESIS-V2): `w · colour_affinity_loss` on the IC-SBP embeddings.

The aids are added to the loss unweighted by β and exist in training only; the model's
forward takes no curriculum input, so a compiled model (`optim.compile`) never recompiles
for a schedule. None of them is in the papers.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F

from ..models.distributions import full_precision
from ..models.genesis_v2 import masks_kl
from ..models.mixture import mixture_nll
from ..models.outputs import ModelOutput
from ..objectives import GECO, MSE, BetaELBO, geco_goal, geco_step_size
from . import curriculum

BaseObjective = GECO | BetaELBO | MSE


def base_objective(cfg: Any, img_size: int) -> BaseObjective:
    """GECO, β-ELBO or (Slot Attention's) MSE from an ObjectiveConfig; GECO's goal and
    λ follow the image size."""
    if cfg.name == "elbo":
        return BetaELBO(cfg.beta)
    if cfg.name == "mse":
        return MSE()
    step = cfg.step_size if cfg.step_size is not None else geco_step_size(img_size)
    return GECO(goal=geco_goal(cfg.goal, img_size), step_size=step, alpha=cfg.alpha, speedup=cfg.speedup,
                beta_init=cfg.beta_init, beta_min=cfg.beta_min, beta_max=cfg.beta_max)


def at_least_float32(t: torch.Tensor) -> torch.Tensor:
    """Half / bfloat16 (autocast) losses in float32; float32 and float64 as they are (a
    float64 model keeps its precision through GECO's update)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def mask_guidance_kl(log_att_masks: torch.Tensor, log_dec_masks: torch.Tensor) -> torch.Tensor:
    """GENESIS-V2's Eq. 7 reversed, a training aid (not in the paper): `Σ_pixels
    KL(stopgrad(Cat(m_att)) ‖ Cat(m_dec))` pulls the decoder masks towards the IC-SBP
    attention masks, which start as K distinct regions, so that the slots stop decoding
    identical components (uniform decoder masks are a saddle the mixture likelihood does
    not leave; benchmarks/learning_trials.md).

    Args: log masks `[B, K, 1, H, W]` each, clamped to ≥ 1e-5 before the KL.
    Returns: `[B]` nats per image.
    """
    return masks_kl(log_att_masks.detach(), log_dec_masks)


def colour_affinity_loss(embeddings: torch.Tensor, images: torch.Tensor, similarity: Callable[[torch.Tensor], torch.Tensor],
                         colour_scale: float, pixels: int = 128) -> torch.Tensor:
    """A training aid (not in the paper): teaches the IC-SBP embedding colour similarity,
    a bottom-up cue that separates objects in images of uniformly coloured shapes. For
    `pixels` random pixels per image, the kernel similarity of every pair under the
    embeddings, `similarity(‖ζ_i − ζ_j‖²)`, is pulled (binary cross-entropy) towards the
    similarity of their colours, `similarity(s²‖x_i − x_j‖²)` (no gradient; s =
    `colour_scale`, x the input in [0, 1]). Same-coloured pixels are pulled together against
    the coordinate part of ζ, differently coloured ones pushed apart. Uses the global torch RNG.

    Args: embeddings `[B, E, H, W]`, images `[B, 3, H, W]`, `similarity` maps squared distances
    to kernel values in (0, 1] (the IC-SBP kernel, whose σ learns from this loss too).
    Returns `[B]`: mean cross-entropy over pairs (nats) × H·W, the scale of a per-pixel sum.
    """
    b, e, h, w = embeddings.shape
    index = torch.randint(0, h * w, (b, 1, pixels), device=embeddings.device)
    emb = full_precision(embeddings).flatten(2).gather(2, index.expand(-1, e, -1)).transpose(1, 2)
    col = full_precision(images).flatten(2).gather(2, index.expand(-1, 3, -1)).transpose(1, 2)
    sq_emb = torch.cdist(emb, emb).pow(2)
    predicted = similarity(sq_emb).clamp(1e-4, 1 - 1e-4)
    with torch.no_grad():
        target = similarity(colour_scale**2 * torch.cdist(col, col).pow(2)).clamp(1e-4, 1 - 1e-4)
    bce = F.binary_cross_entropy(predicted, target, reduction="none")
    return bce.flatten(1).mean(dim=1) * (h * w)


class TrainingObjective:
    """The loss of a training step: `base` over the model's err and KL, plus the scheduled
    training aids of `cfg.curriculum` (a TrainConfig; None: the papers' objective alone).

    `similarity` is the IC-SBP kernel of the model being trained (`model.icsbp.similarity`),
    which the colour hint needs; the kernel's σ is a parameter of the model and learns from
    that term too. β, GECO's EMA and the state dict are the base objective's.
    """

    def __init__(self, base: BaseObjective, cfg: Any | None = None,
                 similarity: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.base, self.cfg, self.similarity = base, cfg, similarity
        cur = cfg.curriculum if cfg is not None else None
        self.anneals_sigma = cur is not None and cur.pixel_std_from is not None
        self.guides_masks = cur is not None and float(cur.mask_guidance) > 0
        self.hints_colour = cur is not None and float(cur.colour_hint) > 0
        if self.hints_colour and similarity is None:
            raise ValueError("curriculum.colour_hint needs the model's IC-SBP kernel (GENESIS-V2)")

    # The base objective's state: what checkpoints keep and every rank shares.
    @property
    def beta(self) -> float:
        return self.base.beta

    @property
    def beta_tensor(self) -> torch.Tensor:
        return self.base.beta_tensor

    def to(self, device: torch.device | str) -> "TrainingObjective":
        self.base.to(device)
        return self

    def update(self, err: torch.Tensor | float) -> torch.Tensor:
        """The base objective's update after the optimiser step (GECO's β); returns β."""
        return self.base.update(err)

    def state_dict(self) -> dict[str, Any]:
        return self.base.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base.load_state_dict(state)

    def loss(self, images: torch.Tensor, out: ModelOutput, step: int | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """The scalar loss of `out = model(images)` at optimiser step `step` (1-based; needed
        when the config schedules anything).

        Returns (loss, err `[B]`, kl `[B]`, extra `[B]` terms by name: the model's `aux` and the
        weighted aids that are on at this step), err and kl in nats per image. Sets GECO's goal
        for this step (its `update` follows the optimiser step)."""
        if step is None and (self.anneals_sigma or self.guides_masks or self.hints_colour):
            raise ValueError("this objective follows a curriculum schedule: pass the optimiser step")
        err = at_least_float32(out.err)
        if self.anneals_sigma:
            err = at_least_float32(mixture_nll(full_precision(images), out.log_masks, out.components,
                                               curriculum.pixel_std_at(self.cfg, step)))
            if isinstance(self.base, GECO):
                self.base.goal = geco_goal(curriculum.goal_at(self.cfg, step), self.cfg.model.img_size)
        kl = at_least_float32(out.kl)
        kl_term = kl + sum((at_least_float32(v) for v in out.aux.values()), torch.zeros_like(kl))
        loss = self.base.loss(err, kl_term)
        aids = {}
        if self.guides_masks:
            weight = curriculum.mask_guidance_at(self.cfg, step)
            if weight > 0:
                aids["mask_guidance"] = weight * mask_guidance_kl(out.log_att_masks, out.log_masks)
        if self.hints_colour:
            weight = curriculum.colour_hint_at(self.cfg, step)
            if weight > 0:
                aids["colour_hint"] = weight * colour_affinity_loss(
                    out.embeddings, images, self.similarity, float(self.cfg.curriculum.colour_hint_scale))
        for term in aids.values():
            loss = loss + at_least_float32(term).mean()
        return loss, err, kl, {**out.aux, **aids}


def make_objective(cfg: Any, model: torch.nn.Module | None = None) -> TrainingObjective:
    """The training objective a TrainConfig describes for `model` (the bare module: its
    IC-SBP kernel feeds the colour hint)."""
    icsbp = getattr(model, "icsbp", None)
    return TrainingObjective(base_objective(cfg.objective, cfg.model.img_size), cfg,
                             icsbp.similarity if icsbp is not None else None)
