"""Checkpoint files: round trip, RNG restore, and no partial or corrupt checkpoint loads."""
import random

import numpy as np
import pytest
import torch

from genesis_dist.training.checkpoint import (
    CheckpointError, load_checkpoint, read_meta, rng_state, save_checkpoint, set_rng_state,
)
from model_factory import make_model


def _state():
    model = make_model("genesis_v2", img_size=16, num_slots=3, encoder_filters=8, head_filters=8, decoder_filters=8)
    opt = torch.optim.Adam(model.parameters())
    model(torch.rand(2, 3, 16, 16)).err.mean().backward()
    opt.step()
    return model, {"model": model.state_dict(), "optimizer": opt.state_dict(), "objective": {"beta": 0.5, "err_ema": 1.0}}


def test_round_trip_restores_model_and_optimiser(tmp_path):
    model, state = _state()
    save_checkpoint(str(tmp_path / "c"), state, {"step": 7})
    loaded, meta = load_checkpoint(str(tmp_path / "c"))
    assert meta["step"] == 7 and len(meta["sha256"]) == 64
    fresh = make_model("genesis_v2", img_size=16, num_slots=3, encoder_filters=8, head_filters=8, decoder_filters=8)
    fresh.load_state_dict(loaded["model"])
    for a, b in zip(fresh.parameters(), model.parameters()):
        assert torch.equal(a, b)
    assert loaded["optimizer"]["state"][0]["exp_avg"].shape == next(model.parameters()).shape


def test_rng_state_restores_python_numpy_and_torch_streams(tmp_path):
    save_checkpoint(str(tmp_path / "c"), {"rng": rng_state()}, {"step": 1})
    expected = (random.random(), np.random.rand(), torch.rand(3))
    set_rng_state(load_checkpoint(str(tmp_path / "c"))[0]["rng"])
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


def test_checkpoint_without_meta_is_incomplete(tmp_path):
    _, state = _state()
    save_checkpoint(str(tmp_path / "c"), state, {"step": 3})
    (tmp_path / "c" / "meta.json").unlink()  # a crash before the last write
    with pytest.raises(CheckpointError, match="incomplete"):
        load_checkpoint(str(tmp_path / "c"))


def test_truncated_or_altered_state_is_rejected(tmp_path):
    _, state = _state()
    save_checkpoint(str(tmp_path / "c"), state, {"step": 3})
    path = tmp_path / "c" / "state.pt"
    payload = path.read_bytes()
    path.write_bytes(payload[: len(payload) // 2])
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(str(tmp_path / "c"))
    assert read_meta(str(tmp_path / "c"))["step"] == 3


def test_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    save_checkpoint(str(tmp_path / "c"), {"x": Evil()}, {"step": 1})
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        load_checkpoint(str(tmp_path / "c"))
