"""GENESIS and GENESIS-S (Engelcke et al., ICLR 2020).

GENESIS: mask latents z^m_{1:K} (64-d) are inferred sequentially and decoded to
stick-breaking masks (Eq. 4); component latents z^c_k (16-d) are inferred by
MONet's component VAE from [log m_k, x] and decoded to RGB means. The image
likelihood is the spatial Gaussian mixture (Eq. 3); the priors are an
autoregressive LSTM over z^m and p(z^c_k | z^m_k) (Eq. 5); the loss terms are
the reconstruction error and a one-sample KL (the ELBO, Eq. 6/7).

GENESIS-S (Figure 5): one latent per slot, decoded both by the mask decoder and
by a spatial broadcast decoder for the component.

Read top to bottom: Genesis.__init__, forward, sample, features; then GenesisS.
"""
from __future__ import annotations

import torch
from torch import nn

from .component_vae import ComponentDecoder, ComponentEncoder, ComponentPrior, decode_rgb
from .distributions import full_precision, monte_carlo_kl, reparameterise
from .gated import DEFAULT_STRIDES
from .mask_vae import MaskVAE
from .mixture import compose, mixture_nll
from .outputs import ModelOutput, SampleOutput
from .priors import AutoregressivePrior


def check_images(x: torch.Tensor, img_size: int, name: str) -> None:
    """Raise a one-line error unless x is `[B, 3, img_size, img_size]`."""
    if x.dim() != 4 or x.shape[1] != 3 or x.shape[-2:] != (img_size, img_size):
        raise ValueError(f"{name} expects images [B, 3, {img_size}, {img_size}], got {list(x.shape)}")


class Genesis(nn.Module):
    """GENESIS with K slots at `img_size`² pixels.

    Defaults reproduce the authors' released configuration (about 12.6 M
    parameters at 64 px). `encoder_strides` are the strides of the five 5×5
    gated convolutions of the mask encoder (mirrored in the decoder); the
    "fully connected" gated layer covers `img_size / Π strides` pixels (16 at
    64 px with the default (1, 2, 1, 2, 1)).
    """

    def __init__(
        self,
        *,
        img_size: int,
        num_slots: int,
        mask_latent_dim: int,
        component_latent_dim: int,
        pixel_std: float,
        prior_hidden: int,
        encoder_strides: tuple[int, ...] = DEFAULT_STRIDES,
    ):
        super().__init__()
        self.img_size = img_size
        self.num_slots = num_slots
        self.pixel_std = pixel_std
        self.mask_vae = MaskVAE(img_size, num_slots, mask_latent_dim, strides=tuple(encoder_strides))
        self.component_encoder = ComponentEncoder(img_size, component_latent_dim)
        self.component_decoder = ComponentDecoder(img_size, component_latent_dim)
        self.mask_prior = AutoregressivePrior(mask_latent_dim, prior_hidden)
        self.component_prior = ComponentPrior(mask_latent_dim, component_latent_dim, prior_hidden)

    def _component_posterior(self, x: torch.Tensor, log_masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z^c_k | x, m_k) for all slots in one batch → (mean, std), each `[B, K, Dc]`."""
        b, k = log_masks.shape[:2]
        x_rep = x.unsqueeze(1).expand(b, k, *x.shape[1:]).flatten(0, 1)
        mean, std = self.component_encoder(x_rep, log_masks.flatten(0, 1))
        return full_precision(mean).unflatten(0, (b, k)), full_precision(std).unflatten(0, (b, k))

    def forward(self, x: torch.Tensor) -> ModelOutput:
        """Encode, decode and score `x` `[B, 3, H, W]` in [0, 1]."""
        check_images(x, self.img_size, "Genesis")
        z_m, qm_mean, qm_std = self.mask_vae.posterior(x)
        log_masks = self.mask_vae.log_masks(z_m)  # Eq. 4
        qc_mean, qc_std = self._component_posterior(x, log_masks)
        z_c = reparameterise(qc_mean, qc_std)
        components = decode_rgb(self.component_decoder, z_c)
        err = mixture_nll(full_precision(x), log_masks, components, self.pixel_std)  # Eq. 3
        pm_mean, pm_std = self.mask_prior(z_m)  # Eq. 5, autoregressive over slots
        pc_mean, pc_std = self.component_prior(z_m)  # Eq. 5, p(z^c_k | z^m_k)
        kl = monte_carlo_kl(z_m, qm_mean, qm_std, full_precision(pm_mean), full_precision(pm_std))
        kl = kl + monte_carlo_kl(z_c, qc_mean, qc_std, full_precision(pc_mean), full_precision(pc_std))
        return ModelOutput(
            recon=compose(log_masks, components),
            err=err,
            kl=kl,
            log_masks=log_masks,
            components=components,
            latents=torch.cat([z_m, z_c], dim=-1),
        )

    @torch.no_grad()
    def sample(self, n: int, num_slots: int | None = None) -> SampleOutput:
        """Ancestral sampling: z^m from the autoregressive prior, masks by the mask
        decoder, z^c ~ p(z^c | z^m), components by the component decoder.
        Call in eval() mode (BatchNorm). Images `[n, 3, H, W]` in [0, 1]."""
        like = next(self.parameters())
        z_m = self.mask_prior.sample(n, num_slots or self.num_slots, like)
        log_masks = self.mask_vae.log_masks(z_m)
        pc_mean, pc_std = self.component_prior(z_m)
        z_c = reparameterise(full_precision(pc_mean), full_precision(pc_std))
        components = decode_rgb(self.component_decoder, z_c)
        latents = torch.cat([z_m, z_c.to(z_m.dtype)], dim=-1)
        return SampleOutput(compose(log_masks, components), components, log_masks, latents)

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Per-image probe features `[B, K·(Dm + Dc)]`: posterior means of z^m and
        z^c (masks decoded from the z^m means), concatenated over slots. Call in
        eval() mode, or BatchNorm uses (and updates) batch statistics."""
        check_images(x, self.img_size, "Genesis")
        _, qm_mean, _ = self.mask_vae.posterior(x, sample=False)
        qc_mean, _ = self._component_posterior(x, self.mask_vae.log_masks(qm_mean))
        return torch.cat([qm_mean, qc_mean], dim=-1).flatten(1)


