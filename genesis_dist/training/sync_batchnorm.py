"""BatchNorm with statistics over every rank's batch, for GENESIS under DDP.

GENESIS's gated mask VAE uses BatchNorm. Under DDP each rank would otherwise normalise
with the statistics of its own share of the batch, so N workers × B images would train
another model than one worker × N·B. On CUDA this is torch's `SyncBatchNorm`; torch's
refuses CPU tensors ("SyncBatchNorm expected input tensor to be on GPU"), so on CPU (gloo)
`CrossRankBatchNorm2d` all-reduces the per-channel sums, sums of squares and counts with
a differentiable all-reduce (`torch.distributed.nn.functional.all_reduce`).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class CrossRankBatchNorm2d(nn.BatchNorm2d):
    """`nn.BatchNorm2d` whose training-mode mean and variance are over the batches of all
    ranks (`[N, C, H, W]` per rank); eval mode and single-process runs are unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        channels = x.shape[1]
        dims = (0, 2, 3)
        x32 = x.to(torch.promote_types(x.dtype, torch.float32))  # half precisions computed in float32
        local_count = x.numel() // channels
        # Mean first, then the centred sum of squares (E[x²] − E[x]² loses the variance of
        # near-constant channels to float32 cancellation).
        count_and_sum = all_reduce(torch.cat([x32.new_full((1,), float(local_count)), x32.sum(dims)]))
        total = count_and_sum[0]
        mean = count_and_sum[1:] / total
        var = all_reduce((x32 - mean.view(1, channels, 1, 1)).square().sum(dims)) / total
        if self.track_running_stats:
            with torch.no_grad():
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked + 1)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
                unbiased = var * total / (total - 1).clamp(min=1)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
                self.num_batches_tracked.add_(1)
        shape = (1, channels, 1, 1)
        y = (x32 - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` with every BatchNorm2d normalising over all ranks: torch's SyncBatchNorm on
    CUDA, `CrossRankBatchNorm2d` elsewhere. Parameters and buffers are the same objects
    (an optimiser built before the conversion keeps working); a model without
    BatchNorm is returned unchanged."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _convert(model)


def _convert(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, CrossRankBatchNorm2d):
        converted = CrossRankBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                                         module.track_running_stats)
        if module.affine:
            converted.weight, converted.bias = module.weight, module.bias
        if module.track_running_stats:
            converted.running_mean, converted.running_var = module.running_mean, module.running_var
            converted.num_batches_tracked = module.num_batches_tracked
        converted.train(module.training)
        return converted
    for name, child in module.named_children():
        replaced = _convert(child)
        if replaced is not child:
            setattr(module, name, replaced)
    return module
