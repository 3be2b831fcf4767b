"""GENESIS-V2 (Engelcke et al., NeurIPS 2021): a UNet encoder, the IC-SBP for
attention masks, a shared spatial broadcast decoder for all slots in parallel
and an autoregressive prior. Read top to bottom: __init__, forward, sample."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import BroadcastDecoder, ConvGNReLU, UNet, coordinate_grid
from .distributions import full_precision, monte_carlo_kl, posterior_sigma, reparameterise
from .icsbp import EMPTY_LOG_MASK, InstanceColouringSBP
from .mixture import compose, mixture_nll
from .outputs import ModelOutput, SampleOutput
from .priors import AutoregressivePrior

MASK_FLOOR = 1e-5


class SemiConvEmbedding(nn.Module):
    """Semi-convolutional embedding (GENESIS-V2 Sec. 3.1, after Novotny et al. 2018):
    `ζ = g · conv1×1(f) + [0, …, 0, u, v]`, with a scalar gate g initialised to 0,
    so at initialisation the embeddings are the pixel coordinates.

    Maps `[B, C, H, W]` → `[B, E, H, W]`.
    """

    def __init__(self, in_ch: int, embedding_dim: int = 8):
        super().__init__()
        if embedding_dim < 2:
            raise ValueError("the semi-convolutional embedding needs at least 2 channels")
        self.conv = nn.Conv2d(in_ch, embedding_dim, 1)
        self.gate = nn.Parameter(torch.zeros(()))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        h, w = features.shape[-2:]
        out = self.gate * self.conv(features)
        coords = coordinate_grid(h, w, out)
        return torch.cat([out[:, :-2], out[:, -2:] + coords], dim=1)


def masks_kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """`Σ_pixels KL(Cat(p) ‖ Cat(q))` over the slots of two sets of log masks `[B, K, 1, H, W]`,
    each clamped to ≥ 1e-5 and renormalised over the slots first (as the authors'
    `Categorical` of the clamped masks does). Returns `[B]` nats per image."""
    floor = math.log(MASK_FLOOR)
    log_p = full_precision(log_p).clamp_min(floor)
    log_q = full_precision(log_q).clamp_min(floor)
    log_p = log_p - log_p.logsumexp(dim=1, keepdim=True)
    log_q = log_q - log_q.logsumexp(dim=1, keepdim=True)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1).flatten(1).sum(dim=1)


def mask_consistency_kl(log_att_masks: torch.Tensor, log_dec_masks: torch.Tensor) -> torch.Tensor:
    """GENESIS-V2 Eq. 7: `Σ_pixels KL(Cat(m_att) ‖ stopgrad(Cat(m_dec)))`.

    Args: log masks `[B, K, 1, H, W]` each, clamped to ≥ 1e-5 before the KL.
    Returns: `[B]` nats per image.
    """
    return masks_kl(log_att_masks, log_dec_masks.detach())


class GenesisV2(nn.Module):
    """GENESIS-V2 with K slots at `img_size`² pixels.

    Defaults reproduce the published architecture (2,729,422 parameters at 64 px).
    """

    def __init__(
        self,
        *,
        img_size: int,
        num_slots: int,
        latent_dim: int,
        kernel: str,
        embedding_dim: int,
        feature_dim: int,
        encoder_filters: int,
        head_filters: int,
        decoder_filters: int,
        mlp_hidden: int,
        prior_hidden: int,
        pixel_std: float,
        mask_loss: bool,
        stop_pixels: float | None,
    ):
        super().__init__()
        self.img_size = img_size
        self.num_slots = num_slots
        self.latent_dim = latent_dim
        self.pixel_std = pixel_std
        self.use_mask_loss = mask_loss
        self.stop_pixels = stop_pixels
        self.encoder = UNet(img_size, 3, encoder_filters, mlp_hidden)
        enc_ch = self.encoder.out_channels
        self.attention_head = nn.Sequential(
            ConvGNReLU(enc_ch, head_filters), SemiConvEmbedding(head_filters, embedding_dim)
        )
        self.feature_head = nn.Sequential(
            ConvGNReLU(enc_ch, head_filters), nn.Conv2d(head_filters, feature_dim, 1)
        )
        self.icsbp = InstanceColouringSBP(num_slots, kernel)
        self.posterior_head = nn.Sequential(
            nn.LayerNorm(feature_dim),
            nn.Linear(feature_dim, feature_dim),
            nn.ReLU(inplace=True),
            nn.Linear(feature_dim, 2 * latent_dim),
        )
        self.decoder = BroadcastDecoder(latent_dim, img_size, out_ch=4, filters=decoder_filters)
        self.prior = AutoregressivePrior(latent_dim, prior_hidden)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(
                f"GenesisV2 expects images [B, 3, {self.img_size}, {self.img_size}], got {list(x.shape)}"
            )

    def _decode(self, z: torch.Tensor, slot_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode `[B, K, D]` latents in parallel → (log_masks `[B,K,1,H,W]`, components `[B,K,3,H,W]`).

        Decoder masks are a softmax over slots of the mask logits; slots with
        `slot_mask` False get zero mass.
        """
        b, k, _ = z.shape
        out = full_precision(self.decoder(z.flatten(0, 1)).unflatten(0, (b, k)))
        components = torch.sigmoid(out[:, :, :3])
        logits = out[:, :, 3:]
        if slot_mask is not None:
            logits = logits.masked_fill(~slot_mask.view(b, k, 1, 1, 1), EMPTY_LOG_MASK)
        return F.log_softmax(logits, dim=1), components

    def encode(self, x: torch.Tensor, stop_pixels: float | None = None):
        """Posterior over slot latents.

        Returns (q_mean `[B,K,D]`, q_std `[B,K,D]`, StickBreakingMasks).
        """
        q_mean, q_std, attention, _ = self._encode(x, stop_pixels)
        return q_mean, q_std, attention

    def _encode(self, x: torch.Tensor, stop_pixels: float | None):
        """`encode`, plus the pixel embeddings ζ `[B, E, H, W]` the attention came from."""
        self._check_input(x)
        h = self.encoder(x)
        embeddings = self.attention_head(h)
        feature_map = self.feature_head(h)
        attention = self.icsbp(embeddings, stop_pixels=stop_pixels)
        att = attention.log_masks.exp().flatten(2)  # [B, K, N]
        feats = full_precision(feature_map).flatten(2)  # [B, F, N]
        # Object features: mask-weighted means of the feature map (Sec. 3.1).
        pooled = torch.einsum("bkn,bfn->bkf", att, feats) / (att.sum(dim=2, keepdim=True) + 1e-5)
        q_mean, q_raw = self.posterior_head(pooled).chunk(2, dim=-1)
        return full_precision(q_mean), posterior_sigma(full_precision(q_raw)), attention, embeddings

    def forward(self, x: torch.Tensor, stop_pixels: float | None = None) -> ModelOutput:
        """Encode, decode and score `x` `[B, 3, H, W]` in [0, 1].

        `stop_pixels` (or the constructor's) enables the flexible number of slots;
        it is ignored in training mode.
        """
        stop = (stop_pixels if stop_pixels is not None else self.stop_pixels) if not self.training else None
        q_mean, q_std, attention, embeddings = self._encode(x, stop)
        slot_mask = None if stop is None else attention.slot_mask
        z = reparameterise(q_mean, q_std)
        log_masks, components = self._decode(z, slot_mask)
        err = mixture_nll(full_precision(x), log_masks, components, self.pixel_std)
        p_mean, p_std = self.prior(z)
        kl = monte_carlo_kl(z, q_mean, q_std, full_precision(p_mean), full_precision(p_std), slot_mask)
        aux = {}
        if self.use_mask_loss:
            aux["mask_loss"] = mask_consistency_kl(attention.log_masks, log_masks)
        return ModelOutput(
            recon=compose(log_masks, components),
            err=err,
            kl=kl,
            log_masks=log_masks,
            components=components,
            latents=z,
            log_att_masks=attention.log_masks,
            slot_mask=attention.slot_mask,
            embeddings=embeddings,
            aux=aux,
        )

    @torch.no_grad()
    def sample(self, n: int, num_slots: int | None = None) -> SampleOutput:
        """Draw `n` scenes from the autoregressive prior; images `[n, 3, H, W]`."""
        like = next(self.parameters())
        z = self.prior.sample(n, num_slots or self.num_slots, like)
        log_masks, components = self._decode(z)
        return SampleOutput(compose(log_masks, components), components, log_masks, z)

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Per-image probe features: posterior means concatenated over slots, `[B, K·D]`."""
        q_mean, _, _ = self.encode(x)
        return q_mean.flatten(1)
