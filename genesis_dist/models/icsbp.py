"""Instance colouring stick-breaking process (GENESIS-V2 Sec. 3.1, Algorithm 1).

Turns per-pixel embeddings into K soft attention masks without a recurrent
network: seeds are drawn by `argmax(r ⊙ s)` over random scores r and the
remaining scope s, and each mask takes the kernel similarity to its seed's
embedding out of the scope. Everything runs in log space and in float32.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .distributions import full_precision
from .noise import uniform

KERNELS = ("gaussian", "laplacian", "epanechnikov")
# exp() of this is exactly 0 in float32/bfloat16: marks slots unused under the flexible stop.
EMPTY_LOG_MASK = -1.0e4


def initial_kernel_scale(kernel: str, num_slots: int) -> float:
    """σ at initialisation (GENESIS-V2 Appendix C): each kernel is ½ at ‖a−b‖² = 1/K."""
    if kernel == "gaussian":
        return 1.0 / (num_slots * math.log(2.0))
    if kernel == "laplacian":
        return 1.0 / (math.sqrt(num_slots) * math.log(2.0))
    if kernel == "epanechnikov":
        return 2.0 / num_slots
    raise ValueError(f"unknown IC-SBP kernel {kernel!r}; allowed: {', '.join(KERNELS)}")


def clamp_straight_through(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Clamp in the forward pass, identity gradient in the backward pass."""
    return x + (x.clamp(low, high) - x).detach()


@dataclass
class StickBreakingMasks:
    """IC-SBP result: `log_masks [B, K', 1, H, W]` and `slot_mask [B, K']` (bool).

    K' = K unless the flexible stop ended every image early; unused trailing
    slots of an image have log-mask EMPTY_LOG_MASK and slot_mask False.
    """

    log_masks: torch.Tensor
    slot_mask: torch.Tensor

    @property
    def num_slots(self) -> torch.Tensor:
        """`[B]` masks used per image."""
        return self.slot_mask.sum(dim=1)


class InstanceColouringSBP(nn.Module):
    """IC-SBP with a learnable kernel scale σ (stored as log σ).

    Kernels on squared distance d² between embeddings (GENESIS-V2 Eq. 3–5):
    Gaussian `exp(−d²/σ)`, Laplacian `exp(−d/σ)`, Epanechnikov `max(0, 1 − d²/σ)`.
    """

    def __init__(self, num_slots: int, kernel: str = "gaussian", alpha_range: tuple[float, float] = (0.01, 0.99)):
        super().__init__()
        if num_slots < 1:
            raise ValueError(f"num_slots must be ≥ 1, got {num_slots}")
        self.num_slots = num_slots
        self.kernel = kernel
        self.alpha_range = alpha_range
        self.log_sigma = nn.Parameter(torch.tensor(math.log(initial_kernel_scale(kernel, num_slots))))

    @property
    def sigma(self) -> torch.Tensor:
        return self.log_sigma.exp()

    def similarity(self, sq_dist: torch.Tensor) -> torch.Tensor:
        """Kernel value α ∈ [0, 1] for squared distances (any shape)."""
        sigma = self.sigma
        if self.kernel == "gaussian":
            return torch.exp(-sq_dist / sigma)
        if self.kernel == "laplacian":
            # The distance is floored at 1e-5 (squared 1e-10), straight through, as in the
            # authors' code: a finite gradient of the square root at the seed pixel.
            return torch.exp(-torch.sqrt(clamp_straight_through(sq_dist, 1e-10, 1e10)) / sigma)
        return torch.relu(1.0 - sq_dist / sigma)

    def forward(
        self,
        embeddings: torch.Tensor,
        num_slots: int | None = None,
        stop_pixels: float | None = None,
        generator: torch.Generator | None = None,
    ) -> StickBreakingMasks:
        """Run Algorithm 1.

        Args:
            embeddings: `[B, E, H, W]` pixel embeddings ζ.
            num_slots: K (defaults to the constructor's).
            stop_pixels: flexible stop (test time): an image stops once a new
                mask would cover fewer than this many pixels (sum of its soft
                values); its remaining scope becomes its last mask.
            generator: for the seed scores r ~ U(0, 1)^(H×W).
        Returns: StickBreakingMasks with `log_masks [B, K', 1, H, W]`.
        """
        k_max = num_slots or self.num_slots
        with torch.autocast(embeddings.device.type, enabled=False):
            emb = full_precision(embeddings).flatten(2)  # [B, E, N]
            b, _, n = emb.shape
            h, w = embeddings.shape[-2:]
            seed_scores = uniform((b, n), emb, generator)
            log_seed_scores = torch.log(seed_scores)
            log_scope = emb.new_zeros(b, n)
            active = torch.ones(b, dtype=torch.bool, device=emb.device)
            taken = torch.zeros(b, dtype=torch.long, device=emb.device)
            masks: list[torch.Tensor] = []
            low, high = self.alpha_range
            for _ in range(k_max - 1):
                seed_index = torch.argmax(log_seed_scores + log_scope, dim=1)  # [B]
                seed = emb.gather(2, seed_index.view(b, 1, 1).expand(-1, emb.shape[1], 1))  # [B, E, 1]
                sq_dist = (emb - seed).pow(2).sum(dim=1)  # [B, N]
                alpha = clamp_straight_through(self.similarity(sq_dist), low, high)
                log_mask = log_scope + torch.log(alpha)
                if stop_pixels is not None:
                    active = active & (log_mask.exp().sum(dim=1) >= stop_pixels)
                    if not bool(active.any()):
                        break
                    log_mask = torch.where(active[:, None], log_mask, torch.full_like(log_mask, EMPTY_LOG_MASK))
                    log_scope = torch.where(active[:, None], log_scope + torch.log1p(-alpha), log_scope)
                else:
                    log_scope = log_scope + torch.log1p(-alpha)
                taken = taken + active.long()
                masks.append(log_mask)
            if stop_pixels is None:
                masks.append(log_scope)
                log_masks = torch.stack(masks, dim=1)  # [B, K, N]
                used = k_max
            else:
                # The remaining scope is the last mask, placed right after each
                # image's last taken mask.
                masks.append(torch.full_like(log_scope, EMPTY_LOG_MASK))
                log_masks = torch.stack(masks, dim=1)  # [B, K', N]
                log_masks = log_masks.scatter(1, taken.view(b, 1, 1).expand(-1, 1, n), log_scope.unsqueeze(1))
                used = int(taken.max().item()) + 1
                log_masks = log_masks[:, :used]
            slot_mask = torch.arange(used, device=emb.device)[None, :] <= taken[:, None]
        return StickBreakingMasks(log_masks.view(b, used, 1, h, w), slot_mask)