class GenesisS(nn.Module):
    """GENESIS-S (GENESIS Figure 5): one latent z_k per slot, decoded to a mask
    logit by the gated mask decoder and to RGB by a spatial broadcast decoder;
    autoregressive prior over z_k (Eq. 5), stick-breaking masks (Eq. 4),
    mixture likelihood (Eq. 3)."""

    def __init__(
        self,
        *,
        img_size: int,
        num_slots: int,
        latent_dim: int,
        pixel_std: float,
        prior_hidden: int,
        encoder_strides: tuple[int, ...] = DEFAULT_STRIDES,
    ):
        super().__init__()
        self.img_size = img_size
        self.num_slots = num_slots
        self.pixel_std = pixel_std
        self.mask_vae = MaskVAE(img_size, num_slots, latent_dim, strides=tuple(encoder_strides))
        self.component_decoder = ComponentDecoder(img_size, latent_dim)
        self.prior = AutoregressivePrior(latent_dim, prior_hidden)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        """Encode, decode and score `x` `[B, 3, H, W]` in [0, 1]."""
        check_images(x, self.img_size, "GenesisS")
        z, q_mean, q_std = self.mask_vae.posterior(x)
        log_masks = self.mask_vae.log_masks(z)
        components = decode_rgb(self.component_decoder, z)
        err = mixture_nll(full_precision(x), log_masks, components, self.pixel_std)
        p_mean, p_std = self.prior(z)
        kl = monte_carlo_kl(z, q_mean, q_std, full_precision(p_mean), full_precision(p_std))
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
        """Draw `n` scenes from the autoregressive prior (call in eval() mode)."""
        like = next(self.parameters())
        z = self.prior.sample(n, num_slots or self.num_slots, like)
        log_masks = self.mask_vae.log_masks(z)
        components = decode_rgb(self.component_decoder, z)
        return SampleOutput(compose(log_masks, components), components, log_masks, z)

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Per-image probe features: posterior means concatenated over slots,
        `[B, K·D]`. Call in eval() mode (BatchNorm)."""
        check_images(x, self.img_size, "GenesisS")
        _, q_mean, _ = self.mask_vae.posterior(x, sample=False)
        return q_mean.flatten(1)
