"""GENESIS and GENESIS-S: masks, parameter count, gradients, sampling, numerics,
and the exactness of the CPU fast paths (gated layers, broadcast decoder)."""

import numpy as np
from oracles import direct_nll
import pytest
import torch
import torch.nn.functional as F

from genesis_dist.models import count_parameters
from genesis_dist.models.component_vae import ComponentDecoder
from genesis_dist.models.gated import GatedConv, PointwiseConv, gated_linear_unit
from genesis_dist.models.genesis import Genesis, GenesisS
from genesis_dist.models.mask_vae import stick_breaking
from model_factory import make_model

PARAMETERS = 12_620_548  # GENESIS at 64 px, any K (README; the released configuration has about 12.6 M, SPEC)
PARAMETERS_S = 12_207_236  # GENESIS-S (README)


@pytest.fixture(scope="module")
def genesis():
    torch.manual_seed(0)
    return make_model("genesis", img_size=64, num_slots=5)


@pytest.fixture(scope="module")
def genesis_s():
    torch.manual_seed(1)
    return make_model("genesis_s", img_size=64, num_slots=5)


def assert_masks_sum_to_one(log_masks):
    total = log_masks.exp().sum(dim=1)
    assert torch.allclose(total, torch.ones_like(total), atol=1e-5), (total - 1).abs().max()


def test_stick_breaking_by_hand():
    alpha = torch.tensor([0.2, 0.5, 0.9])
    logits = torch.logit(alpha).view(1, 3, 1)  # [B=1, K−1=3, 1 pixel]
    masks = stick_breaking(logits).exp().view(4)
    expected = torch.tensor([0.2, 0.8 * 0.5, 0.8 * 0.5 * 0.9, 0.8 * 0.5 * 0.1])
    assert torch.allclose(masks, expected, atol=1e-6)
    assert torch.allclose(masks[-1], (1 - alpha).prod(), atol=1e-7)  # last mask = remaining scope
    random_masks = stick_breaking(torch.randn(2, 6, 1, 5, 5) * 5)
    assert random_masks.shape == (2, 7, 1, 5, 5)
    assert_masks_sum_to_one(random_masks)


@pytest.mark.parametrize("which", ["genesis", "genesis_s"])
def test_output_shapes_and_masks_sum_to_one(which, genesis, genesis_s):
    model = genesis if which == "genesis" else genesis_s
    latent = 64 + 16 if which == "genesis" else 64
    out = model(torch.rand(2, 3, 64, 64))
    assert out.recon.shape == (2, 3, 64, 64)
    assert out.err.shape == out.kl.shape == (2,)
    assert out.log_masks.shape == (2, 5, 1, 64, 64)
    assert out.components.shape == (2, 5, 3, 64, 64)
    assert out.latents.shape == (2, 5, latent)
    assert_masks_sum_to_one(out.log_masks)
    assert torch.allclose(out.recon, (out.log_masks.exp() * out.components).sum(1), atol=1e-5)
    assert model.features(torch.rand(2, 3, 64, 64)).shape == (2, 5 * latent)


@pytest.mark.parametrize("name", ["genesis", "genesis_s"])
def test_128_pixel_smoke(name):
    torch.manual_seed(0)
    model = make_model(name, img_size=128, num_slots=2)
    with torch.no_grad():
        out = model(torch.rand(2, 3, 128, 128))
    assert out.components.shape == (2, 2, 3, 128, 128)
    assert_masks_sum_to_one(out.log_masks)
    assert torch.isfinite(out.err).all() and torch.isfinite(out.kl).all()


def test_parameter_count_matches_the_released_configuration():
    count = count_parameters(make_model("genesis", img_size=64, num_slots=7))
    print(f"GENESIS parameters at 64 px: {count:,}")
    assert count == PARAMETERS
    assert count_parameters(make_model("genesis", img_size=64, num_slots=9)) == count  # weights are shared over slots
    assert count_parameters(make_model("genesis_s", img_size=64, num_slots=7)) == PARAMETERS_S


def test_err_matches_a_float64_recomputation(genesis):
    x = torch.rand(2, 3, 64, 64)
    out = genesis(x)
    expected = direct_nll(x, out.log_masks.exp(), out.components, 0.7)
    np.testing.assert_allclose(out.err.detach().double().numpy(), expected, rtol=1e-5)


