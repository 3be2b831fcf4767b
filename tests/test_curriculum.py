"""The training curriculum (training/curriculum.py) and GENESIS-V2's mask guidance:
schedules against their formulas, GECO's goal against scipy's Gaussian NLL, the guidance
KL against torch.distributions, the colour-affinity loss against numpy, and the training
objective that adds them outside the model (training/objective.py), compiled or not."""
import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from genesis_dist.config import load_config
from genesis_dist.models import build_model
from genesis_dist.models.genesis_v2 import mask_consistency_kl
from genesis_dist.models.mixture import mixture_nll
from genesis_dist.objectives import geco_goal, goal_rmse
from genesis_dist.training import curriculum
from genesis_dist.training.loop import Hook, TrainState, fit, seed_everything, train_step
from genesis_dist.training.objective import colour_affinity_loss, make_objective, mask_guidance_kl

SCHEDULE = ["curriculum.pixel_std_from=0.7", "model.pixel_std=0.3", "curriculum.pixel_std_steps=[10,20]",
            "curriculum.mask_guidance=0.5", "curriculum.mask_guidance_steps=[4,8]", "objective.goal=0.5655",
            "curriculum.colour_hint=2.0", "curriculum.colour_hint_steps=[6,16]", "curriculum.colour_hint_scale=3.0"]


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
    assert goal_rmse(0.5655, 0.7) == pytest.approx(r, rel=1e-9)
    assert r == pytest.approx(0.0563, abs=1e-4)
    for step in (1, 10, 13, 15, 20, 30):
        sigma = curriculum.pixel_std_at(cfg, step)
        assert curriculum.goal_at(cfg, step) == pytest.approx(-norm.logpdf(r, 0, sigma), rel=1e-9)


def test_mask_guidance_holds_then_decays_linearly_to_zero():
    cfg = load_config(SCHEDULE)
    weights = [curriculum.mask_guidance_at(cfg, s) for s in (1, 4, 5, 6, 8, 9)]
    assert weights == pytest.approx([0.5, 0.5, 0.375, 0.25, 0.0, 0.0])


def test_colour_hint_holds_then_decays_linearly_to_zero():
    cfg = load_config(SCHEDULE)
    weights = [curriculum.colour_hint_at(cfg, s) for s in (1, 6, 11, 16, 17)]
    assert weights == pytest.approx([2.0, 2.0, 1.0, 0.0, 0.0])


def test_weights_without_steps_hold_for_the_whole_run():
    cfg = load_config(["model=genesis_v2", "curriculum.colour_hint=0.7", "curriculum.mask_guidance=0.2"])
    for step in (1, 5000, 10**6):
        assert curriculum.colour_hint_at(cfg, step) == 0.7 and curriculum.mask_guidance_at(cfg, step) == 0.2


def gaussian_similarity(sq_dist, sigma=0.3):
    return torch.exp(-sq_dist / sigma)


def test_colour_affinity_loss_is_the_pairwise_cross_entropy_of_kernel_similarities():
    """Against a numpy re-derivation on the same sampled pixels: for pixel pairs (i, j),
    BCE(k(‖ζ_i − ζ_j‖²), k(s²‖x_i − x_j‖²)) averaged over pairs, times H·W."""
    gen = torch.Generator().manual_seed(0)
    emb = torch.randn(2, 4, 6, 6, generator=gen, dtype=torch.float64)
    img = torch.rand(2, 3, 6, 6, generator=gen, dtype=torch.float64)
    torch.manual_seed(5)
    loss = colour_affinity_loss(emb, img, gaussian_similarity, colour_scale=2.0, pixels=10)
    torch.manual_seed(5)
    index = torch.randint(0, 36, (2, 1, 10)).numpy()[:, 0]
    e, x = emb.flatten(2).numpy(), img.flatten(2).numpy()
    for b in range(2):
        ei, xi = e[b][:, index[b]], x[b][:, index[b]]
        d_emb = ((ei[:, :, None] - ei[:, None, :]) ** 2).sum(0)
        d_col = ((xi[:, :, None] - xi[:, None, :]) ** 2).sum(0)
        p = np.clip(np.exp(-d_emb / 0.3), 1e-4, 1 - 1e-4)
        t = np.clip(np.exp(-4.0 * d_col / 0.3), 1e-4, 1 - 1e-4)
        bce = -(t * np.log(p) + (1 - t) * np.log(1 - p))
        assert float(loss[b]) == pytest.approx(bce.mean() * 36, rel=1e-9)


def test_colour_affinity_loss_pulls_same_colours_together_and_pushes_others_apart():
    """Two colours on a 2×8 image; embeddings start as the pixel coordinates. A gradient
    step shrinks the embedding distance within each colour and grows it across colours;
    embeddings that already equal s·colour get no gradient."""
    img = torch.zeros(1, 3, 2, 8, dtype=torch.float64)
    img[..., :4] = 0.9  # left half light, right half dark
    coords = torch.stack(torch.meshgrid(torch.linspace(-1, 1, 2), torch.linspace(-1, 1, 8), indexing="ij"))
    emb = coords.to(torch.float64)[None].clone().requires_grad_()
    torch.manual_seed(0)
    colour_affinity_loss(emb, img, gaussian_similarity, 2.0, pixels=64).sum().backward()
    moved = (emb - 0.05 * emb.grad).detach()
    flat, left = moved.flatten(2)[0], img.flatten(2)[0, 0] > 0.5

    def mean_sq_dist(e, a, b):
        return float(((e[:, a, None] - e[:, None, b]) ** 2).sum(0).mean())

    before = emb.detach().flatten(2)[0]
    assert mean_sq_dist(flat, left, left) < mean_sq_dist(before, left, left)
    assert mean_sq_dist(flat, ~left, ~left) < mean_sq_dist(before, ~left, ~left)
    assert mean_sq_dist(flat, left, ~left) > mean_sq_dist(before, left, ~left)
    ideal = (2.0 * img).requires_grad_()
    colour_affinity_loss(ideal, img, gaussian_similarity, 2.0, pixels=64).sum().backward()
    assert ideal.grad.abs().max() < 1e-9


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


