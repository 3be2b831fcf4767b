"""Training objectives: GECO (Rezende & Viola 2018), the plain β-ELBO, and the
mean squared error of the non-probabilistic Slot Attention baseline.

Both take the model's per-image `err [B]` and `kl [B]` (nats) and return a scalar
loss; GECO also adapts β from the reconstruction error (GENESIS Appendix B.4,
GENESIS-V2 Appendix E).
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist


def geco_goal(goal_per_pixel: float, img_size: int, channels: int = 3) -> float:
    """Reconstruction goal C = g_goal · C · H · W in nats per image."""
    return goal_per_pixel * channels * img_size * img_size


def geco_step_size(img_size: int, base: float = 1e-5) -> float:
    """β step size λ = 1e-5 · 64² / (H · W)."""
    return base * 64 * 64 / (img_size * img_size)


def gaussian_nll(rmse: float, pixel_std: float) -> float:
    """The Gaussian NLL `½ ln 2π + ln σ + r² / (2σ²)` (nats per pixel and channel) of a mean
    that is off by `rmse` r at pixel σ `pixel_std`: what a GECO goal means at that σ."""
    return 0.5 * math.log(2 * math.pi) + math.log(pixel_std) + rmse**2 / (2 * pixel_std**2)


def goal_rmse(goal_per_pixel: float, pixel_std: float) -> float:
    """The reconstruction RMSE (pixel units, images in [0, 1]) that a GECO goal in nats per
    pixel and channel allows at pixel σ `pixel_std`, the inverse of `gaussian_nll`. Raises
    ValueError when the goal is below a perfect reconstruction's NLL."""
    excess = goal_per_pixel - 0.5 * math.log(2 * math.pi) - math.log(pixel_std)
    if excess < 0:
        raise ValueError(f"objective.goal={goal_per_pixel:g} is below the NLL of a perfect reconstruction at "
                         f"pixel σ {pixel_std:g} ({goal_per_pixel - excess:.4f} nats per pixel and channel)")
    return math.sqrt(2.0 * excess) * pixel_std


def _global_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean over all ranks when torch.distributed is initialised (else unchanged)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value = value / dist.get_world_size()
    return value


