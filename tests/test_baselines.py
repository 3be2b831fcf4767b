"""Every model behind one interface (GENESIS-V2, GENESIS, GENESIS-S and the baselines
MONet-G, Slot Attention, BD-VAE, DC-VAE): shapes, normalised masks, gradients,
sampling; the baselines' published parameter counts; and each baseline's pieces
against independent float64 re-derivations."""
import math

import numpy as np
from oracles import direct_nll
import pytest
import torch
from torch import nn

from genesis_dist.models import NotGenerativeError, build_model, count_parameters, is_generative
from genesis_dist.schema import MODEL_NAMES
from genesis_dist.models.blocks import UNet
from genesis_dist.models.monet import MONetG, categorical_mask_kl
from genesis_dist.models.slot_attention import SlotAttentionAutoEncoder, SlotAttentionModule, SlotDecoder
from genesis_dist.models.vae import SingleLatentVAE
from model_factory import make_model

SIZE, SLOTS, BATCH = 32, 3, 2
SINGLE_LATENT = ("bd_vae", "dc_vae")


def slots_of(name: str) -> int:
    return 1 if name in SINGLE_LATENT else SLOTS


def small_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return make_model(name, img_size=SIZE, num_slots=SLOTS)


# --- the interface, over every model ---


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_output_shapes_and_masks_normalised_per_pixel(name):
    model = small_model(name)
    x = torch.rand(BATCH, 3, SIZE, SIZE)
    out = model(x)
    k = slots_of(name)
    assert out.recon.shape == (BATCH, 3, SIZE, SIZE)
    assert out.err.shape == out.kl.shape == out.elbo.shape == (BATCH,)
    assert out.log_masks.shape == (BATCH, k, 1, SIZE, SIZE)
    assert out.components.shape == (BATCH, k, 3, SIZE, SIZE)
    assert out.latents.shape[:2] == (BATCH, k)
    assert torch.isfinite(out.err).all() and torch.isfinite(out.kl).all()
    lse = torch.logsumexp(out.log_masks, dim=1)
    assert lse.abs().max() < 1e-5
    if out.log_att_masks is not None:
        assert torch.logsumexp(out.log_att_masks, dim=1).abs().max() < 1e-5
    # The reconstruction is the mask-weighted sum of the components.
    assert torch.allclose(out.recon, (out.log_masks.exp() * out.components).sum(1), atol=1e-5)
    assert out.num_slots.tolist() == [k] * BATCH
    model.eval()
    assert model.features(x).shape[0] == BATCH


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_parameter_receives_a_gradient(name):
    model = small_model(name)
    if name == "genesis_v2":
        # The semi-convolutional gate g = 0 blocks its conv's gradient by design
        # at initialisation; open it as one optimiser step would.
        with torch.no_grad():
            model.attention_head[1].gate.fill_(0.1)
    out = model(torch.rand(BATCH, 3, SIZE, SIZE))
    (out.err + out.kl + sum(out.aux.values(), torch.zeros(BATCH))).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    zero = [n for n, p in model.named_parameters() if p.grad.abs().sum() == 0]
    assert not zero, zero


@pytest.mark.parametrize("name", [n for n in MODEL_NAMES if n != "slot_attention"])
def test_generative_models_sample_valid_scenes(name):
    model = small_model(name).eval()
    assert is_generative(model)
    s = model.sample(3)
    k = slots_of(name)
    assert s.images.shape == (3, 3, SIZE, SIZE)
    assert torch.isfinite(s.images).all() and s.images.min() >= 0 and s.images.max() <= 1
    assert s.components.shape == (3, k, 3, SIZE, SIZE)
    assert s.log_masks.shape == (3, k, 1, SIZE, SIZE)
    assert torch.logsumexp(s.log_masks, dim=1).abs().max() < 1e-5
    assert torch.allclose(s.images, (s.log_masks.exp() * s.components).sum(1), atol=1e-5)
    assert s.latents.shape[:2] == (3, k)


def test_slot_attention_sample_raises_one_clear_error():
    model = small_model("slot_attention")
    assert not is_generative(model)
    with pytest.raises(NotGenerativeError, match="slot_attention is not a generative model"):
        model.sample(4)
    assert issubclass(NotGenerativeError, NotImplementedError)


