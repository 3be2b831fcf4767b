"""BD-VAE and DC-VAE: single-latent VAE baselines of the GENESIS papers.

One 64-d latent per image, inferred by the gated convolutional encoder of Berg et
al. 2018 (as GENESIS's mask encoder, here without BatchNorm) and a linear head,
with a standard normal prior. DC-VAE decodes with the mirrored gated-deconv
decoder; BD-VAE with a spatial broadcast decoder of double width (64 filters):
broadcast + coordinates, 4 × unpadded Conv3×3 (ELU), Conv1×1 to 64, ELU, Conv1×1
to RGB. Pixels are N(sigmoid(·), 0.7²); `err` is the negative log-likelihood, the
KL a one-sample estimate. They report one all-covering slot: K = 1, log mask 0.

Parameter counts of the authors' released models at 64 px: BD-VAE 9,143,747,
DC-VAE 11,549,091 (almost all of it in the two 16×16 gated layers).
"""
from __future__ import annotations

import torch
from torch import nn

from .component_vae import ComponentDecoder
from .distributions import full_precision, monte_carlo_kl, posterior_sigma, reparameterise
from .gated import DEFAULT_STRIDES, GatedDecoder, GatedEncoder, PointwiseConv
from .genesis import check_images
from .mixture import mixture_nll
from .outputs import ModelOutput, SampleOutput

DECODERS = ("broadcast", "deconv")


class BroadcastRGBDecoder(nn.Sequential):
    """BD-VAE's decoder: MONet's spatial broadcast decoder at 64 filters with a
    64-channel output, ELU, then Conv1×1 → 3. Maps `[N, D]` → `[N, 3, H, W]` logits."""

    def __init__(self, img_size: int, latent_dim: int, filters: int = 64):
        super().__init__(
            ComponentDecoder(img_size, latent_dim, out_ch=filters, filters=filters),
            nn.ELU(),
            PointwiseConv(filters, 3),
        )


class SingleLatentVAE(nn.Module):
    """A VAE with one latent per image; `decoder` is "broadcast" (BD-VAE) or "deconv" (DC-VAE)."""

    def __init__(
        self,
        *,
        img_size: int,
        latent_dim: int,
        decoder: str,
        pixel_std: float,
        encoder_strides: tuple[int, ...] = DEFAULT_STRIDES,
    ):
        super().__init__()
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")
        self.img_size = img_size
        self.latent_dim = latent_dim
        self.pixel_std = pixel_std
        strides = tuple(encoder_strides)
        self.encoder = GatedEncoder(img_size, 3, 256, strides=strides, norm=False)
        self.posterior_head = nn.Linear(self.encoder.out_dim, 2 * latent_dim)
        if decoder == "deconv":
            self.decoder = GatedDecoder(img_size, latent_dim, out_ch=3, strides=strides, norm=False)
        else:
            self.decoder = BroadcastRGBDecoder(img_size, latent_dim)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z | x): `[B, 3, H, W]` → (mean, std), each `[B, D]` in at least float32."""
        check_images(x, self.img_size, type(self).__name__)
        mean, raw = full_precision(self.posterior_head(self.encoder(x))).chunk(2, dim=-1)
        return mean, posterior_sigma(raw)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """`[B, D]` → images `[B, 3, H, W]` in [0, 1] (pixel means)."""
        return torch.sigmoid(full_precision(self.decoder(z)).contiguous())

    def forward(self, x: torch.Tensor) -> ModelOutput:
        """Encode, decode and score `x` `[B, 3, H, W]` in [0, 1]."""
        mean, std = self.encode(x)
        z = reparameterise(mean, std)
        image = self.decode(z)
        components = image.unsqueeze(1)
        log_masks = torch.zeros_like(components[:, :, :1])
        err = mixture_nll(full_precision(x), log_masks, components, self.pixel_std)
        z1 = z.unsqueeze(1)
        kl = monte_carlo_kl(z1, mean.unsqueeze(1), std.unsqueeze(1), torch.zeros_like(z1), torch.ones_like(z1))
        return ModelOutput(recon=image, err=err, kl=kl, log_masks=log_masks, components=components, latents=z1)

    @torch.no_grad()
    def sample(self, n: int, num_slots: int | None = None) -> SampleOutput:
        """z ~ N(0, I) decoded; images `[n, 3, H, W]` in [0, 1], one slot."""
        if num_slots not in (None, 1):
            raise ValueError(f"{type(self).__name__} has one latent per image; num_slots={num_slots} is not possible")
        like = next(self.parameters())
        z = torch.randn(n, self.latent_dim, device=like.device, dtype=like.dtype)
        image = self.decode(z)
        components = image.unsqueeze(1)
        return SampleOutput(image, components, torch.zeros_like(components[:, :, :1]), z.unsqueeze(1))

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Per-image probe features: the posterior mean, `[B, D]`."""
        return self.encode(x)[0]