@pytest.mark.parametrize("name", ["genesis", "genesis_s"])
def test_every_parameter_receives_a_gradient(name):
    torch.manual_seed(0)
    model = make_model(name, img_size=32, num_slots=3)
    out = model(torch.rand(2, 3, 32, 32))
    (out.err + out.kl).mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    zero = [n for n, p in model.named_parameters() if p.grad.abs().sum() == 0]
    assert not zero, zero


@pytest.mark.parametrize("which", ["genesis", "genesis_s"])
def test_samples_are_valid_images(which, genesis, genesis_s):
    model = genesis if which == "genesis" else genesis_s
    model.eval()
    try:
        s = model.sample(3)
    finally:
        model.train()
    assert s.images.shape == (3, 3, 64, 64)
    assert torch.isfinite(s.images).all() and s.images.min() >= 0 and s.images.max() <= 1
    assert s.components.shape == (3, 5, 3, 64, 64)
    assert s.log_masks.shape == (3, 5, 1, 64, 64)
    assert_masks_sum_to_one(s.log_masks)
    assert s.latents.shape[:2] == (3, 5)


@pytest.mark.parametrize("name", ["genesis", "genesis_s"])
def test_bfloat16_autocast_forward_and_backward(name):
    torch.manual_seed(0)
    model = make_model(name, img_size=32, num_slots=3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.rand(2, 3, 32, 32))
    loss = (out.err + out.kl).mean()
    assert torch.isfinite(loss)
    assert_masks_sum_to_one(out.log_masks.float())
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_follows_the_input_dtype():
    torch.manual_seed(0)
    model = make_model("genesis", img_size=32, num_slots=3).double()
    out = model(torch.rand(2, 3, 32, 32, dtype=torch.float64))
    assert out.err.dtype == out.log_masks.dtype == out.components.dtype == torch.float64
    assert_masks_sum_to_one(out.log_masks)


def test_build_model_makes_both_variants():
    assert isinstance(make_model("genesis", num_slots=3), Genesis)
    assert isinstance(make_model("genesis_s", num_slots=3), GenesisS)


# --- the CPU fast paths compute exactly the layers they stand for ---


@pytest.mark.parametrize(
    "args, shape",
    [((8, 6, 4, 1, 0), (2, 8, 1, 1)), ((8, 6, 5, 1, 2), (2, 8, 7, 7)), ((8, 6, 5, 2, 2), (2, 8, 7, 7))],
)
def test_gated_transposed_conv_fast_paths_equal_the_module(args, shape):
    torch.manual_seed(0)
    layer = GatedConv(*args, transposed=True).double()
    x = torch.randn(*shape, dtype=torch.float64)
    assert torch.allclose(layer._convolve(x), layer.conv(x), atol=1e-12)


def test_fully_connected_gated_conv_equals_the_module():
    torch.manual_seed(0)
    layer = GatedConv(8, 6, 5, norm=False).double()
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    assert torch.allclose(layer._convolve(x), layer.conv(x), atol=1e-12)


def test_gated_linear_unit_matches_glu_and_keeps_channels_last():
    y = torch.randn(2, 4, 3, 3, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    y.requires_grad_()
    assert torch.equal(gated_linear_unit(y), F.glu(y, dim=1))
    assert torch.autograd.gradcheck(gated_linear_unit, (y,))
    (grad,) = torch.autograd.grad(gated_linear_unit(y).sum(), y)
    assert grad.is_contiguous(memory_format=torch.channels_last)


def test_pointwise_conv_and_broadcast_decoder_equal_the_literal_layers():
    torch.manual_seed(0)
    conv = PointwiseConv(5, 3).double()
    x = torch.randn(2, 5, 4, 4, dtype=torch.float64)
    assert torch.allclose(conv(x), F.conv2d(x, conv.weight, conv.bias), atol=1e-12)
    decoder = ComponentDecoder(16, latent_dim=6).double()
    z = torch.randn(3, 6, dtype=torch.float64)
    assert torch.allclose(decoder(z), decoder.reference_forward(z), atol=1e-12)
