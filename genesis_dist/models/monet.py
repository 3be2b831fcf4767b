"""MONet-G: MONet (Burgess et al. 2019) as the GENESIS papers train it, a baseline.

A recurrent attention network (a UNet with instance norm, filters [32, 32, 64,
64, 64] at 64 px) reads `[x, log s_{k-1}]` and splits the scope by stick breaking
for K−1 steps; the last mask is the remaining scope. A component VAE (MONet's,
with ReLU) encodes `[log m_k, x]` to a 16-d z_k and decodes RGB plus a mask logit.
The image likelihood is the spatial Gaussian mixture over the *attention* masks
(GENESIS Eq. 3); the KL has two parts, summed and weighed together by GECO:
`KL(q(z_k|x) ‖ N(0, I))` per slot and, per pixel, `KL(Cat(m_att) ‖ Cat(m_dec))`
where the decoder masks are a softmax over slots of the decoded mask logits.
Sampling draws z_k ~ N(0, I) and composes with the decoder masks.

Defaults reproduce the authors' released MONet-G: 974,085 parameters at 64 px (any K).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import UNet
from .component_vae import ComponentDecoder, ComponentEncoder
from .distributions import full_precision, monte_carlo_kl, reparameterise
from .genesis import check_images
from .mixture import compose, mixture_nll
from .outputs import ModelOutput, SampleOutput

MASK_FLOOR = 1e-5  # masks are clamped to at least this before the categorical KL


def categorical_mask_kl(log_q: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
    """`Σ_pixels KL(Cat(q) ‖ Cat(p))` over slots, both clamped to ≥ 1e-5 and renormalised.

    Gradients reach both arguments (MONet trains the attention masks towards the
    decoder masks and the decoder masks towards the attention masks).
    Args: log masks `[B, K, 1, H, W]` each (logsumexp over K = 0).
    Returns: `[B]` nats per image.
    """
    floor = math.log(MASK_FLOOR)
    log_q = full_precision(log_q).clamp_min(floor)
    log_p = full_precision(log_p).clamp_min(floor)
    log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True)
    log_p = log_p - torch.logsumexp(log_p, dim=1, keepdim=True)
    return (log_q.exp() * (log_q - log_p)).sum(dim=1).flatten(1).sum(dim=1)


class MONetG(nn.Module):
    """MONet-G with K slots at `img_size`² pixels (K ≥ 2)."""

    def __init__(
        self,
        *,
        img_size: int,
        num_slots: int,
        latent_dim: int,
        attention_filters: int = 32,
        pixel_std: float,
    ):
        super().__init__()
        if num_slots < 2:
            raise ValueError(f"MONet-G needs at least 2 slots, got {num_slots}")
        self.img_size = img_size
        self.num_slots = num_slots
        self.latent_dim = latent_dim
        self.pixel_std = pixel_std
        self.attention = UNet(img_size, in_ch=4, base=attention_filters, norm="instance")
        self.attention_logit = nn.Conv2d(attention_filters, 1, 1)
        self.component_encoder = ComponentEncoder(img_size, latent_dim, activation=nn.ReLU)
        self.component_decoder = ComponentDecoder(img_size, latent_dim, out_ch=4, activation=nn.ReLU)

    def attention_masks(self, x: torch.Tensor) -> torch.Tensor:
        """Recurrent attention: for k = 1..K−1, `α_k = sigmoid(UNet([x, log s_{k−1}]))`,
        `m_k = s_{k−1} α_k`, `s_k = s_{k−1} (1 − α_k)`; `m_K = s_{K−1}` (log space).

        Args: x `[B, 3, H, W]`. Returns: log masks `[B, K, 1, H, W]` (float32 or wider).
        """
        b, _, h, w = x.shape
        log_scope = full_precision(x.new_zeros(b, 1, h, w))
        log_masks = []
        for _ in range(self.num_slots - 1):
            step_in = torch.cat([x, log_scope.to(x.dtype)], dim=1)
            logits = full_precision(self.attention_logit(self.attention(step_in)))
            log_masks.append(log_scope + F.logsigmoid(logits))
            log_scope = log_scope + F.logsigmoid(-logits)
        log_masks.append(log_scope)
        return torch.stack(log_masks, dim=1)

    def _posterior(self, x: torch.Tensor, log_masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z_k | x, m_k) for all slots in one batch → (mean, std), each `[B, K, D]`."""
        b, k = log_masks.shape[:2]
        x_rep = x.unsqueeze(1).expand(b, k, *x.shape[1:]).flatten(0, 1)
        mean, std = self.component_encoder(x_rep, log_masks.flatten(0, 1).to(x.dtype))
        return full_precision(mean).unflatten(0, (b, k)), full_precision(std).unflatten(0, (b, k))

    def _decode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`[B, K, D]` → (RGB components `[B, K, 3, H, W]` in [0, 1], decoder log masks
        `[B, K, 1, H, W]`: a softmax over slots of the mask logits)."""
        out = full_precision(self.component_decoder(z.flatten(0, 1))).unflatten(0, z.shape[:2])
        return torch.sigmoid(out[:, :, :3]), F.log_softmax(out[:, :, 3:], dim=1)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        """Encode, decode and score `x` `[B, 3, H, W]` in [0, 1]."""
        check_images(x, self.img_size, "MONetG")
        log_masks = self.attention_masks(x)
        q_mean, q_std = self._posterior(x, log_masks)
        z = reparameterise(q_mean, q_std)
        components, log_dec_masks = self._decode(z)
        err = mixture_nll(full_precision(x), log_masks, components, self.pixel_std)
        kl = monte_carlo_kl(z, q_mean, q_std, torch.zeros_like(z), torch.ones_like(z))
        kl = kl + categorical_mask_kl(log_masks, log_dec_masks)
        return ModelOutput(
            recon=compose(log_masks, components),
            err=err,
            kl=kl,
            log_masks=log_masks,
            components=components,
            latents=z,
        )

    @torch.no_grad()
    def sample(self, n: int, num_slots: int | None = None) -> SampleOutput:
        """z_k ~ N(0, I) for every slot, decoded in parallel and composed with the
        decoder masks; images `[n, 3, H, W]` in [0, 1]."""
        like = next(self.parameters())
        z = torch.randn(n, num_slots or self.num_slots, self.latent_dim, device=like.device, dtype=like.dtype)
        components, log_masks = self._decode(z)
        return SampleOutput(compose(log_masks, components), components, log_masks, z)

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Per-image probe features: posterior means concatenated over slots, `[B, K·D]`."""
        check_images(x, self.img_size, "MONetG")
        q_mean, _ = self._posterior(x, self.attention_masks(x))
        return q_mean.flatten(1)
