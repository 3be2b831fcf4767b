"""Models for tests, built the one way the package builds them: `build_model` of a validated
ModelConfig (the published architecture of `configs/model/NAME.yaml` plus the keys given)."""
from __future__ import annotations

from genesis_dist.config import model_config
from genesis_dist.models import build_model


def make_model(name: str = "genesis_v2", **keys):
    """`build_model(model_config([f"{key}={value}", ...], name=name))`."""
    overrides = [f"{key}={'null' if value is None else value}" for key, value in keys.items()]
    return build_model(model_config(overrides, name=name))
