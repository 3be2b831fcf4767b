"""`python -m genesis_dist.decompose`: user images of any size → masks and components."""
import numpy as np
import pytest
import torch
from PIL import Image

from genesis_dist.training.checkpoint import save_checkpoint
from genesis_dist.config import load_config
from genesis_dist.decompose import ImageError, load_image, main
from genesis_dist.models import build_model
from omegaconf import OmegaConf


@pytest.fixture
def checkpoint(tmp_path):
    cfg = load_config(["model.img_size=32", "model.num_slots=3", "model.encoder_filters=8",
                       "model.head_filters=8", "model.decoder_filters=8"])
    model = build_model(cfg.model)
    save_checkpoint(str(tmp_path / "ckpt"), {"model": model.state_dict()},
                    {"step": 1, "config": OmegaConf.to_container(cfg)})
    return str(tmp_path / "ckpt")


def test_load_image_resizes_shorter_side_and_centre_crops(tmp_path):
    img = np.zeros((60, 120, 3), dtype=np.uint8)
    img[:, 30:90] = 255  # a white centre band, 60 px wide = exactly the centre square
    Image.fromarray(img).save(tmp_path / "wide.png")
    x = load_image(tmp_path / "wide.png", 32)
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    # The crop is the white centre: black bands are gone (edges blend a little: bilinear).
    assert x[:, :, 2:-2].min() > 0.99 and x.mean() > 0.98


def test_decompose_writes_pngs_for_each_slot(tmp_path, checkpoint):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(tmp_path / "a.jpg")
    assert main([checkpoint, str(tmp_path / "a.jpg"), "--out", str(tmp_path / "out")]) == 0
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert "a_decomposition.png" in names
    assert [n for n in names if "_mask_" in n] == ["a_mask_0.png", "a_mask_1.png", "a_mask_2.png"]
    masks = np.stack([np.asarray(Image.open(tmp_path / "out" / f"a_mask_{k}.png"))[..., 0] for k in range(3)])
    assert abs(masks.astype(int).sum(0) - 255).max() <= 3  # masks sum to one (after uint8 rounding)


def test_unreadable_image_is_a_clear_error(tmp_path, checkpoint, capsys):
    (tmp_path / "broken.png").write_bytes(b"not an image")
    assert main([checkpoint, str(tmp_path / "broken.png")]) == 2
    err = capsys.readouterr().err
    assert "broken.png: not a readable image" in err and "Traceback" not in err
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "missing.png", 32)


def test_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert main([str(tmp_path / "nope"), str(tmp_path / "x.png")]) == 2
    assert "incomplete checkpoint" in capsys.readouterr().err
