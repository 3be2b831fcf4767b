"""The spatial Gaussian mixture image likelihood (GENESIS Eq. 3 / GENESIS-V2 Eq. 1)."""
from __future__ import annotations

import math

import torch

from .distributions import LOG_2PI


def mixture_nll(
    x: torch.Tensor, log_masks: torch.Tensor, means: torch.Tensor, pixel_std: float = 0.7
) -> torch.Tensor:
    """Negative log-likelihood of the image under the spatial Gaussian mixture.

    `-log p(x|z) = -Σ_{c,h,w} log Σ_k m_k · N(x_c | μ_kc, σ_x²)` (GENESIS Eq. 3,
    GENESIS-V2 Eq. 1), computed with `logsumexp` over k on log-masks.

    Args:
        x: `[B, C, H, W]` image in [0, 1].
        log_masks: `[B, K, 1, H, W]` log mixing weights (logsumexp over K = 0).
        means: `[B, K, C, H, W]` component means.
        pixel_std: σ_x, the fixed standard deviation of every component.
    Returns: `[B]` reconstruction error `err` in nats per image.
    """
    log_normal = (
        -0.5 * ((x.unsqueeze(1) - means) / pixel_std) ** 2
        - math.log(pixel_std)
        - 0.5 * LOG_2PI
    )
    log_px = torch.logsumexp(log_masks + log_normal, dim=1)  # [B, C, H, W]
    return -log_px.flatten(1).sum(dim=1)


def compose(log_masks: torch.Tensor, components: torch.Tensor) -> torch.Tensor:
    """Mixture mean image `Σ_k m_k · c_k`: `[B,K,1,H,W]`, `[B,K,C,H,W]` → `[B,C,H,W]`."""
    return (log_masks.exp() * components).sum(dim=1)