@pytest.mark.parametrize("name", ["monet", "slot_attention", "bd_vae", "dc_vae"])
def test_bfloat16_autocast_forward_and_backward(name):
    model = small_model(name)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.rand(BATCH, 3, SIZE, SIZE))
    assert out.err.dtype == torch.float32
    (out.err + out.kl).mean().backward()
    assert torch.isfinite(out.err).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", ["monet", "slot_attention", "bd_vae", "dc_vae"])
def test_wrong_input_size_is_a_clear_error(name):
    with pytest.raises(ValueError, match=rf"\[B, 3, {SIZE}, {SIZE}\]"):
        small_model(name)(torch.rand(1, 3, 16, 16))


@pytest.mark.parametrize("name", ["monet", "slot_attention", "bd_vae", "dc_vae"])
def test_128_pixel_smoke(name):
    torch.manual_seed(0)
    model = make_model(name, img_size=128, num_slots=2)
    with torch.no_grad():
        out = model(torch.rand(1, 3, 128, 128))
    assert out.components.shape[-2:] == (128, 128)
    assert torch.logsumexp(out.log_masks, dim=1).abs().max() < 1e-5
    assert torch.isfinite(out.err).all()


# --- parameter counts of the published implementations at 64 px ---


def test_parameter_counts_equal_the_published_implementations():
    for k in (3, 5, 7, 9, 10):
        assert count_parameters(make_model("monet", num_slots=k)) == 974_085
        # Slot Attention at the paper's Multi-dSprites architecture (README table):
        # 312,256 encoder CNN + 8,768 position/LayerNorm/MLP + 54,336 slot attention + 103,972 decoder.
        assert count_parameters(make_model("slot_attention", num_slots=k)) == 479_332
    assert count_parameters(make_model("bd_vae")) == 9_143_747
    assert count_parameters(make_model("dc_vae")) == 11_549_091


def test_single_latent_vaes_have_no_batch_norm():
    # The authors' baseline VAEs build the gated layers without normalisation.
    for name in SINGLE_LATENT:
        model = make_model(name)
        assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_build_model_makes_each_baseline():
    assert isinstance(make_model("monet", num_slots=4), MONetG)
    assert isinstance(make_model("slot_attention", num_slots=4), SlotAttentionAutoEncoder)
    bd, dc = make_model("bd_vae"), make_model("dc_vae")
    assert isinstance(bd, SingleLatentVAE) and isinstance(dc, SingleLatentVAE)
    assert type(bd.decoder).__name__ == "BroadcastRGBDecoder" and type(dc.decoder).__name__ == "GatedDecoder"
    with pytest.raises(ValueError, match="model=monet_g: no such config; available: .*slot_attention"):
        make_model("monet_g")
    with pytest.raises(TypeError, match="takes a validated ModelConfig"):
        build_model({"name": "monet"})


def test_every_model_builds_from_the_schema_alone_and_from_its_yaml():
    """One source of values: the schema builds every model (torch-only code does this), and
    each configs/model/NAME.yaml states the published architecture's exact parameter count."""
    from genesis_dist.schema import ModelConfig

    published = {"genesis_v2": 2_729_422, "genesis": 12_620_548, "genesis_s": 12_207_236, "monet": 974_085,
                 "slot_attention": 479_332, "bd_vae": 9_143_747, "dc_vae": 11_549_091}
    for name in MODEL_NAMES:
        assert count_parameters(build_model(ModelConfig(name=name))) > 0
        assert count_parameters(make_model(name)) == published[name], name
    # The schema's defaults are GENESIS-V2's and GENESIS's published values.
    for name in ("genesis_v2", "genesis"):
        assert count_parameters(build_model(ModelConfig(name=name))) == published[name]


# --- MONet-G against float64 re-derivations ---


def test_monet_attention_masks_follow_the_recurrent_stick_breaking():
    torch.manual_seed(0)
    model = make_model("monet", img_size=SIZE, num_slots=4).double()
    x = torch.rand(2, 3, SIZE, SIZE, dtype=torch.float64)
    log_masks = model.attention_masks(x)
    # Probability space, step by step: α_k from the network on [x, log s], m_k = s α_k, s ← s (1 − α_k).
    scope = torch.ones(2, 1, SIZE, SIZE, dtype=torch.float64)
    expected = []
    for _ in range(3):
        alpha = torch.sigmoid(model.attention_logit(model.attention(torch.cat([x, scope.log()], dim=1))))
        expected.append(scope * alpha)
        scope = scope * (1 - alpha)
    expected.append(scope)
    assert torch.allclose(log_masks.exp(), torch.stack(expected, 1), atol=1e-12)


