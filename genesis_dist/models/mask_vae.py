"""The mask VAE of GENESIS: sequential inference of mask latents z^m_{1:K}, their
parallel decoding to mask logits, and the stick-breaking process (GENESIS Eq. 4)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .distributions import full_precision, posterior_sigma
from .gated import DEFAULT_STRIDES, GatedDecoder, GatedEncoder
from .noise import standard_normal_like


def stick_breaking(logits: torch.Tensor) -> torch.Tensor:
    """GENESIS Eq. 4 in log space: K−1 fractions α_k = sigmoid(l_k) → K masks.

    `m_k = α_k · Π_{j<k} (1 − α_j)` for k < K and the last mask is the remaining
    scope `m_K = Π_{j<K} (1 − α_j)`, so the masks sum to one at every pixel. Uses
    `log α = logsigmoid(l)`, `log(1 − α) = logsigmoid(−l)` and a cumulative sum
    over slots (no loop).

    Args: logits `[B, K−1, …]`. Returns: log masks `[B, K, …]`.
    """
    log_alpha = F.logsigmoid(logits)
    log_scope = torch.cumsum(F.logsigmoid(-logits), dim=1)  # log s_k, k = 1..K−1
    log_prev_scope = torch.cat([torch.zeros_like(log_scope[:, :1]), log_scope[:, :-1]], dim=1)
    return torch.cat([log_prev_scope + log_alpha, log_scope[:, -1:]], dim=1)


class MaskVAE(nn.Module):
    """Encoder, sequential posterior and decoder over mask latents (GENESIS Sec. 3).

    q(z^m_1 | x) comes from a linear head on the 256-d gated-encoder features h;
    for k ≥ 2 an LSTM (2·latent_dim units) reads [h, z^m_{k−1}] and a linear
    layer gives q(z^m_k | x, z^m_{<k}). The gated decoder maps each z^m_k to a
    mask logit; stick breaking turns the first K−1 logits into K masks.
    """

    def __init__(
        self,
        img_size: int = 64,
        num_slots: int = 7,
        latent_dim: int = 64,
        feature_dim: int = 256,
        strides: tuple[int, ...] = DEFAULT_STRIDES,
    ):
        super().__init__()
        self.num_slots = num_slots
        self.latent_dim = latent_dim
        self.encoder = GatedEncoder(img_size, 3, feature_dim, strides=strides)
        self.first_head = nn.Linear(feature_dim, 2 * latent_dim)
        self.lstm = nn.LSTMCell(feature_dim + latent_dim, 2 * latent_dim)
        self.step_head = nn.Linear(2 * latent_dim, 2 * latent_dim)
        self.decoder = GatedDecoder(img_size, latent_dim, out_ch=1, strides=strides)

    def posterior(self, x: torch.Tensor, sample: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sequential posterior over mask latents.

        Args: x `[B, 3, H, W]`; `sample=False` feeds the posterior means forward
        instead of samples (deterministic features).
        Returns: (z, mean, std), each `[B, K, D]` in at least float32.
        """
        h = self.encoder(x)
        mean, raw = full_precision(self.first_head(h)).chunk(2, dim=-1)
        std = posterior_sigma(raw)
        z = mean + std * standard_normal_like(mean) if sample else mean
        zs, means, stds = [z], [mean], [std]
        state = None
        for _ in range(1, self.num_slots):
            step_in = torch.cat([h, z.to(h.dtype)], dim=-1)
            state = self.lstm(step_in, state)
            mean, raw = full_precision(self.step_head(state[0])).chunk(2, dim=-1)
            std = posterior_sigma(raw)
            z = mean + std * standard_normal_like(mean) if sample else mean
            zs.append(z)
            means.append(mean)
            stds.append(std)
        return torch.stack(zs, 1), torch.stack(means, 1), torch.stack(stds, 1)

    def log_masks(self, z: torch.Tensor) -> torch.Tensor:
        """Decode all K latents `[B, K, D]` in one batch (so BatchNorm sees every
        slot) and stick-break → log masks `[B, K, 1, H, W]` (float32 or wider)."""
        b, k, _ = z.shape
        logits = full_precision(self.decoder(z.flatten(0, 1))).contiguous().unflatten(0, (b, k))
        if k == 1:
            return torch.zeros_like(logits)
        # The K-th logit is unused: the last mask is the remaining scope.
        return stick_breaking(logits[:, :-1])
