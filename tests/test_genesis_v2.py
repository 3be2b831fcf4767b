"""GENESIS-V2: shapes, masks, parameter count, gradients, sampling, numerics."""
import numpy as np
import pytest
import torch

from genesis_dist.models import GenesisV2, build_model, count_parameters
from genesis_dist.models.blocks import coordinate_grid
from genesis_dist.models.mixture import mixture_nll
from model_factory import make_model


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return make_model("genesis_v2", img_size=64, num_slots=5)


def test_parameter_count_matches_the_published_model():
    for k in (5, 7, 9):
        assert count_parameters(make_model("genesis_v2", img_size=64, num_slots=k)) == 2_729_422


def test_output_shapes_and_masks_sum_to_one(model):
    x = torch.rand(2, 3, 64, 64)
    out = model(x)
    assert out.recon.shape == (2, 3, 64, 64)
    assert out.err.shape == out.kl.shape == (2,)
    assert out.log_masks.shape == out.log_att_masks.shape == (2, 5, 1, 64, 64)
    assert out.components.shape == (2, 5, 3, 64, 64)
    assert out.latents.shape == (2, 5, 64)
    for masks in (out.log_masks.exp(), out.log_att_masks.exp()):
        assert torch.allclose(masks.sum(1), torch.ones(2, 1, 64, 64), atol=1e-5)


def test_err_is_the_mixture_likelihood_of_the_returned_masks(model):
    x = torch.rand(2, 3, 64, 64)
    out = model(x)
    recomputed = mixture_nll(x.double(), out.log_masks.double(), out.components.double(), 0.7)
    assert torch.allclose(out.err.double(), recomputed, rtol=1e-5)
    assert torch.allclose(out.recon, (out.log_masks.exp() * out.components).sum(1), atol=1e-5)


def test_embeddings_equal_pixel_coordinates_at_initialisation(model):
    h = model.encoder(torch.rand(2, 3, 64, 64))
    emb = model.attention_head(h)
    assert emb.shape == (2, 8, 64, 64)
    assert torch.equal(emb[:, :-2], torch.zeros_like(emb[:, :-2]))
    coords = coordinate_grid(64, 64, emb)
    assert torch.allclose(emb[:, -2:], coords.expand(2, -1, -1, -1))
    assert coords[0, 0, 0] == -1 and coords[0, 0, -1] == 1  # u runs along columns
    assert coords[1, 0, 0] == -1 and coords[1, -1, 0] == 1  # v runs along rows


def test_every_parameter_receives_a_gradient():
    torch.manual_seed(0)
    model = make_model("genesis_v2", img_size=32, num_slots=4, mask_loss=True)
    # At initialisation the gate g = 0 blocks the gradient of the embedding conv
    # by design; open it as one optimiser step would.
    with torch.no_grad():
        model.attention_head[1].gate.fill_(0.1)
    out = model(torch.rand(3, 3, 32, 32))
    (out.err + out.kl + out.aux["mask_loss"]).mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_samples_are_valid_images(model):
    model.eval()
    s = model.sample(3)
    model.train()
    assert s.images.shape == (3, 3, 64, 64)
    assert torch.isfinite(s.images).all() and s.images.min() >= 0 and s.images.max() <= 1
    assert s.components.shape == (3, 5, 3, 64, 64)
    assert torch.allclose(s.log_masks.exp().sum(1), torch.ones(3, 1, 64, 64), atol=1e-5)
    assert s.latents.shape == (3, 5, 64)


def test_features_concatenate_slot_posterior_means(model):
    assert model.features(torch.rand(4, 3, 64, 64)).shape == (4, 5 * 64)


def test_flexible_stop_in_eval_mode_masks_unused_slots():
    torch.manual_seed(0)
    model = make_model("genesis_v2", img_size=32, num_slots=6).eval()
    x = torch.zeros(2, 3, 32, 32)
    out = model(x, stop_pixels=50.0)
    assert (out.num_slots <= 6).all()
    masks = out.log_masks.exp()
    assert torch.allclose(masks.sum(1), torch.ones(2, 1, 32, 32), atol=1e-5)
    unused = ~out.slot_mask
    assert masks[unused].sum() == 0
    assert torch.isfinite(out.err).all() and torch.isfinite(out.kl).all()


