"""Gaussian helpers shared by every model: parameterisations, log-densities, KL.

All functions follow the device and dtype of their inputs.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .noise import standard_normal_like

LOG_2PI = math.log(2.0 * math.pi)


def posterior_sigma(raw: torch.Tensor) -> torch.Tensor:
    """Posterior standard deviation `softplus(raw + 0.5) + 1e-8` (any shape)."""
    return F.softplus(raw + 0.5) + 1e-8


def prior_sigma(raw: torch.Tensor) -> torch.Tensor:
    """Learned prior standard deviation `sigmoid(raw + 4) + 1e-4` (any shape)."""
    return torch.sigmoid(raw + 4.0) + 1e-4


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Element-wise log N(x | mean, std²) in nats; broadcasting shapes."""
    return -0.5 * ((x - mean) / std) ** 2 - torch.log(std) - 0.5 * LOG_2PI


def reparameterise(mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """One sample `mean + std * eps`, eps ~ N(0, I), same shape as `mean`."""
    return mean + std * standard_normal_like(mean)


def monte_carlo_kl(
    z: torch.Tensor,
    q_mean: torch.Tensor,
    q_std: torch.Tensor,
    p_mean: torch.Tensor,
    p_std: torch.Tensor,
    slot_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """One-sample KL estimate `log q(z|x) - log p(z)`, summed over slots and dims.

    Args: z, q_*, p_* `[B, K, D]`; slot_mask optional bool `[B, K]` (False slots
    are excluded, e.g. unused slots under the flexible stop).
    Returns: `[B]`, nats per image.
    """
    per_dim = gaussian_log_prob(z, q_mean, q_std) - gaussian_log_prob(z, p_mean, p_std)
    per_slot = per_dim.sum(dim=-1)
    if slot_mask is not None:
        per_slot = per_slot * slot_mask.to(per_slot.dtype)
    return per_slot.sum(dim=-1)


def full_precision(t: torch.Tensor) -> torch.Tensor:
    """Upcast half / bfloat16 tensors (from autocast) to float32; others unchanged."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t
