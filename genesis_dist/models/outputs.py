"""The result object every model's forward pass and sampler return."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ModelOutput:
    """What `model(x)` returns.

    Shapes: B batch, K slots, D latent size per slot.
        recon: `[B, 3, H, W]` mixture mean image in [0, 1].
        err: `[B]` negative log-likelihood, nats per image.
        kl: `[B]` KL(q || p) estimate, nats per image (auxiliary terms excluded, see `aux`).
        log_masks: `[B, K, 1, H, W]` masks that compose the reconstruction.
        components: `[B, K, 3, H, W]` per-slot RGB means.
        latents: `[B, K, D]` sampled slot latents (for GENESIS, `[z^m, z^c]`).
        log_att_masks: `[B, K, 1, H, W]` IC-SBP attention masks (GENESIS-V2 only).
        slot_mask: `[B, K]` bool, False for slots unused under the flexible stop.
        embeddings: `[B, E, H, W]` the pixel embeddings ζ the IC-SBP attention masks come
            from (GENESIS-V2 only); training aids read them (training/objective.py).
        aux: `[B]` terms of the model's own objective that GECO weighs like the KL, nats per
            image (GENESIS-V2's mask-consistency loss, Eq. 7, when `mask_loss` is set).
            Terms that are not the model's (the curriculum's training aids) are added by the
            training objective, never by the model.
    """

    recon: torch.Tensor
    err: torch.Tensor
    kl: torch.Tensor
    log_masks: torch.Tensor
    components: torch.Tensor
    latents: torch.Tensor
    log_att_masks: torch.Tensor | None = None
    slot_mask: torch.Tensor | None = None
    embeddings: torch.Tensor | None = None
    aux: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def elbo(self) -> torch.Tensor:
        """`[B]` evidence lower bound −(err + KL), nats per image."""
        return -(self.err + self.kl)

    @property
    def num_slots(self) -> torch.Tensor:
        """`[B]` number of slots used per image."""
        if self.slot_mask is None:
            return torch.full((self.recon.shape[0],), self.log_masks.shape[1], device=self.recon.device)
        return self.slot_mask.sum(dim=1)


@dataclass
class SampleOutput:
    """What `model.sample(n)` returns.

        images: `[n, 3, H, W]` in [0, 1].
        components: `[n, K, 3, H, W]`.
        log_masks: `[n, K, 1, H, W]`.
        latents: `[n, K, D]`.
    """

    images: torch.Tensor
    components: torch.Tensor
    log_masks: torch.Tensor
    latents: torch.Tensor