def test_monet_err_and_kl_match_float64_recomputations():
    torch.manual_seed(0)
    model = make_model("monet", img_size=SIZE, num_slots=3).double()
    x = torch.rand(2, 3, SIZE, SIZE, dtype=torch.float64)
    torch.manual_seed(1)
    out = model(x)
    np.testing.assert_allclose(
        out.err.detach().numpy(), direct_nll(x, out.log_masks.exp(), out.components, 0.7), rtol=1e-10
    )
    torch.manual_seed(1)
    q_mean, q_std = model._posterior(x, model.attention_masks(x))
    z = (q_mean + q_std * torch.randn_like(q_mean)).detach().numpy()
    mu, sd = q_mean.detach().numpy(), q_std.detach().numpy()
    log_q = -0.5 * ((z - mu) / sd) ** 2 - np.log(sd) - 0.5 * math.log(2 * math.pi)
    log_p = -0.5 * z**2 - 0.5 * math.log(2 * math.pi)
    kl_z = (log_q - log_p).sum(axis=(1, 2))
    # Mask KL: categorical over slots per pixel, probabilities floored at 1e-5 and renormalised.
    logits = model.component_decoder(torch.from_numpy(z).flatten(0, 1))[:, 3].detach().numpy()
    dec = np.exp(logits.reshape(2, 3, SIZE, SIZE))
    dec /= dec.sum(axis=1, keepdims=True)
    att = out.log_masks.exp().detach().numpy()[:, :, 0]
    q = np.maximum(att, 1e-5)
    q /= q.sum(axis=1, keepdims=True)
    p = np.maximum(dec, 1e-5)
    p /= p.sum(axis=1, keepdims=True)
    kl_m = (q * np.log(q / p)).sum(axis=(1, 2, 3))
    np.testing.assert_allclose(out.kl.detach().numpy(), kl_z + kl_m, rtol=1e-9)


def test_categorical_mask_kl_floors_and_renormalises_near_empty_masks():
    torch.manual_seed(0)
    log_q = torch.log_softmax(torch.randn(2, 4, 1, 3, 3, dtype=torch.float64) * 20, dim=1)
    log_p = torch.log_softmax(torch.randn(2, 4, 1, 3, 3, dtype=torch.float64) * 20, dim=1)
    assert log_q.exp().min() < 1e-8 and log_p.exp().min() < 1e-8
    q, p = (np.maximum(t.exp().numpy(), 1e-5) for t in (log_q, log_p))
    q, p = q / q.sum(1, keepdims=True), p / p.sum(1, keepdims=True)
    expected = (q * np.log(q / p)).sum(axis=(1, 2, 3, 4))
    np.testing.assert_allclose(categorical_mask_kl(log_q, log_p).numpy(), expected, rtol=1e-12)


def test_categorical_mask_kl_is_zero_for_equal_masks_and_reaches_both():
    log_q = torch.log_softmax(torch.randn(2, 4, 1, 5, 5), dim=1).requires_grad_()
    log_p = torch.log_softmax(torch.randn(2, 4, 1, 5, 5), dim=1).requires_grad_()
    assert categorical_mask_kl(log_q.detach(), log_q.detach()).abs().max() < 1e-5
    categorical_mask_kl(log_q, log_p).sum().backward()
    assert log_q.grad.abs().sum() > 0 and log_p.grad.abs().sum() > 0


