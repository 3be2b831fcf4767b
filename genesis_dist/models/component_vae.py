"""MONet's component VAE (Burgess et al. 2019), the second stage of GENESIS, and
the conditional component prior p(z^c_k | z^m_k) (GENESIS Eq. 5).

All slots run through these modules in one batched call: callers flatten
`[B, K, …]` to `[B·K, …]`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import coordinate_grid, spatial_broadcast
from .distributions import full_precision, posterior_sigma, prior_sigma
from .gated import PointwiseConv


class ComponentEncoder(nn.Module):
    """q(z^c_k | x, m_k): `[log m_k, x]` → 4 × (Conv3×3 stride 2, ELU) with
    filters (32, 32, 64, 64) → Linear 256, ELU → Linear to (μ, σ).

    Args of forward: x `[N, 3, H, W]`, log_mask `[N, 1, H, W]`.
    Returns: (mean, std), each `[N, latent_dim]`.
    `activation`: ELU (GENESIS) or ReLU (MONet-G), any in-place-capable module class.
    """

    def __init__(
        self, img_size: int, latent_dim: int = 16, in_ch: int = 3, filters: int = 32, hidden: int = 256,
        activation: type[nn.Module] = nn.ELU,
    ):
        super().__init__()
        if img_size % 16:
            raise ValueError(f"the component encoder needs an image size divisible by 16, got {img_size}")
        chans = (in_ch + 1, filters, filters, 2 * filters, 2 * filters)
        convs: list[nn.Module] = []
        for i, o in zip(chans[:-1], chans[1:]):
            convs += [nn.Conv2d(i, o, 3, stride=2, padding=1), activation(inplace=True)]
        self.convs = nn.Sequential(*convs)
        self.mlp = nn.Sequential(
            nn.Linear(chans[-1] * (img_size // 16) ** 2, hidden),
            activation(inplace=True),
            nn.Linear(hidden, 2 * latent_dim),
        )

    def forward(self, x: torch.Tensor, log_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.convs(torch.cat([log_mask, x], dim=1).contiguous(memory_format=torch.channels_last))
        mean, raw = self.mlp(h.flatten(1)).chunk(2, dim=-1)
        return mean, posterior_sigma(raw)


class ComponentDecoder(nn.Module):
    """Spatial broadcast decoder (Watters et al. 2019) as in MONet: z tiled over
    `(H + 2L)²` with 2 coordinate channels, L = 4 unpadded Conv3×3 (ELU), Conv1×1.

    Maps `[N, latent_dim]` → `[N, out_ch, H, W]` pre-activation (apply sigmoid for RGB).
    `activation`: ELU (GENESIS) or ReLU (MONet-G), any in-place-capable module class.
    """

    def __init__(
        self, img_size: int, latent_dim: int, out_ch: int = 3, filters: int = 32, num_layers: int = 4,
        activation: type[nn.Module] = nn.ELU,
    ):
        super().__init__()
        self.broadcast_size = img_size + 2 * num_layers
        self.first = nn.Conv2d(latent_dim + 2, filters, 3)
        self.first_act = activation(inplace=True)
        rest: list[nn.Module] = []
        for _ in range(num_layers - 1):
            rest += [nn.Conv2d(filters, filters, 3), activation(inplace=True)]
        rest.append(PointwiseConv(filters, out_ch))
        self.rest = nn.Sequential(*rest)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        # The in-place ELU acts on the NHWC tensor itself, not on a permuted view
        # of it (which would make autograd clone the gradient); the permuted
        # result is a channels_last NCHW tensor.
        return self.rest(self.first_act(self._first_layer_nhwc(z)).permute(0, 3, 1, 2))

    def _first_layer_nhwc(self, z: torch.Tensor) -> torch.Tensor:
        """`self.first(spatial_broadcast(z))`, in NHWC layout, without building the broadcast.

        The conv has no padding, so every window sees the same tiled z: its z part
        is a linear map of z (kernel summed over space), and its coordinate part
        is the same for every slot and computed once. `[N, D]` → `[N, H+2L-2, W+2L-2, F]`.
        The sum over slots in the backward then runs over a contiguous leading dim
        (summing dim 0 of a channels_last tensor is very slow on CPU).
        """
        size = self.broadcast_size
        d = z.shape[1]
        coords = coordinate_grid(size, size, z).unsqueeze(0)
        coord_part = F.conv2d(coords, self.first.weight[:, d:], self.first.bias)
        z_part = F.linear(z, self.first.weight[:, :d].sum(dim=(2, 3)))
        coord_nhwc = coord_part[0].permute(1, 2, 0).contiguous().unsqueeze(0)
        return coord_nhwc + z_part[:, None, None, :].to(coord_nhwc.dtype)

    def reference_forward(self, z: torch.Tensor) -> torch.Tensor:
        """The same map computed literally on the broadcast grid (for tests)."""
        size = self.broadcast_size
        return self.rest(self.first_act(self.first(spatial_broadcast(z, size, size))))


class ComponentPrior(nn.Module):
    """p(z^c_k | z^m_k) = N(tanh(μ), prior_sigma(σ_raw)) from an MLP
    `mask_latent_dim → 256 → 256 → 2·latent_dim` with ELU (GENESIS Eq. 5).

    Maps `[..., mask_latent_dim]` → (mean, std), each `[..., latent_dim]`.
    """

    def __init__(self, mask_latent_dim: int = 64, latent_dim: int = 16, hidden: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(mask_latent_dim, hidden), nn.ELU(inplace=True),
            nn.Linear(hidden, hidden), nn.ELU(inplace=True),
            nn.Linear(hidden, 2 * latent_dim),
        )

    def forward(self, z_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean_raw, std_raw = self.mlp(z_mask).chunk(2, dim=-1)
        return torch.tanh(mean_raw), prior_sigma(std_raw)


def decode_rgb(decoder: ComponentDecoder, z: torch.Tensor) -> torch.Tensor:
    """Decode slot latents `[B, K, D]` in one call → RGB components `[B, K, 3, H, W]` in [0, 1]."""
    out = full_precision(decoder(z.flatten(0, 1))).contiguous()
    return torch.sigmoid(out).unflatten(0, z.shape[:2])
