"""A model trained on your own images, end to end without Ray: the real fixture photos
(own_images.py) converted by `tools/shard.py images`, 20 steps of `data=images` through
`train_rank` (what every Ray worker runs), then the checkpoint evaluator — ELBO (and FID
when the Inception weights are present) without masks, ARI and mSC beside them with
masks — and `decompose` on the run's checkpoint."""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from fid_weights import REQUIRE_ENV, find_weights, seed_torch_home
from own_images import band_labels, build_own_folder
from tiny_config import TINY

from genesis_dist.config import load_config, load_eval_config
from genesis_dist.decompose import main as decompose
from genesis_dist.evaluation.checkpoint_eval import CheckpointEvaluator
from genesis_dist.training.checkpoint import load_checkpoint
from genesis_dist.training.layout import checkpoint_name
from genesis_dist.training.run import publish_to_run_folder, train_rank
from genesis_dist.training.run_folder import ensure_dataset

STEPS = 20


@pytest.fixture(scope="module")
def converted(tmp_path_factory, shard_cli):
    """The own folder at 32 px (the tiny model's size) without and with masks (bands on every photo)."""
    root = tmp_path_factory.mktemp("own")
    expected = build_own_folder(root / "photos")
    for relative, want in expected.items():
        mask = root / "masks" / Path(relative).with_suffix(".png")
        mask.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(band_labels(*want.pixels.shape[:2], bands=3)).save(mask)
    cli = shard_cli
    common = ["--size", "32", "--split", "0.6,0.2,0.2", "--workers", "1", "--quiet"]
    assert cli.main(["images", str(root / "photos"), "--out", str(root / "plain"), *common]) == 0
    assert cli.main(["images", str(root / "photos"), "--masks", str(root / "masks"), "--out", str(root / "masked"),
                     *common]) == 0
    return root


def train(data_url: str, run_url: str):
    cfg = load_config(["data=images", f"data.url={data_url}", *TINY, f"optim.steps={STEPS}",
                       "run.checkpoint_every=10"])
    assert (cfg.data.name, cfg.run.name) == ("images", "genesis_v2-images")
    ensure_dataset(cfg)
    events: list = []
    state = train_rank(cfg, run_url, rank=0, world=1, device=torch.device("cpu"),
                       publish=publish_to_run_folder(run_url), progress=events.append)
    assert state.step == STEPS
    return f"{run_url}/{checkpoint_name(STEPS)}"


def evaluate(checkpoint: str, run_url: str, fid_samples: int) -> dict:
    settings = OmegaConf.to_container(load_eval_config([f"fid_samples={fid_samples}", "segmentation_images=8",
                                                        "batch_size=4", f"stats_cache={run_url}/fid_cache"]))
    outcome = CheckpointEvaluator(settings).evaluate(checkpoint, run_url)
    assert outcome["ok"], outcome.get("traceback")
    return outcome["record"]


def test_twenty_steps_on_own_photos_then_elbo_and_fid_and_decompose(converted, tmp_path, monkeypatch):
    run = str(tmp_path / "run")
    checkpoint = train(str(converted / "plain"), run)
    _, meta = load_checkpoint(checkpoint)
    assert math.isfinite(meta["eval"]["elbo"]) and "ari_fg" not in meta["eval"]  # held out, without masks

    fid_samples = 0
    if find_weights() is not None or os.environ.get(REQUIRE_ENV) == "1":  # where required, missing weights fail
        monkeypatch.setenv("TORCH_HOME", str(seed_torch_home(tmp_path / "torch_home")))
        fid_samples = 3
    record = evaluate(checkpoint, run, fid_samples)
    assert math.isfinite(record["elbo"]) and record["elbo"] == pytest.approx(-(record["err"] + record["kl"]), rel=1e-4)
    assert not any(key.startswith(("ari", "msc", "att_ari")) for key in record)
    if fid_samples:
        assert record["fid"] > 0

    photos = converted / "photos"
    out = tmp_path / "decompositions"
    inputs = [photos / "phone/rotated.jpg", photos / "scans/grey16.png", photos / "cutouts/rgba.png"]
    assert decompose([checkpoint, *map(str, inputs), "--out", str(out)]) == 0
    for path in inputs:
        figure = out / f"{path.stem}_decomposition.png"
        assert figure.exists() and Image.open(figure).size[0] > 32
        masks = np.stack([np.asarray(Image.open(out / f"{path.stem}_mask_{k}.png"))[..., 0] for k in range(3)])
        assert masks.shape == (3, 32, 32) and abs(masks.astype(int).sum(0).mean() - 255) < 3  # they sum to one


def test_twenty_steps_on_own_photos_with_masks_score_ari_and_msc(converted, tmp_path):
    run = str(tmp_path / "run")
    checkpoint = train(str(converted / "masked"), run)
    _, meta = load_checkpoint(checkpoint)
    assert -1 <= meta["eval"]["ari_fg"] <= 1  # held out, with masks
    record = evaluate(checkpoint, run, fid_samples=0)
    assert math.isfinite(record["elbo"])
    for key in ("ari_fg", "msc_fg", "att_ari_fg", "att_msc_fg"):
        assert key in record and math.isfinite(record[key]), key


def test_print_config_shows_the_images_group(capsys, tmp_path, monkeypatch):
    from genesis_dist import train as train_cli

    monkeypatch.chdir(tmp_path)
    assert train_cli.main(["data=images", "data.url=s3://bucket/shards/photos", "--print-config"]) == 0
    printed = OmegaConf.create(capsys.readouterr().out)
    assert (printed.data.name, printed.data.url, printed.model.img_size, printed.model.num_slots,
            printed.objective.goal, printed.run.name) == ("images", "s3://bucket/shards/photos", 64, 7, 0.5655,
                                                          "genesis_v2-images")
    assert not (tmp_path / "runs").exists()
