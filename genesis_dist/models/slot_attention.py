"""Slot Attention (Locatello et al., NeurIPS 2020), the object-discovery autoencoder, a baseline.

Encoder: 4 × Conv5×5 (64 filters, ReLU) at full resolution, a soft position
embedding (a learned linear map of the grid `[u, v, 1−u, 1−v]` added to the
features), LayerNorm and a per-pixel MLP (64, ReLU, 64). Slot Attention
(Algorithm 1): K slots of 64 drawn from a learned Gaussian, 3 iterations of
dot-product attention normalised over slots (ε = 1e-8 before the weighted mean),
a GRU update and a residual MLP (128 hidden). Decoder (the Multi-dSprites one of
the paper): each slot broadcast to H×W, soft position embedding, 3 × Conv5×5
(32 filters, ReLU), Conv3×3 → RGB and an alpha logit; alphas are a softmax over
slots and the image is `Σ_k α_k · rgb_k`.

Images enter the encoder as `2x − 1` and RGB is decoded in that range (as in the
paper's implementation); components and reconstruction are reported in [0, 1].
Not a generative model: the objective is the mean squared error (`err`, per image,
mean over C·H·W in [0, 1] units; `kl` is zero) and `sample` raises NotGenerativeError.

479,332 parameters at 64 px (any K).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .distributions import full_precision
from .genesis import check_images
from .outputs import ModelOutput, SampleOutput

LAYER_NORM_EPS = 1e-3  # Keras' LayerNormalization default, as in the paper's implementation


class NotGenerativeError(NotImplementedError):
    """Raised by `sample` of a model that defines no distribution over images."""


def position_grid(height: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """`[H, W, 4]` grid `[v, u, 1 − v, 1 − u]` with v (row) and u (column) in [0, 1]."""
    v = torch.linspace(0.0, 1.0, height, device=like.device, dtype=like.dtype)
    u = torch.linspace(0.0, 1.0, width, device=like.device, dtype=like.dtype)
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    grid = torch.stack([vv, uu], dim=-1)
    return torch.cat([grid, 1.0 - grid], dim=-1)


class SoftPositionEmbedding(nn.Module):
    """Adds `Linear(4 → C)` of the position grid to a feature map `[N, C, H, W]` (same shape out)."""

    def __init__(self, channels: int):
        super().__init__()
        self.proj = nn.Linear(4, channels)

    def embedding(self, height: int, width: int, like: torch.Tensor) -> torch.Tensor:
        """The embedding alone, `[1, C, H, W]`."""
        grid = position_grid(height, width, self.proj.weight)
        return self.proj(grid).permute(2, 0, 1).unsqueeze(0).to(like.dtype)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features + self.embedding(*features.shape[-2:], features)


class SlotAttentionModule(nn.Module):
    """Locatello et al. Algorithm 1: `[B, N, input_dim]` inputs → `[B, K, slot_dim]` slots.

    Also returns the last iteration's attention, normalised over slots, as log
    weights `[B, N, K]`.
    """

    def __init__(self, num_slots: int, input_dim: int = 64, slot_dim: int = 64, mlp_hidden: int = 128,
                 iterations: int = 3, eps: float = 1e-8):
        super().__init__()
        self.num_slots = num_slots
        self.slot_dim = slot_dim
        self.iterations = iterations
        self.eps = eps
        self.norm_inputs = nn.LayerNorm(input_dim, eps=LAYER_NORM_EPS)
        self.norm_slots = nn.LayerNorm(slot_dim, eps=LAYER_NORM_EPS)
        self.norm_mlp = nn.LayerNorm(slot_dim, eps=LAYER_NORM_EPS)
        # Shared Gaussian for the initial slots; Glorot-uniform init of a [1, 1, D] weight.
        limit = math.sqrt(6.0 / (1 + slot_dim))
        self.slots_mu = nn.Parameter(torch.empty(slot_dim).uniform_(-limit, limit))
        self.slots_log_sigma = nn.Parameter(torch.empty(slot_dim).uniform_(-limit, limit))
        self.project_q = nn.Linear(slot_dim, slot_dim, bias=False)
        self.project_k = nn.Linear(input_dim, slot_dim, bias=False)
        self.project_v = nn.Linear(input_dim, slot_dim, bias=False)
        self.gru = nn.GRUCell(slot_dim, slot_dim)
        self.mlp = nn.Sequential(nn.Linear(slot_dim, mlp_hidden), nn.ReLU(inplace=True), nn.Linear(mlp_hidden, slot_dim))

    def forward(self, inputs: torch.Tensor, num_slots: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        b = inputs.shape[0]
        k_slots = num_slots or self.num_slots
        inputs = self.norm_inputs(inputs)
        keys, values = self.project_k(inputs), self.project_v(inputs)
        noise = torch.randn(b, k_slots, self.slot_dim, device=inputs.device, dtype=inputs.dtype)
        slots = self.slots_mu + self.slots_log_sigma.exp() * noise
        for _ in range(self.iterations):
            previous = slots
            queries = self.project_q(self.norm_slots(slots)) * self.slot_dim**-0.5
            logits = torch.einsum("bnd,bkd->bnk", keys, queries)
            log_attention = F.log_softmax(logits, dim=-1)  # slots compete for each input
            weights = log_attention.exp() + self.eps
            weights = weights / weights.sum(dim=1, keepdim=True)  # weighted mean over inputs
            updates = torch.einsum("bnk,bnd->bkd", weights, values)
            slots = self.gru(updates.reshape(-1, self.slot_dim), previous.reshape(-1, self.slot_dim)).view_as(previous)
            slots = slots + self.mlp(self.norm_mlp(slots))
        return slots, log_attention


class SlotEncoder(nn.Module):
    """CNN + soft position embedding + LayerNorm + MLP: `[B, 3, H, W]` → `[B, H·W, filters]`."""

    def __init__(self, filters: int = 64, num_layers: int = 4):
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for _ in range(num_layers):
            layers += [nn.Conv2d(in_ch, filters, 5, padding=2), nn.ReLU(inplace=True)]
            in_ch = filters
        self.cnn = nn.Sequential(*layers)
        self.position = SoftPositionEmbedding(filters)
        self.norm = nn.LayerNorm(filters, eps=LAYER_NORM_EPS)
        self.mlp = nn.Sequential(nn.Linear(filters, filters), nn.ReLU(inplace=True), nn.Linear(filters, filters))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.position(self.cnn(x))
        return self.mlp(self.norm(h.flatten(2).transpose(1, 2)))


class SlotDecoder(nn.Module):
    """Spatial broadcast decoder: `[N, D]` → `[N, 4, H, W]` (RGB in [−1, 1] units and
    an alpha logit). Broadcast to H×W, add the soft position embedding, 3 × Conv5×5
    (ReLU), Conv3×3 → 4."""

    def __init__(self, img_size: int, slot_dim: int = 64, filters: int = 32, num_layers: int = 3):
        super().__init__()
        self.img_size = img_size
        self.position = SoftPositionEmbedding(slot_dim)
        self.first = nn.Conv2d(slot_dim, filters, 5, padding=2)
        layers: list[nn.Module] = [nn.ReLU(inplace=True)]
        for _ in range(num_layers - 1):
            layers += [nn.Conv2d(filters, filters, 5, padding=2), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(filters, 4, 3, padding=1))
        self.rest = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        # The permuted NHWC result is a channels_last NCHW tensor.
        return self.rest(self._first_layer_nhwc(z).permute(0, 3, 1, 2))

    def _first_layer_nhwc(self, z: torch.Tensor) -> torch.Tensor:
        """`self.first(position(broadcast(z)))` in NHWC layout, without building the broadcast.

        The conv is linear: its position part is the same for every slot (computed
        once), and its z part at pixel p is `Σ_i z_i V[i, p]` where `V[i, p]` sums the
        kernel taps that fall inside the image at p (zero padding). `[N, D]` → `[N, H, W, F]`;
        about 25× fewer multiply-adds than convolving the broadcast grid.
        """
        size = self.img_size
        weight, bias = self.first.weight, self.first.bias  # [F, D, k, k], [F]
        k, pad = weight.shape[-1], self.first.padding[0]
        pixel = torch.arange(size, device=weight.device)
        tap = torch.arange(k, device=weight.device) - pad
        inside = ((pixel[:, None] + tap[None, :] >= 0) & (pixel[:, None] + tap[None, :] < size)).to(weight.dtype)
        rows = torch.einsum("fdab,ra->fdrb", weight, inside)  # [F, D, H, k]
        taps = torch.einsum("fdrb,cb->drcf", rows, inside)  # [D, H, W, F]
        z_part = (z @ taps.flatten(1).to(z.dtype)).view(z.shape[0], size, size, -1)
        embedding = self.position.embedding(size, size, weight)
        position_part = F.conv2d(embedding, weight, bias, padding=pad)[0].permute(1, 2, 0)
        return z_part + position_part.to(z_part.dtype)

    def reference_forward(self, z: torch.Tensor) -> torch.Tensor:
        """The same map computed literally on the broadcast grid (for tests)."""
        size = self.img_size
        tiled = z.view(*z.shape, 1, 1).expand(*z.shape, size, size)
        return self.rest(self.first(self.position(tiled)))


class SlotAttentionAutoEncoder(nn.Module):
    """Slot Attention for object discovery with K slots at `img_size`² pixels."""

    generative = False

    def __init__(
        self,
        *,
        img_size: int,
        num_slots: int,
        slot_dim: int,
        mlp_hidden: int,
        iterations: int,
        encoder_filters: int,
        decoder_filters: int,
        eps: float = 1e-8,
    ):
        super().__init__()
        self.img_size = img_size
        self.num_slots = num_slots
        self.encoder = SlotEncoder(encoder_filters)
        self.slot_attention = SlotAttentionModule(num_slots, encoder_filters, slot_dim, mlp_hidden, iterations, eps)
        self.decoder = SlotDecoder(img_size, slot_dim, decoder_filters)

    def slots(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`x` `[B, 3, H, W]` in [0, 1] → (slots `[B, K, D]`, log attention `[B, K, 1, H, W]`)."""
        check_images(x, self.img_size, "SlotAttentionAutoEncoder")
        slots, log_attention = self.slot_attention(self.encoder(2.0 * x - 1.0))
        b, _, h, w = x.shape
        log_att_masks = full_precision(log_attention).transpose(1, 2).reshape(b, -1, 1, h, w)
        return slots, log_att_masks

    def forward(self, x: torch.Tensor) -> ModelOutput:
        """Encode, decode and score `x` `[B, 3, H, W]` in [0, 1].

        `err` is the per-image mean squared error (mean over C·H·W); `kl` is zero.
        """
        slots, log_att_masks = self.slots(x)
        out = full_precision(self.decoder(slots.flatten(0, 1))).unflatten(0, slots.shape[:2])
        components = 0.5 * (out[:, :, :3] + 1.0)  # back from the [−1, 1] range
        log_masks = F.log_softmax(out[:, :, 3:], dim=1)
        recon = (log_masks.exp() * components).sum(dim=1)
        err = (recon - full_precision(x)).pow(2).flatten(1).mean(dim=1)
        return ModelOutput(
            recon=recon,
            err=err,
            kl=torch.zeros_like(err),
            log_masks=log_masks,
            components=components,
            latents=full_precision(slots),
            log_att_masks=log_att_masks,
        )

    def sample(self, n: int, num_slots: int | None = None) -> SampleOutput:
        """Slot Attention defines no prior over slots: always raises NotGenerativeError."""
        raise NotGenerativeError("slot_attention is not a generative model: it has no prior to sample from")

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Per-image probe features: the slots concatenated, `[B, K·D]` (the initial slots
        are random, so features vary between calls unless the RNG is seeded)."""
        return full_precision(self.slots(x)[0]).flatten(1)
