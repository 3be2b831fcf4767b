"""GECO and β-ELBO against hand computations of the update rule."""
import math

import pytest
import torch

from genesis_dist.objectives import GECO, BetaELBO, geco_goal, geco_step_size


def hand_geco(errs, goal, lam, alpha=0.99, speedup=10.0, beta=1.0):
    """The update written out longhand, one step at a time."""
    betas, ema = [], None
    for e in errs:
        ema = e if ema is None else (1 - alpha) * e + alpha * ema
        delta = goal - ema
        factor = speedup if delta > 0 else 1.0
        beta = beta * math.exp(lam * delta * factor)
        beta = min(max(beta, 1e-10), 1e10)
        betas.append(beta)
    return betas


def test_goal_and_step_size_follow_the_image_size():
    assert geco_goal(0.5655, 64) == pytest.approx(0.5655 * 3 * 64 * 64)
    assert geco_step_size(64) == pytest.approx(1e-5)
    assert geco_step_size(128) == pytest.approx(1e-5 / 4)


@pytest.mark.parametrize("errs", [
    [7000.0, 6900.0, 6800.0, 6500.0, 6000.0],  # above the goal: β falls
    [6000.0, 5900.0, 5800.0, 5950.0, 6100.0],  # below the goal: β rises 10× faster
    [6947.0, 6940.0, 6960.0, 6930.0, 6955.0],  # straddling the goal
])
def test_beta_sequence_matches_hand_computation(errs):
    goal, lam = geco_goal(0.5655, 64), geco_step_size(64)
    geco = GECO(goal, lam)
    betas = [float(geco.update(torch.tensor(e))) for e in errs]
    assert betas == pytest.approx(hand_geco(errs, goal, lam), rel=1e-12)


def test_beta_moves_in_the_right_direction_and_is_clamped():
    geco = GECO(goal=100.0, step_size=1.0)
    geco.update(50.0)  # constraint met: β grows (and is clamped at 1e10)
    assert geco.beta == 1e10
    geco = GECO(goal=100.0, step_size=1.0)
    geco.update(1e6)
    assert geco.beta == 1e-10


def test_loss_uses_beta_before_the_update_and_state_round_trips():
    geco = GECO(goal=100.0, step_size=1e-3, beta_init=2.0)
    err, kl = torch.tensor([80.0, 120.0]), torch.tensor([3.0, 5.0])
    assert geco.loss(err, kl).item() == pytest.approx(100.0 + 2.0 * 4.0)
    geco.update(err.mean())
    restored = GECO(goal=100.0, step_size=1e-3)
    restored.load_state_dict(geco.state_dict())
    assert restored.beta == geco.beta and restored.err_ema == geco.err_ema
    assert float(restored.update(90.0)) == float(geco.update(90.0))


def test_beta_elbo_is_err_plus_beta_kl():
    obj = BetaELBO(beta=0.5)
    assert obj.loss(torch.tensor([10.0]), torch.tensor([4.0])).item() == 12.0
    assert float(obj.update(123.0)) == 0.5