def tiny_cfg(*extra):
    return load_config(SCHEDULE + ["model.img_size=32", "model.num_slots=3", "model.encoder_filters=16",
                                   "model.head_filters=16", "model.decoder_filters=16", *extra])


def test_the_aids_add_to_the_loss_unweighted_by_beta_and_the_model_knows_nothing_of_them():
    cfg = tiny_cfg("objective.beta_init=1e-3")
    seed_everything(0)
    model = build_model(cfg.model)
    objective = make_objective(cfg, model)
    images = torch.rand(4, 3, 32, 32)
    torch.manual_seed(1)
    m = {k: float(v) for k, v in train_step(model, objective, torch.optim.SGD(model.parameters(), lr=0.0), images,
                                            step=7).items()}
    assert m["mask_guidance"] > 0 and m["colour_hint"] > 0
    assert m["loss"] == pytest.approx(m["err"] + 1e-3 * m["kl"] + m["mask_guidance"] + m["colour_hint"], rel=1e-6)
    # The terms are the aids at their scheduled weights (SCHEDULE at step 7: guidance 0.5 · (1 − 3/4),
    # colour hint 2.0 · (1 − 1/10)), computed from what the model returned.
    with torch.no_grad():
        out = model(images)
        torch.manual_seed(2)
        _, _, _, terms = objective.loss(images, out, 7)
        torch.manual_seed(2)
        hint = colour_affinity_loss(out.embeddings, images, model.icsbp.similarity, 3.0)
    assert torch.allclose(terms["mask_guidance"], 0.125 * mask_guidance_kl(out.log_att_masks, out.log_masks))
    assert torch.allclose(terms["colour_hint"], 1.8 * hint)
    assert not hasattr(model, "mask_guidance") and not hasattr(model, "colour_hint") and model.pixel_std == 0.3


def test_sigma_anneal_scores_the_mixture_at_the_scheduled_sigma_and_moves_gecos_goal():
    """err at step s is the mixture NLL of the model's own masks and components at
    pixel_std_at(s) (models/mixture.py), and GECO's goal is goal_at(s)."""
    cfg = tiny_cfg()
    seed_everything(0)
    model = build_model(cfg.model).eval()
    objective = make_objective(cfg, model)
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        out = model(images)
        for step in (1, 15, 30):
            _, err, _, _ = objective.loss(images, out, step)
            sigma = curriculum.pixel_std_at(cfg, step)
            assert torch.allclose(err, mixture_nll(images, out.log_masks, out.components, sigma))
            assert objective.base.goal == pytest.approx(geco_goal(curriculum.goal_at(cfg, step), 32))
    assert not torch.allclose(objective.loss(images, out, 1)[1], out.err)  # σ 0.7, not the model's 0.3
    assert torch.allclose(objective.loss(images, out, 30)[1], out.err)


def test_fit_evaluates_the_schedule_at_every_step():
    cfg = tiny_cfg()
    seed_everything(0)
    model = build_model(cfg.model)
    state = TrainState(model, make_objective(cfg, model), torch.optim.Adam(model.parameters(), lr=1e-4))
    seen = []

    class Watch(Hook):
        def after_step(self, state, metrics):
            seen.append((state.step, state.objective.base.goal))

    def batches():
        while True:
            yield torch.rand(2, 3, 32, 32)

    fit(state, batches(), 22, [Watch()])
    for step, goal in seen:
        assert goal == pytest.approx(geco_goal(curriculum.goal_at(cfg, step), 32))
    assert [s for s, _ in seen] == list(range(1, 23))


def test_a_compiled_model_trains_a_curriculum_step_as_the_eager_one_does():
    """optim.compile=true with every aid on: the forward takes no schedule, so compiling it
    changes nothing of the step (CPU, float32). Compiled through dynamo and AOTAutograd with
    the `aot_eager` backend: the tracing a schedule inside the model used to break, in seconds
    rather than Inductor's ~80 s on 2 cores (the integration tier's
    test_compiled_step_equals_eager_step_on_cpu runs Inductor). Inductor draws its own random
    numbers unless told to fall back to eager's (`fallback_random`)."""
    import torch._inductor.config as inductor

    cfg = tiny_cfg("optim.compile=true")
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    results = []
    torch._dynamo.reset()
    inductor.fallback_random = True
    for compiled in (False, True):
        seed_everything(0)
        model = build_model(cfg.model)
        objective = make_objective(cfg, model)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        trained = torch.compile(model, backend="aot_eager") if compiled else model
        torch.manual_seed(11)
        metrics = train_step(trained, objective, optimizer, images, step=5)
        results.append(({k: float(v) for k, v in metrics.items()},
                        torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])))
    (eager, eager_grad), (comp, comp_grad) = results
    assert set(eager) == set(comp) and {"mask_guidance", "colour_hint"} <= set(eager)
    for key in eager:
        assert comp[key] == pytest.approx(eager[key], rel=1e-4, abs=1e-6), key
    # The whole gradient (Adam's first step would magnify float noise in tiny components).
    assert eager_grad.shape == comp_grad.shape
    assert float((comp_grad - eager_grad).norm() / eager_grad.norm()) < 1e-4