@pytest.mark.parametrize("kernel", ["gaussian", "laplacian", "epanechnikov"])
def test_kernels_train_without_nans(kernel):
    torch.manual_seed(0)
    model = make_model("genesis_v2", img_size=32, num_slots=4, kernel=kernel)
    out = model(torch.rand(2, 3, 32, 32))
    (out.err + out.kl).mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_bf16_autocast_forward_backward_is_finite():
    torch.manual_seed(0)
    model = make_model("genesis_v2", img_size=32, num_slots=4)
    x = torch.rand(2, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.err.dtype == torch.float32
    (out.err + out.kl).mean().backward()
    assert torch.isfinite(out.err).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_double_precision_input_runs_in_double():
    model = make_model("genesis_v2", img_size=32, num_slots=3).double()
    out = model(torch.rand(1, 3, 32, 32, dtype=torch.float64))
    assert out.recon.dtype == out.err.dtype == out.log_att_masks.dtype == torch.float64
    assert torch.isfinite(out.err).all()


def test_wrong_input_size_is_a_clear_error(model):
    with pytest.raises(ValueError, match=r"\[B, 3, 64, 64\]"):
        model(torch.rand(1, 3, 32, 32))


def test_build_model_from_config():
    from genesis_dist.config import model_config

    model = build_model(model_config(["num_slots=9", "kernel=laplacian"], name="genesis_v2"))
    assert isinstance(model, GenesisV2) and model.num_slots == 9 and model.icsbp.kernel == "laplacian"
    np.testing.assert_allclose(model.icsbp.sigma.item(), 1 / (3 * np.log(2)), rtol=1e-6)


def test_the_mask_kl_is_the_authors_categorical_kl_of_the_clamped_masks():
    """The authors' `kl_m_loss`: masks floored at 1e-5, then `Categorical` (which renormalises
    them over the slots) and torch's categorical KL, summed over pixels. Masks far below the
    floor make the renormalisation matter."""
    from genesis_dist.models.genesis_v2 import masks_kl

    gen = torch.Generator().manual_seed(0)
    log_p = (8 * torch.randn(2, 5, 1, 6, 6, generator=gen, dtype=torch.float64)).log_softmax(dim=1)
    log_q = (8 * torch.randn(2, 5, 1, 6, 6, generator=gen, dtype=torch.float64)).log_softmax(dim=1)
    assert (log_p.exp() < 1e-5).any() and (log_q.exp() < 1e-5).any()

    def categorical(log_m):
        probs = log_m.exp().clamp_min(1e-5).squeeze(2).movedim(1, -1)
        return torch.distributions.Categorical(probs=probs)

    expected = torch.distributions.kl_divergence(categorical(log_p), categorical(log_q)).flatten(1).sum(dim=1)
    assert torch.allclose(masks_kl(log_p, log_q), expected, rtol=1e-12, atol=1e-12)


def test_replayed_noise_must_fit_what_the_model_draws():
    from genesis_dist.models.noise import replayed

    model = make_model("genesis_v2", img_size=32, num_slots=3).double()
    x = torch.rand(1, 3, 32, 32, dtype=torch.float64)
    draws = [torch.rand(1, 32 * 32, dtype=torch.float64), torch.randn(1, 3, 64, dtype=torch.float64)]
    with replayed(draws):
        first = model(x)
    with replayed(draws):
        assert torch.equal(model(x).err, first.err)  # the same noise, the same numbers
    with pytest.raises(RuntimeError, match=r"shape \[1, 2, 64\] where the model draws \[1, 3, 64\]"):
        with replayed([draws[0], torch.randn(1, 2, 64, dtype=torch.float64)]):
            model(x)
    with pytest.raises(RuntimeError, match="1 replayed draws were not used"):
        with replayed(draws + [torch.zeros(1)]):
            model(x)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_decoder_transposed_convolution_with_its_bias_apart_is_torchs(layout):
    """BiasApartConvTranspose2d (the decoders' stride-2 layers) computes nn.ConvTranspose2d's
    output and all three gradients, in float64, in both memory layouts."""
    from genesis_dist.models.blocks import BiasApartConvTranspose2d

    torch.manual_seed(0)
    reference = torch.nn.ConvTranspose2d(6, 4, 5, stride=2, padding=2, output_padding=1).double()
    torch.nn.init.normal_(reference.bias)  # the default initialisation is small: make the bias count
    ours = BiasApartConvTranspose2d(6, 4, 5, stride=2, padding=2, output_padding=1).double()
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(3, 6, 7, 7, dtype=torch.float64).contiguous(memory_format=layout).requires_grad_()
    expected, got = reference.to(memory_format=layout)(x), ours.to(memory_format=layout)(x)
    assert got.shape == expected.shape == (3, 4, 14, 14)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    grad = torch.randn_like(expected)
    for a, b in zip(torch.autograd.grad(expected, [x, reference.weight, reference.bias], grad),
                    torch.autograd.grad(got, [x, ours.weight, ours.bias], grad)):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-12)