def test_instance_norm_unet_normalises_each_channel_like_instance_norm():
    unet = UNet(64, in_ch=4, base=32, norm="instance")
    norms = [m for m in unet.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == 10 and all(m.num_groups == m.num_channels for m in norms)
    torch.manual_seed(0)
    norm = norms[0].double()
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    reference = nn.InstanceNorm2d(norm.num_channels, affine=True).double()
    reference.load_state_dict(norm.state_dict())
    h = torch.randn(3, norm.num_channels, 8, 8, dtype=torch.float64) * 4 + 2
    assert torch.allclose(norm(h), reference(h), atol=1e-10)


# --- the single-latent VAEs ---


@pytest.mark.parametrize("name", SINGLE_LATENT)
def test_vae_err_is_the_gaussian_nll_and_kl_the_standard_normal_estimate(name):
    torch.manual_seed(0)
    model = make_model(name, img_size=SIZE).double()
    x = torch.rand(2, 3, SIZE, SIZE, dtype=torch.float64)
    torch.manual_seed(3)
    out = model(x)
    assert (out.log_masks == 0).all()
    mean = out.recon.detach().numpy()
    nll = (0.5 * ((x.numpy() - mean) / 0.7) ** 2 + math.log(0.7) + 0.5 * math.log(2 * math.pi)).sum(axis=(1, 2, 3))
    np.testing.assert_allclose(out.err.detach().numpy(), nll, rtol=1e-10)
    torch.manual_seed(3)
    mu, sd = (t.detach().numpy() for t in model.encode(x))
    z = mu + sd * torch.randn(mu.shape, dtype=torch.float64).numpy()
    np.testing.assert_allclose(out.latents[:, 0].detach().numpy(), z, rtol=1e-12)
    kl = (-0.5 * ((z - mu) / sd) ** 2 - np.log(sd) + 0.5 * z**2).sum(axis=1)
    np.testing.assert_allclose(out.kl.detach().numpy(), kl, rtol=1e-9)


def test_vae_sampling_rejects_more_than_one_slot():
    with pytest.raises(ValueError, match="one latent per image"):
        small_model("bd_vae").sample(2, num_slots=3)


# --- Slot Attention against a float64 re-derivation of Algorithm 1 ---


def _layer_norm(h, ln):
    mu = h.mean(-1, keepdims=True)
    var = ((h - mu) ** 2).mean(-1, keepdims=True)
    return (h - mu) / np.sqrt(var + ln.eps) * ln.weight.detach().numpy() + ln.bias.detach().numpy()


def _sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def test_slot_attention_module_matches_algorithm_1():
    torch.manual_seed(0)
    module = SlotAttentionModule(num_slots=4, input_dim=16, slot_dim=8, mlp_hidden=12, iterations=3).double()
    inputs = torch.randn(2, 10, 16, dtype=torch.float64)
    torch.manual_seed(7)
    slots, log_attention = module(inputs)
    torch.manual_seed(7)
    noise = torch.randn(2, 4, 8, dtype=torch.float64).numpy()
    P = {n: p.detach().numpy() for n, p in module.named_parameters()}
    s = P["slots_mu"] + np.exp(P["slots_log_sigma"]) * noise
    x = _layer_norm(inputs.numpy(), module.norm_inputs)
    k, v = x @ P["project_k.weight"].T, x @ P["project_v.weight"].T
    for _ in range(3):
        prev = s
        q = _layer_norm(s, module.norm_slots) @ P["project_q.weight"].T / math.sqrt(8)
        logits = np.einsum("bnd,bkd->bnk", k, q)
        attn = np.exp(logits - logits.max(-1, keepdims=True))
        attn /= attn.sum(-1, keepdims=True)  # softmax over slots
        w = attn + 1e-8
        w /= w.sum(1, keepdims=True)  # weighted mean over inputs
        u = np.einsum("bnk,bnd->bkd", w, v)
        wi, wh, bi, bh = P["gru.weight_ih"], P["gru.weight_hh"], P["gru.bias_ih"], P["gru.bias_hh"]
        gi, gh = u @ wi.T + bi, prev @ wh.T + bh
        r = _sigmoid(gi[..., :8] + gh[..., :8])
        zg = _sigmoid(gi[..., 8:16] + gh[..., 8:16])
        n = np.tanh(gi[..., 16:] + r * gh[..., 16:])
        s = (1 - zg) * n + zg * prev
        hidden = np.maximum(_layer_norm(s, module.norm_mlp) @ P["mlp.0.weight"].T + P["mlp.0.bias"], 0)
        s = s + hidden @ P["mlp.2.weight"].T + P["mlp.2.bias"]
    np.testing.assert_allclose(slots.detach().numpy(), s, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(log_attention.exp().detach().numpy(), attn, rtol=1e-9, atol=1e-12)


def test_slot_attention_err_is_the_per_image_mean_squared_error():
    torch.manual_seed(0)
    model = make_model("slot_attention", img_size=SIZE, num_slots=3).double()
    x = torch.rand(2, 3, SIZE, SIZE, dtype=torch.float64)
    out = model(x)
    recon = (out.log_masks.exp() * out.components).sum(1).detach().numpy()
    np.testing.assert_allclose(out.err.detach().numpy(), ((recon - x.numpy()) ** 2).mean(axis=(1, 2, 3)), rtol=1e-12)
    assert (out.kl == 0).all()
    assert out.latents.shape == (2, 3, 64) and model.features(x).shape == (2, 3 * 64)


def test_slot_decoder_fast_first_layer_equals_the_broadcast_convolution():
    torch.manual_seed(0)
    decoder = SlotDecoder(16, slot_dim=6, filters=5).double()
    z = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    fast, literal = decoder(z), decoder.reference_forward(z)
    assert torch.allclose(fast, literal, atol=1e-12)
    grads_fast = torch.autograd.grad(fast.square().sum(), [z, *decoder.parameters()])
    grads_literal = torch.autograd.grad(literal.square().sum(), [z, *decoder.parameters()])
    for a, b in zip(grads_fast, grads_literal):
        assert torch.allclose(a, b, atol=1e-10)


# --- configs, the MSE objective, one step of the training loop ---


@pytest.mark.parametrize("name", ["monet", "slot_attention", "bd_vae", "dc_vae"])
def test_each_baseline_composes_from_its_config_and_builds(name):
    from genesis_dist.config import load_config

    cfg = load_config([f"model={name}", "data=shapestacks"])
    assert cfg.model.name == name and cfg.model.img_size == 64 and cfg.run.name == f"{name}-shapestacks"
    if name == "slot_attention":
        assert cfg.objective.name == "mse" and cfg.model.num_iterations == 3 and cfg.model.latent_dim == 64
        assert (cfg.optim.lr, cfg.optim.warmup_steps, cfg.optim.decay_every, cfg.optim.decay_rate) == (
            4e-4, 10_000, 100_000, 0.5)
    else:
        assert cfg.objective.name == "geco" and cfg.optim.lr == 1e-4
    expected = {"monet": 974_085, "slot_attention": 479_332, "bd_vae": 9_143_747, "dc_vae": 11_549_091}[name]
    assert count_parameters(build_model(cfg.model)) == expected


@pytest.mark.parametrize(
    "overrides, pattern",
    [
        (["model=slot_attention", "objective.name=geco"], r"objective\.name=geco does not train model\.name=slot_attention"),
        (["model=monet", "objective.name=mse"], r"objective\.name=mse does not train model\.name=monet"),
        (["model.name=monet_g"], r"model\.name='monet_g' is not allowed; choose one of: .*slot_attention"),
    ],
)
def test_objective_model_mismatch_is_one_line_error(overrides, pattern):
    from genesis_dist.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=pattern) as info:
        load_config(overrides)
    assert "\n" not in str(info.value)


def test_mse_objective_is_the_mean_error_and_ignores_the_kl():
    from genesis_dist.objectives import MSE

    objective = MSE()
    err = torch.tensor([0.25, 0.75], requires_grad=True)
    loss = objective.loss(err, torch.tensor([100.0, 200.0]))
    assert loss.item() == 0.5
    loss.backward()
    assert err.grad.tolist() == [0.5, 0.5]
    assert float(objective.update(torch.tensor(0.5))) == 0.0 and objective.beta == 0.0
    restored = MSE()
    restored.load_state_dict(objective.state_dict())
    assert float(restored.to("cpu").update(1.0)) == 0.0


@pytest.mark.parametrize("name", ["monet", "slot_attention", "bd_vae", "dc_vae"])
def test_one_training_step_of_the_shared_loop(name):
    from genesis_dist.objectives import GECO, MSE, geco_goal, geco_step_size
    from genesis_dist.training.loop import train_step
    from genesis_dist.training.objective import TrainingObjective

    model = small_model(name)
    objective = TrainingObjective(MSE() if name == "slot_attention" else GECO(geco_goal(0.5655, SIZE), geco_step_size(SIZE)))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    before = [p.detach().clone() for p in model.parameters()]
    metrics = train_step(model, objective, optimizer, torch.rand(4, 3, SIZE, SIZE), channels_last=True)
    assert all(torch.isfinite(v) for v in metrics.values())
    if name == "slot_attention":
        assert float(metrics["loss"]) == pytest.approx(float(metrics["err"])) and float(metrics["kl"]) == 0
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
