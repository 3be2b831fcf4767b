"""FID with the real Inception weights, checked against `python -m pytorch_fid` on PNGs.

The CLI's 2048-d sqrtm costs ~50 CPU-seconds, so it runs in the background from the start
while the other tests run; each image set's features are computed once. The check that our
"sqrtm" method reproduces the CLI bit for bit costs another sqrtm and is marked slow.
"""
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from fid_weights import REQUIRE_ENV, seed_torch_home
from genesis_dist.figures import save_png
from genesis_dist.evaluation.fid_stats import cached_statistics
from genesis_dist.metrics import (
    InceptionFeatures,
    WeightsMissingError,
    feature_statistics,
    fid_from_features,
    quantise,
)

NUM_IMAGES, SIZE = 12, 64


def toy_scenes(generator: torch.Generator, n: int) -> torch.Tensor:
    """`[n, 3, SIZE, SIZE]` scenes: a shaded background and three flat-coloured boxes."""
    ramp = torch.linspace(0, 1, SIZE)
    scenes = torch.rand(n, 3, 1, 1, generator=generator) * (0.5 + 0.5 * ramp.view(1, 1, SIZE, 1))
    for _ in range(3):
        colour = torch.rand(n, 3, generator=generator)
        corner = torch.randint(0, SIZE - 16, (n, 2), generator=generator)
        extent = torch.randint(8, 24, (n, 2), generator=generator)
        for i in range(n):
            (y, x), (h, w) = corner[i].tolist(), extent[i].tolist()
            scenes[i, :, y:y + h, x:x + w] = colour[i].view(3, 1, 1)
    return scenes


@pytest.fixture(scope="module")
def extractor(torch_home):
    return InceptionFeatures()


@pytest.fixture(scope="module")
def image_sets(tmp_path_factory):
    """Two sets of scenes: the originals and a noisy copy, each also written as PNGs."""
    generator = torch.Generator().manual_seed(0)
    originals = toy_scenes(generator, NUM_IMAGES)
    noisy = (originals + 0.15 * torch.randn(originals.shape, generator=generator)).clamp(0, 1)
    folders = []
    for name, images in (("originals", originals), ("noisy", noisy)):
        folder = tmp_path_factory.mktemp(name)
        for i, image in enumerate(images):
            save_png(image, str(folder / f"{i:03d}.png"))
        folders.append(folder)
    return (originals, noisy), folders


@pytest.fixture(scope="module")
def cli_run(image_sets, torch_home):
    """`python -m pytorch_fid originals/ noisy/`, started in the background."""
    _, (originals_dir, noisy_dir) = image_sets
    process = subprocess.Popen(
        [sys.executable, "-m", "pytorch_fid", str(originals_dir), str(noisy_dir), "--device", "cpu", "--num-workers", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "TORCH_HOME": str(torch_home)},
    )
    yield process
    if process.poll() is None:
        process.kill()
        process.communicate()


@pytest.fixture(scope="module")
def features(cli_run, extractor, image_sets):
    """Inception features of both sets (requesting `cli_run` first starts the CLI early)."""
    (originals, noisy), _ = image_sets
    return extractor(originals), extractor(noisy)


@pytest.fixture(scope="module")
def cli_fid(cli_run):
    stdout, stderr = cli_run.communicate(timeout=600)
    assert cli_run.returncode == 0, stderr[-2000:]
    return float(re.search(r"FID:\s+(\S+)", stdout).group(1))


def test_features_are_2048d_float64_of_the_quantised_images(extractor, image_sets, features):
    (originals, _), _ = image_sets
    assert features[0].shape == (NUM_IMAGES, 2048) and features[0].dtype == torch.float64
    nudged = quantise(originals[:2]) + 0.3 / 255  # rounds back to the same 8-bit levels
    assert torch.equal(extractor(nudged), features[0][:2])


def test_fid_of_a_set_with_itself_is_zero(features):
    assert abs(fid_from_features(features[0], features[0])) < 1e-3  # rounding noise only


