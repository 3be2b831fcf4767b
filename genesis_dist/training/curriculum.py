"""Training schedules over steps (`curriculum:` in the config; off by default, when the
papers' fixed settings apply): a pixel σ annealed from a wide start to `model.pixel_std`
with GECO's goal following it, the weight of a guidance term that pulls GENESIS-V2's
decoder masks towards its IC-SBP attention masks, and the weight of a colour-affinity
term that teaches GENESIS-V2's IC-SBP embedding colour similarity. The embedded demo uses
all three (`configs/experiment/demo.yaml`; the evidence is in
`benchmarks/learning_trials.md`). `training/objective.py` adds the terms to the loss.

Every value is a pure function of the config and the step, so a resumed run continues
the schedule exactly where it stopped.
"""
from __future__ import annotations

import math
from typing import Any

from ..objectives import gaussian_nll, goal_rmse



def ramp(step: int, start: int, end: int) -> float:
    """Progress in [0, 1] of optimiser step `step` (1-based) through [start, end]:
    0 up to `start`, 1 from `end` on, linear between."""
    if end <= start:
        return 0.0 if step <= start else 1.0
    return min(1.0, max(0.0, (step - start) / (end - start)))


def pixel_std_at(cfg: Any, step: int) -> float:
    """σ_x for `step`: `curriculum.pixel_std_from` until `pixel_std_steps[0]`, geometric to
    `model.pixel_std` at `pixel_std_steps[1]`, then `model.pixel_std` (no schedule set:
    `model.pixel_std` throughout)."""
    final = float(cfg.model.pixel_std)
    start = cfg.curriculum.pixel_std_from
    if start is None:
        return final
    t = ramp(step, *cfg.curriculum.pixel_std_steps)
    return math.exp((1.0 - t) * math.log(float(start)) + t * math.log(final))


def goal_at(cfg: Any, step: int) -> float:
    """GECO goal (nats per pixel and channel) at `step`. `objective.goal` is stated at the
    starting σ; while σ anneals, the goal keeps the reconstruction RMSE it allows there."""
    goal = float(cfg.objective.goal)
    start = cfg.curriculum.pixel_std_from
    if start is None:
        return goal
    return gaussian_nll(goal_rmse(goal, float(start)), pixel_std_at(cfg, step))


def decaying_weight(weight: float, steps: Any, step: int) -> float:
    """`weight` until `steps[0]`, linearly to 0 at `steps[1]`; `steps` [0, 0]: `weight` throughout."""
    start, end = steps
    if weight == 0.0 or (start == 0 and end == 0):
        return float(weight)
    return float(weight) * (1.0 - ramp(step, start, end))


def mask_guidance_at(cfg: Any, step: int) -> float:
    """Weight of GENESIS-V2's mask-guidance term at `step` (`curriculum.mask_guidance`,
    scheduled by `mask_guidance_steps` as in `decaying_weight`)."""
    return decaying_weight(cfg.curriculum.mask_guidance, cfg.curriculum.mask_guidance_steps, step)


def colour_hint_at(cfg: Any, step: int) -> float:
    """Weight of GENESIS-V2's colour-affinity term at `step` (`curriculum.colour_hint`,
    scheduled by `colour_hint_steps` as in `decaying_weight`)."""
    return decaying_weight(cfg.curriculum.colour_hint, cfg.curriculum.colour_hint_steps, step)


def is_active(cfg: Any) -> bool:
    """Whether the config schedules anything (else the papers' fixed settings)."""
    cur = cfg.curriculum
    return cur.pixel_std_from is not None or float(cur.mask_guidance) != 0.0 or float(cur.colour_hint) != 0.0
