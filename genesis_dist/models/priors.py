"""Autoregressive slot prior shared by GENESIS and GENESIS-V2.

p(z_1) = N(0, I); for k ≥ 2, an LSTM reads z_1..z_{k-1} and a linear layer gives
p(z_k | z_{<k}) = N(tanh(μ), prior_sigma(σ_raw)) (GENESIS Eq. 5, GENESIS-V2 Sec. 3).
"""
from __future__ import annotations

import torch
from torch import nn

from .distributions import prior_sigma
from .noise import standard_normal_like


class AutoregressivePrior(nn.Module):
    """Autoregressive Gaussian prior over K slot latents of size `latent_dim`."""

    def __init__(self, latent_dim: int, hidden_size: int = 256):
        super().__init__()
        self.latent_dim = latent_dim
        self.lstm = nn.LSTM(latent_dim, hidden_size, batch_first=True)
        self.head = nn.Linear(hidden_size, 2 * latent_dim)

    def _params_from_hidden(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean_raw, std_raw = self.head(h).chunk(2, dim=-1)
        return torch.tanh(mean_raw), prior_sigma(std_raw)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Prior parameters for given latents (teacher forcing).

        Args: z `[B, K, D]`.
        Returns: (mean, std), each `[B, K, D]`; slot 0 is N(0, I).
        """
        b, k, d = z.shape
        first_mean = z.new_zeros(b, 1, d)
        first_std = z.new_ones(b, 1, d)
        if k == 1:
            return first_mean, first_std
        h, _ = self.lstm(z[:, :-1])
        mean, std = self._params_from_hidden(h)
        return torch.cat([first_mean, mean], dim=1), torch.cat([first_std, std], dim=1)

    @torch.no_grad()
    def sample(self, n: int, num_slots: int, like: torch.Tensor) -> torch.Tensor:
        """Ancestral sample of `[n, num_slots, D]` latents (device/dtype of `like`)."""
        z = standard_normal_like(like.new_empty(n, 1, self.latent_dim))
        latents = [z]
        state = None
        for _ in range(num_slots - 1):
            h, state = self.lstm(z, state)
            mean, std = self._params_from_hidden(h)
            z = mean + std * standard_normal_like(mean)
            latents.append(z)
        return torch.cat(latents, dim=1)