def test_fid_agrees_with_pytorch_fid_cli_on_pngs(features, cli_fid):
    ours = fid_from_features(*features)
    assert ours > 10.0  # the noisy copy is far from the originals
    assert ours == pytest.approx(cli_fid, abs=1e-3)
    with pytest.raises(ValueError, match="method"):
        fid_from_features(*features, method="svd")


@pytest.mark.slow
def test_sqrtm_method_reproduces_the_cli(features, cli_fid):
    assert fid_from_features(*features, method="sqrtm") == pytest.approx(cli_fid, abs=1e-6)


def test_missing_weights_give_a_one_line_error_naming_the_path(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("GENESIS_FID_WEIGHTS", raising=False)
    with pytest.raises(WeightsMissingError) as error:
        InceptionFeatures(allow_download=False)
    message = str(error.value)
    assert "\n" not in message
    assert str(tmp_path / "hub" / "checkpoints" / "pt_inception-2015-12-05-6726825d.pth") in message


@pytest.mark.parametrize("content", [None, b"not a torch file"])
def test_weights_variable_naming_a_bad_file_is_a_one_line_error_naming_it(content, tmp_path, monkeypatch):
    path = tmp_path / "copy.pth"
    if content is not None:
        path.write_bytes(content)
    monkeypatch.setenv("GENESIS_FID_WEIGHTS", str(path))
    with pytest.raises(WeightsMissingError) as error:
        InceptionFeatures()
    assert "\n" not in str(error.value) and str(path) in str(error.value) and "GENESIS_FID_WEIGHTS" in str(error.value)


def test_weights_variable_names_a_copy_outside_the_hub_cache(torch_home, image_sets, features, tmp_path, monkeypatch):
    copy = tmp_path / "elsewhere" / "inception.pth"
    copy.parent.mkdir()
    copy.symlink_to((torch_home / "hub" / "checkpoints" / "pt_inception-2015-12-05-6726825d.pth").resolve())
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))  # nothing in the hub cache
    monkeypatch.setenv("GENESIS_FID_WEIGHTS", str(copy))
    (originals, _), _ = image_sets
    assert torch.equal(InceptionFeatures(allow_download=False)(originals[:2]), features[0][:2])


@pytest.mark.parametrize("required", [False, True])
def test_tests_without_weights_skip_in_one_line_or_fail_when_required(required, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("GENESIS_FID_WEIGHTS", raising=False)
    monkeypatch.setenv(REQUIRE_ENV, "1" if required else "0")
    outcome = pytest.fail.Exception if required else pytest.skip.Exception
    with pytest.raises(outcome) as stopped:
        seed_torch_home(tmp_path / "home")
    message = str(stopped.value)
    assert "\n" not in message and "python -m pytorch_fid" in message and "GENESIS_FID_WEIGHTS" in message


def never_iterated():
    raise AssertionError("the cached statistics should have been used")
    yield


@pytest.mark.parametrize("cache_url", ["local", "memory://fid-cache/stats"])
def test_statistics_are_cached_by_key(cache_url, tmp_path, extractor, image_sets, features):
    cache_url = str(tmp_path / "cache") if cache_url == "local" else cache_url
    (originals, _), _ = image_sets
    batches = [originals[:1], originals[1:3]]
    mu, sigma = cached_statistics("abc123", iter(batches), cache_url, extractor, num_images=2)
    want_mu, want_sigma = feature_statistics(features[0][:2])
    np.testing.assert_allclose(mu, want_mu, rtol=0, atol=1e-12)
    np.testing.assert_allclose(sigma, want_sigma, rtol=0, atol=1e-12)
    again = cached_statistics("abc123", never_iterated(), cache_url, extractor, num_images=2)
    assert np.array_equal(again[0], mu) and np.array_equal(again[1], sigma)
    with pytest.raises(ValueError, match="key"):
        cached_statistics("../escape", iter(batches), cache_url, extractor)