class GECO:
    """GECO: minimise KL subject to err ≤ C, with a Lagrange multiplier β.

    Per step, with α the EMA decay and s the speed-up:
        loss = err + β · KL           (β from before this step's update)
        err_ema ← (1 − α)·err + α·err_ema   (initialised with the first err)
        Δ = C − err_ema
        β ← clamp(β · exp(λ · Δ · s), β_min, β_max),  s = speedup if Δ > 0 else 1

    β and err_ema are float64 tensors on the model's device (`to(device)`), updated
    there: a training step never waits for the host. Under torch.distributed the
    err fed to the update is all-reduced (mean of the rank means) first, so every
    rank holds the same β. `beta` / `err_ema` read them as Python floats (a host sync).
    """

    def __init__(
        self,
        goal: float,
        step_size: float,
        alpha: float = 0.99,
        speedup: float = 10.0,
        beta_init: float = 1.0,
        beta_min: float = 1e-10,
        beta_max: float = 1e10,
        sync: bool = True,
    ):
        self.goal = goal
        self.step_size = step_size
        self.alpha = alpha
        self.speedup = speedup
        self.beta_min = beta_min
        self.beta_max = beta_max
        self.sync = sync
        self.beta_tensor = torch.tensor(float(beta_init), dtype=torch.float64)
        self.err_ema_tensor = torch.tensor(float("nan"), dtype=torch.float64)  # NaN: no err seen yet

    def to(self, device: torch.device | str) -> "GECO":
        """Keep β and the EMA on `device`; returns self."""
        self.beta_tensor = self.beta_tensor.to(device)
        self.err_ema_tensor = self.err_ema_tensor.to(device)
        return self

    @property
    def beta(self) -> float:
        return float(self.beta_tensor)

    @property
    def err_ema(self) -> float | None:
        value = float(self.err_ema_tensor)
        return None if math.isnan(value) else value

    def loss(self, err: torch.Tensor, kl: torch.Tensor) -> torch.Tensor:
        """Scalar loss `mean(err) + β · mean(kl)` with the current β.

        Args: err, kl `[B]` in nats per image (kl includes any auxiliary term
        that GECO weighs like the KL). Call `update(err.mean())` after the
        optimiser step.
        """
        kl_mean = kl.mean()
        return err.mean() + self.beta_tensor.to(kl_mean.dtype) * kl_mean

    @torch.no_grad()
    def update(self, err: torch.Tensor | float) -> torch.Tensor:
        """Update the EMA and β from a batch-mean err (nats, a 0-dim tensor or a float)
        without a host sync; returns the new β (a 0-dim float64 tensor)."""
        err = torch.as_tensor(err, dtype=torch.float64, device=self.beta_tensor.device)
        if self.sync:
            err = _global_mean(err)
        ema = self.err_ema_tensor
        self.err_ema_tensor = torch.where(torch.isnan(ema), err, (1.0 - self.alpha) * err + self.alpha * ema)
        delta = self.goal - self.err_ema_tensor
        speed = torch.where(delta > 0, self.speedup, 1.0)
        self.beta_tensor = (self.beta_tensor * torch.exp(self.step_size * delta * speed)).clamp(self.beta_min, self.beta_max)
        return self.beta_tensor

    def state_dict(self) -> dict[str, float | None]:
        return {"beta": self.beta, "err_ema": self.err_ema}

    def load_state_dict(self, state: dict[str, float | None]) -> None:
        device = self.beta_tensor.device
        self.beta_tensor = torch.tensor(float(state["beta"]), dtype=torch.float64, device=device)
        ema = float("nan") if state["err_ema"] is None else float(state["err_ema"])
        self.err_ema_tensor = torch.tensor(ema, dtype=torch.float64, device=device)


class BetaELBO:
    """β-VAE objective `mean(err) + β · mean(kl)` with fixed β (β = 1: the negative ELBO)."""

    def __init__(self, beta: float = 1.0):
        self.beta = beta
        self.beta_tensor = torch.tensor(float(beta), dtype=torch.float64)

    def to(self, device: torch.device | str) -> "BetaELBO":
        self.beta_tensor = self.beta_tensor.to(device)
        return self

    def loss(self, err: torch.Tensor, kl: torch.Tensor) -> torch.Tensor:
        return err.mean() + self.beta * kl.mean()

    def update(self, err: torch.Tensor | float) -> torch.Tensor:
        """β is fixed: nothing to adapt."""
        return self.beta_tensor

    def state_dict(self) -> dict[str, float]:
        return {"beta": self.beta}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.beta = float(state["beta"])
        self.beta_tensor = torch.tensor(self.beta, dtype=torch.float64, device=self.beta_tensor.device)


class MSE:
    """Slot Attention's objective (Locatello et al. 2020): `mean(err)`, the model's
    per-image mean squared error `[B]`; the KL argument is ignored (such a model
    reports zeros), so β is 0 and never adapts."""

    beta = 0.0

    def __init__(self):
        self.beta_tensor = torch.tensor(0.0, dtype=torch.float64)

    def to(self, device: torch.device | str) -> "MSE":
        self.beta_tensor = self.beta_tensor.to(device)
        return self

    def loss(self, err: torch.Tensor, kl: torch.Tensor) -> torch.Tensor:
        return err.mean()

    def update(self, err: torch.Tensor | float) -> torch.Tensor:
        """Nothing to adapt; returns β = 0 (a 0-dim float64 tensor)."""
        return self.beta_tensor

    def state_dict(self) -> dict[str, float]:
        return {}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Stateless: accepts its own (empty) state."""
