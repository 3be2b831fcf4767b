"""Network building blocks: coordinate grids, GroupNorm conv blocks, the UNet
backbone and the spatial broadcast decoder of GENESIS-V2."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def coordinate_grid(height: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """Pixel coordinates in [-1, 1] relative to the image centre.

    Returns `[2, H, W]`: channel 0 is u (column, x), channel 1 is v (row, y);
    device and dtype follow `like`.
    """
    v = torch.linspace(-1.0, 1.0, height, device=like.device, dtype=like.dtype)
    u = torch.linspace(-1.0, 1.0, width, device=like.device, dtype=like.dtype)
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    return torch.stack([uu, vv], dim=0)


def spatial_broadcast(z: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Tile latents over a grid and append coordinates (Watters et al. 2019).

    Args: z `[N, D]`. Returns `[N, D + 2, height, width]`.
    """
    n, d = z.shape
    tiled = z.view(n, d, 1, 1).expand(n, d, height, width)
    coords = coordinate_grid(height, width, z).unsqueeze(0).expand(n, 2, height, width)
    return torch.cat([tiled, coords], dim=1)


class ConvGNReLU(nn.Sequential):
    """Conv (no bias: GroupNorm follows) → GroupNorm(groups) → ReLU."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, groups: int = 8):
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=False),
            nn.GroupNorm(groups, out_ch),
            nn.ReLU(inplace=True),
        )


class UNet(nn.Module):
    """UNet backbone of GENESIS-V2 (SPEC: 5 blocks at 64 px, filters [64,64,128,128,128]).

    `log2(H) - 1` down blocks with nearest ×0.5 resampling between them (from 64 px on,
    the authors' layout: the last three have 2·base filters, the others base, e.g.
    [64,64,64,128,128,128] at 128 px; at 32 px the first two have base), an MLP
    (2 hidden layers of 128) on the flattened bottleneck, and mirrored up blocks
    with skip concatenation and nearest ×2 resampling.

    Maps `[B, in_ch, H, W]` → `[B, base, H, W]` (base = 64 by default).

    `norm="instance"` normalises each channel of each image on its own (MONet-G's
    attention network): GroupNorm with one channel per group, which computes exactly
    `nn.InstanceNorm2d(affine=True)` and runs faster on CPU.
    """

    def __init__(self, img_size: int = 64, in_ch: int = 3, base: int = 64, mlp_hidden: int = 128, norm: str = "group"):
        super().__init__()
        if norm not in ("group", "instance"):
            raise ValueError(f"UNet norm must be 'group' or 'instance', got {norm!r}")
        num_blocks = int(round(torch.log2(torch.tensor(float(img_size))).item())) - 1
        if 2 ** (num_blocks + 1) != img_size or num_blocks < 2:
            raise ValueError(f"UNet needs a power-of-two image size ≥ 8, got {img_size}")
        c = base
        down_out = [c] * (num_blocks - 3) + [2 * c] * 3 if num_blocks >= 5 else [c, c] + [2 * c] * (num_blocks - 2)
        down_in = [in_ch] + down_out[:-1]

        def groups(channels: int) -> int:
            return channels if norm == "instance" else 8

        self.down = nn.ModuleList(ConvGNReLU(i, o, groups=groups(o)) for i, o in zip(down_in, down_out))
        # Up path mirrors the down path; each block sees [previous, skip] concatenated.
        up_out = list(reversed(down_in[1:])) + [c]
        up_prev = [down_out[-1]] + up_out[:-1]
        up_skip = list(reversed(down_out))
        self.up = nn.ModuleList(
            ConvGNReLU(p + s, o, groups=groups(o)) for p, s, o in zip(up_prev, up_skip, up_out)
        )
        self.bottleneck_size = img_size // 2 ** (num_blocks - 1)
        flat = down_out[-1] * self.bottleneck_size**2
        self.mlp = nn.Sequential(
            nn.Flatten(),
            nn.Linear(flat, mlp_hidden), nn.ReLU(inplace=True),
            nn.Linear(mlp_hidden, mlp_hidden), nn.ReLU(inplace=True),
            nn.Linear(mlp_hidden, flat), nn.ReLU(inplace=True),
        )
        self.out_channels = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        h = x
        for i, block in enumerate(self.down):
            h = block(h)
            skips.append(h)
            if i < len(self.down) - 1:
                h = F.interpolate(h, scale_factor=0.5, mode="nearest")
        h = self.mlp(h).view_as(h)
        for i, block in enumerate(self.up):
            h = block(torch.cat([h, skips[-1 - i]], dim=1))
            if i < len(self.up) - 1:
                h = F.interpolate(h, scale_factor=2.0, mode="nearest")
        return h


class BiasApartConvTranspose2d(nn.ConvTranspose2d):
    """`nn.ConvTranspose2d` (same parameters, same map) whose bias is added after the
    convolution instead of inside it: for channels-last inputs oneDNN's bias gradient of a
    transposed convolution cost more than its input and weight gradients together (1.48 s
    against 0.36 + 0.42 s for GENESIS-V2's last decoder layer at batch 32, K = 7, one thread),
    where autograd's sum of the output gradient over N, H, W takes 0.04 s.

    Maps `[N, in_ch, H, W]` → `[N, out_ch, H', W']` as the parent class does (no `output_size`).
    """

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if output_size is not None:
            raise ValueError("BiasApartConvTranspose2d takes no output_size: set output_padding instead")
        out = F.conv_transpose2d(x, self.weight, None, self.stride, self.padding, self.output_padding, self.groups,
                                 self.dilation)
        # In place: the convolution's backward does not need its output.
        return out if self.bias is None else out.add_(self.bias.view(1, -1, 1, 1).to(out.dtype))


class BroadcastDecoder(nn.Module):
    """GENESIS-V2 slot decoder: spatial broadcast to H/16 plus coordinates, then
    4 × [ConvTranspose 5×5 stride 2, GroupNorm 8, ReLU] and a 1×1 conv.

    Maps `[N, latent_dim]` → `[N, out_ch, H, W]`.
    """

    def __init__(self, latent_dim: int, img_size: int, out_ch: int = 4, filters: int = 64, groups: int = 8):
        super().__init__()
        if img_size % 16:
            raise ValueError(f"BroadcastDecoder needs an image size divisible by 16, got {img_size}")
        self.start_size = img_size // 16
        layers: list[nn.Module] = []
        in_ch = latent_dim + 2
        for _ in range(4):
            layers += [
                BiasApartConvTranspose2d(in_ch, filters, 5, stride=2, padding=2, output_padding=1),
                nn.GroupNorm(groups, filters),
                nn.ReLU(inplace=True),
            ]
            in_ch = filters
        layers.append(nn.Conv2d(filters, out_ch, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(spatial_broadcast(z, self.start_size, self.start_size))
