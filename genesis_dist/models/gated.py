"""Gated convolutional encoder and decoder of Berg et al. 2018 (Sylvester flows),
the mask VAE of GENESIS (Sec. 3, Appendix B).

A gated layer is one convolution to `2·out` channels, optional BatchNorm on both
halves, and a gated linear unit `h · sigmoid(g)`. BatchNorm is per channel, so one
BatchNorm2d over `2·out` channels is the same as separate norms on h and g.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

ENCODER_FILTERS = (32, 32, 64, 64, 64)
DECODER_FILTERS = (64, 32, 32, 32, 32)
DEFAULT_STRIDES = (1, 2, 1, 2, 1)


class GatedConv(nn.Module):
    """Conv (or transposed conv) → BatchNorm (optional) → GLU.

    Maps `[N, in_ch, H, W]` → `[N, out_ch, H', W']` with the output size of the
    underlying `nn.Conv2d` / `nn.ConvTranspose2d`.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int,
        stride: int = 1,
        padding: int = 0,
        transposed: bool = False,
        norm: bool = True,
    ):
        super().__init__()
        if transposed:
            self.conv = nn.ConvTranspose2d(
                in_ch, 2 * out_ch, kernel, stride, padding, output_padding=stride - 1
            )
        else:
            self.conv = nn.Conv2d(in_ch, 2 * out_ch, kernel, stride, padding)
        self.norm = nn.BatchNorm2d(2 * out_ch) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.glu(self.norm(self.conv(x)), dim=1)


def lowest_resolution(img_size: int, strides: tuple[int, ...]) -> int:
    """Side length of the feature map after the strided gated convolutions."""
    factor = math.prod(strides)
    if img_size % factor:
        raise ValueError(f"image size {img_size} is not divisible by the total stride {factor}")
    return img_size // factor


class GatedEncoder(nn.Module):
    """Five 5×5 gated convs (BatchNorm) then a gated convolution whose kernel covers
    the whole lowest-resolution map (the "fully connected layer"; 16×16 at 64 px).

    Maps `[N, in_ch, H, W]` → `[N, out_dim]` (out_dim = 256).
    """

    def __init__(
        self,
        img_size: int,
        in_ch: int = 3,
        out_dim: int = 256,
        filters: tuple[int, ...] = ENCODER_FILTERS,
        strides: tuple[int, ...] = DEFAULT_STRIDES,
    ):
        super().__init__()
        ins = (in_ch,) + tuple(filters[:-1])
        layers = [GatedConv(i, o, 5, s, 2) for i, o, s in zip(ins, filters, strides)]
        layers.append(GatedConv(filters[-1], out_dim, lowest_resolution(img_size, strides), norm=False))
        self.net = nn.Sequential(*layers)
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten(1)


class GatedDecoder(nn.Module):
    """Mirror of `GatedEncoder`: a gated transposed conv from 1×1 to the lowest
    resolution, five 5×5 gated transposed convs (BatchNorm), a 1×1 conv.

    Maps `[N, latent_dim]` → `[N, out_ch, H, W]` (logits, no activation).
    """

    def __init__(
        self,
        img_size: int,
        latent_dim: int = 64,
        out_ch: int = 1,
        filters: tuple[int, ...] = DECODER_FILTERS,
        strides: tuple[int, ...] = DEFAULT_STRIDES,
    ):
        super().__init__()
        up_strides = tuple(reversed(strides))
        ins = (filters[0],) + tuple(filters[:-1])
        layers = [GatedConv(latent_dim, filters[0], lowest_resolution(img_size, strides), transposed=True, norm=False)]
        layers += [GatedConv(i, o, 5, s, 2, transposed=True) for i, o, s in zip(ins, filters, up_strides)]
        layers.append(nn.Conv2d(filters[-1], out_ch, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.view(z.shape[0], z.shape[1], 1, 1))
