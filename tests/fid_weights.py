"""The FID Inception weights for tests: found the way the product finds them, or the test is skipped.

Lookup (genesis_dist.metrics.fid.weights_path): `$GENESIS_FID_WEIGHTS` when set, else
pytorch-fid's own place, `$TORCH_HOME/hub/checkpoints/pt_inception-2015-12-05-6726825d.pth`.
Without them the tests that need them are skipped with one line saying how to get them;
with `GENESIS_REQUIRE_FID_WEIGHTS=1` (set by `.ci/run`) that skip is a failure instead.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from genesis_dist.metrics.fid import WEIGHTS_ENV, WEIGHTS_FILE, weights_path

REQUIRE_ENV = "GENESIS_REQUIRE_FID_WEIGHTS"


def find_weights() -> Path | None:
    """The weights file the product would load, if it exists."""
    path = Path(weights_path())
    return path if path.is_file() else None


def seed_torch_home(folder: Path) -> Path:
    """Make `folder` a TORCH_HOME whose hub cache holds the FID weights (a symlink); returns it.

    Skips the calling test (fails it under GENESIS_REQUIRE_FID_WEIGHTS=1) when there are none.
    """
    weights = find_weights()
    if weights is None:
        message = (f"FID Inception weights not found at {weights_path()}: run `python -m pytorch_fid` once "
                   f"with internet access (it downloads {WEIGHTS_FILE} there) or set {WEIGHTS_ENV}=/path/to/a/copy")
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{message} ({REQUIRE_ENV}=1)", pytrace=False)
        pytest.skip(message)
    checkpoints = folder / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    link = checkpoints / WEIGHTS_FILE
    if not link.exists():
        os.symlink(weights.resolve(), link)
    return folder
