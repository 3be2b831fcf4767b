"""Gated convolutional encoder and decoder of Berg et al. 2018 (Sylvester flows),
the mask VAE of GENESIS (Sec. 3, Appendix B).

A gated layer is one convolution to `2·out` channels, optional BatchNorm on both
halves, and a gated linear unit `h · sigmoid(g)`. BatchNorm is per channel, so one
BatchNorm2d over `2·out` channels is the same as separate norms on h and g.
Feature maps run in channels_last memory format, which oneDNN convolves several
times faster on CPU than NCHW.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import BiasApartConvTranspose2d

ENCODER_FILTERS = (32, 32, 64, 64, 64)
DECODER_FILTERS = (64, 32, 32, 32, 32)
DEFAULT_STRIDES = (1, 2, 1, 2, 1)


class _GatedLinearUnit(torch.autograd.Function):
    """`h · sigmoid(g)` for `[h, g]` stacked on dim 1, with a backward that keeps
    the input's memory format: `F.glu`'s backward returns NCHW gradients for
    channels_last inputs, which sends BatchNorm's backward down a slow path."""

    @staticmethod
    def forward(ctx, y: torch.Tensor) -> torch.Tensor:
        h, g = y.chunk(2, dim=1)
        gate = torch.sigmoid(g)
        ctx.save_for_backward(h, gate)
        ctx.channels_last = y.dim() == 4 and y.is_contiguous(memory_format=torch.channels_last)
        return h * gate

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> torch.Tensor:
        h, gate = ctx.saved_tensors
        c = h.shape[1]
        layout = torch.channels_last if ctx.channels_last else torch.contiguous_format
        grad = torch.empty((h.shape[0], 2 * c, *h.shape[2:]), dtype=gate.dtype, device=gate.device, memory_format=layout)
        grad_h, grad_g = grad[:, :c], grad[:, c:]
        torch.mul(grad_out, gate, out=grad_h)
        torch.mul(grad_h, h, out=grad_g)
        grad_g.addcmul_(grad_g, gate, value=-1.0)  # · (1 − gate), no temporary
        return grad


def gated_linear_unit(y: torch.Tensor) -> torch.Tensor:
    """GLU over channels: `[N, 2C, H, W]` → `[N, C, H, W]`, `h · sigmoid(g)`."""
    return _GatedLinearUnit.apply(y)


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
            self.conv = BiasApartConvTranspose2d(
                in_ch, 2 * out_ch, kernel, stride, padding, output_padding=stride - 1
            )
        else:
            self.conv = nn.Conv2d(in_ch, 2 * out_ch, kernel, stride, padding)
        self.norm = nn.BatchNorm2d(2 * out_ch) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gated_linear_unit(self.norm(self._convolve(x)))

    def _convolve(self, x: torch.Tensor) -> torch.Tensor:
        """`self.conv(x)`, computed the fastest way on CPU for the "fully
        connected" and the stride-1 transposed layers (same weights, same result
        up to float rounding)."""
        conv = self.conv
        if not isinstance(conv, nn.ConvTranspose2d):
            if x.shape[-2:] == conv.kernel_size and conv.padding == (0, 0):
                # The kernel covers the whole map (the "fully connected" layer):
                # a matrix product, without oneDNN re-laying-out the big weight.
                out = F.linear(x.flatten(1), conv.weight.flatten(1), conv.bias)
                return out.view(*out.shape, 1, 1)
            return conv(x)
        if conv.stride != (1, 1):
            return conv(x)
        if x.shape[-2:] == (1, 1) and conv.padding == (0, 0):
            # From a 1×1 map every output pixel sees one input: a matrix product.
            out = x.flatten(1) @ conv.weight.flatten(1)
            out = out.view(x.shape[0], *conv.weight.shape[1:])
            return out + conv.bias.view(1, -1, 1, 1).to(out.dtype)
        # A stride-1 transposed conv is a conv with the kernel flipped and its
        # in/out channels swapped; oneDNN runs the plain conv much faster.
        kernel = conv.weight.flip(2, 3).transpose(0, 1)
        pad = conv.kernel_size[0] - 1 - conv.padding[0]
        return F.conv2d(x, kernel, conv.bias, padding=pad)


class PointwiseConv(nn.Conv2d):
    """1×1 convolution `[N, C, H, W]` → `[N, O, H, W]` computed as a matrix
    product over channels_last pixels (oneDNN's 1×1 conv to a few output
    channels, and above all its backward, is slow on CPU)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x.permute(0, 2, 3, 1), self.weight.flatten(1), self.bias)
        return y.permute(0, 3, 1, 2)


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
    `norm=False` drops the BatchNorms (the single-latent VAE baselines).
    """

    def __init__(
        self,
        img_size: int,
        in_ch: int = 3,
        out_dim: int = 256,
        filters: tuple[int, ...] = ENCODER_FILTERS,
        strides: tuple[int, ...] = DEFAULT_STRIDES,
        norm: bool = True,
    ):
        super().__init__()
        ins = (in_ch,) + tuple(filters[:-1])
        layers = [GatedConv(i, o, 5, s, 2, norm=norm) for i, o, s in zip(ins, filters, strides)]
        layers.append(GatedConv(filters[-1], out_dim, lowest_resolution(img_size, strides), norm=False))
        self.net = nn.Sequential(*layers)
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.contiguous(memory_format=torch.channels_last)).flatten(1)


class GatedDecoder(nn.Module):
    """Mirror of `GatedEncoder`: a gated transposed conv from 1×1 to the lowest
    resolution, five 5×5 gated transposed convs (BatchNorm), a 1×1 conv.

    Maps `[N, latent_dim]` → `[N, out_ch, H, W]` (logits, no activation).
    `norm=False` drops the BatchNorms (the single-latent VAE baselines).
    """

    def __init__(
        self,
        img_size: int,
        latent_dim: int = 64,
        out_ch: int = 1,
        filters: tuple[int, ...] = DECODER_FILTERS,
        strides: tuple[int, ...] = DEFAULT_STRIDES,
        norm: bool = True,
    ):
        super().__init__()
        up_strides = tuple(reversed(strides))
        ins = (filters[0],) + tuple(filters[:-1])
        layers = [GatedConv(latent_dim, filters[0], lowest_resolution(img_size, strides), transposed=True, norm=False)]
        layers += [GatedConv(i, o, 5, s, 2, transposed=True, norm=norm) for i, o, s in zip(ins, filters, up_strides)]
        layers.append(PointwiseConv(filters[-1], out_ch))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.net[0](z.view(z.shape[0], z.shape[1], 1, 1))
        return self.net[1:](h.contiguous(memory_format=torch.channels_last))
