"""Fixtures of the data-layer tests: the real raw samples in tests/fixtures and small shard sets."""
from __future__ import annotations

from pathlib import Path

import pytest

from data_helpers import FIXTURES


@pytest.fixture(scope="session")
def raw_samples() -> Path:
    """The real raw samples in the repository (read-only): sketchy/, apc/, shapestacks/."""
    return FIXTURES


@pytest.fixture(scope="session")
def mds_shards(tmp_path_factory) -> str:
    """A local Multi-dSprites set: train 240 images in 6 shards of 40, test 50 in 2 shards."""
    from genesis_dist.data.convert import convert_dataset
    from genesis_dist.data.formats.multi_dsprites import MultiDSprites

    out = str(tmp_path_factory.mktemp("mds") / "shards")
    convert_dataset(MultiDSprites({"train": 240, "test": 50}), out, shard_samples=40, progress=False)
    return out
