"""The training curriculum (training/curriculum.py) and GENESIS-V2's mask guidance:
schedules against their formulas, GECO's goal against scipy's Gaussian NLL, the guidance
KL against torch.distributions, the penalty's weight in the loss, and the hook in `fit`."""
import math

import pytest
import torch
from scipy.stats import norm

from genesis_dist.config import load_config
from genesis_dist.models import GenesisV2
from genesis_dist.models.genesis_v2 import mask_consistency_kl, mask_guidance_kl
from genesis_dist.objectives import GECO, geco_goal
from genesis_dist.training import curriculum
from genesis_dist.training.loop import Hook, TrainState, fit, make_objective, seed_everything, train_step

SCHEDULE = ["curriculum.pixel_std_from=0.7", "model.pixel_std=0.3", "curriculum.pixel_std_steps=[10,20]",
            "curriculum.mask_guidance=0.5", "curriculum.mask_guidance_steps=[4,8]", "objective.goal=0.5655"]


def test_the_demo_schedules_and_the_papers_do_not():
    assert curriculum.is_active(load_config([]))
    assert not curriculum.is_active(load_config(["model=genesis_v2", "data=multi_dsprites"]))
    paper = load_config(["model=genesis_v2"])
    assert curriculum.pixel_std_at(paper, 1) == curriculum.pixel_std_at(paper, 10**6) == 0.7
    assert curriculum.goal_at(paper, 123) == paper.objective.goal


def test_pixel_std_anneals_geometrically_between_the_steps():
    cfg = load_config(SCHEDULE)
    assert [curriculum.pixel_std_at(cfg, s) for s in (1, 10)] == [0.7, 0.7]
    assert curriculum.pixel_std_at(cfg, 15) == pytest.approx(math.sqrt(0.7 * 0.3))  # geometric midpoint
    assert curriculum.pixel_std_at(cfg, 20) == pytest.approx(0.3)
    assert curriculum.pixel_std_at(cfg, 500) == pytest.approx(0.3)


def test_geco_goal_keeps_its_rmse_as_sigma_falls():
    cfg = load_config(SCHEDULE)
    # The RMSE r whose Gaussian NLL at σ 0.7 is the paper's goal, found by scipy's root finder.
    from scipy.optimize import brentq

    r = brentq(lambda r: -norm.logpdf(r, 0, 0.7) - 0.5655, 0.0, 0.5)
    assert curriculum.goal_rmse(0.5655, 0.7) == pytest.approx(r, rel=1e-9)
    assert r == pytest.approx(0.0563, abs=1e-4)
    for step in (1, 10, 13, 15, 20, 30):
        sigma = curriculum.pixel_std_at(cfg, step)
        assert curriculum.goal_at(cfg, step) == pytest.approx(-norm.logpdf(r, 0, sigma), rel=1e-9)


def test_mask_guidance_holds_then_decays_linearly_to_zero():
    cfg = load_config(SCHEDULE)
    weights = [curriculum.mask_guidance_at(cfg, s) for s in (1, 4, 5, 6, 8, 9)]
    assert weights == pytest.approx([0.5, 0.5, 0.375, 0.25, 0.0, 0.0])


@pytest.mark.parametrize("kl_of, moves", [(mask_guidance_kl, "decoder"), (mask_consistency_kl, "attention")])
def test_mask_kls_are_the_categorical_kl_and_move_only_their_own_masks(kl_of, moves):
    """Guidance: KL(stopgrad(att) ‖ dec) moves the decoder masks; Eq. 7: KL(att ‖ stopgrad(dec))
    moves the attention masks."""
    gen = torch.Generator().manual_seed(0)
    log_att = torch.randn(2, 4, 1, 5, 5, generator=gen).log_softmax(dim=1).requires_grad_()
    log_dec = torch.randn(2, 4, 1, 5, 5, generator=gen).log_softmax(dim=1).requires_grad_()
    kl = kl_of(log_att, log_dec)
    cat = torch.distributions.Categorical
    expected = torch.distributions.kl_divergence(
        cat(logits=log_att.detach().squeeze(2).movedim(1, -1)), cat(logits=log_dec.detach().squeeze(2).movedim(1, -1))
    ).flatten(1).sum(dim=1)
    assert torch.allclose(kl, expected, atol=1e-5)
    kl.sum().backward()
    moved, fixed = (log_dec, log_att) if moves == "decoder" else (log_att, log_dec)
    assert fixed.grad is None and moved.grad.abs().sum() > 0


def test_the_penalty_adds_to_the_loss_unweighted_by_beta():
    seed_everything(0)
    model = GenesisV2(img_size=32, num_slots=3, encoder_filters=16, head_filters=16, decoder_filters=16)
    objective = GECO(goal=geco_goal(0.5655, 32), step_size=1e-5, beta_init=1e-3)
    images = torch.rand(4, 3, 32, 32)
    model.mask_guidance = 0.3
    torch.manual_seed(1)
    m = {k: float(v) for k, v in train_step(model, objective, torch.optim.SGD(model.parameters(), lr=0.0), images).items()}
    assert m["mask_guidance"] > 0
    assert m["loss"] == pytest.approx(m["err"] + 1e-3 * m["kl"] + m["mask_guidance"], rel=1e-6)
    model.eval()
    assert not model(images).penalties  # a training aid only


def test_fit_applies_the_schedule_at_every_step():
    cfg = load_config(SCHEDULE + ["model.img_size=32", "model.num_slots=3", "model.encoder_filters=16",
                                  "model.head_filters=16", "model.decoder_filters=16"])
    seed_everything(0)
    model = GenesisV2(img_size=32, num_slots=3, encoder_filters=16, head_filters=16, decoder_filters=16, pixel_std=0.3)
    state = TrainState(model, make_objective(cfg.objective, 32), torch.optim.Adam(model.parameters(), lr=1e-4))
    seen = []

    class Watch(Hook):
        def before_step(self, state, step):
            seen.append((step, state.module.pixel_std, state.module.mask_guidance, state.objective.goal))

    def batches():
        while True:
            yield torch.rand(2, 3, 32, 32)

    fit(state, batches(), 22, [curriculum.Curriculum(cfg), Watch()])
    for step, sigma, weight, goal in seen:
        assert sigma == pytest.approx(curriculum.pixel_std_at(cfg, step))
        assert weight == pytest.approx(curriculum.mask_guidance_at(cfg, step))
        assert goal == pytest.approx(geco_goal(curriculum.goal_at(cfg, step), 32))
    assert seen[0][1] == 0.7 and seen[-1][1] == pytest.approx(0.3) and seen[-1][2] == 0.0
