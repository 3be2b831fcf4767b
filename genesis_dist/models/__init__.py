"""Models: GENESIS-V2 (default), GENESIS and GENESIS-S, and the baselines MONet-G,
Slot Attention, BD-VAE and DC-VAE, built from a ModelConfig."""
from __future__ import annotations

from typing import Any

from torch import nn

from .genesis_v2 import GenesisV2
from .outputs import ModelOutput, SampleOutput
from .slot_attention import NotGenerativeError

MODEL_NAMES = ("genesis_v2", "genesis", "genesis_s", "monet", "slot_attention", "bd_vae", "dc_vae")


def build_model(cfg: Any) -> nn.Module:
    """Build the model a ModelConfig (or any mapping with its keys) describes."""
    get = cfg.get if hasattr(cfg, "get") else lambda k, d=None: getattr(cfg, k, d)
    name = get("name", "genesis_v2")
    common = dict(img_size=get("img_size", 64), num_slots=get("num_slots", 7), pixel_std=get("pixel_std", 0.7))
    if name == "genesis_v2":
        return GenesisV2(
            **common,
            latent_dim=get("latent_dim", 64),
            kernel=get("kernel", "gaussian"),
            embedding_dim=get("embedding_dim", 8),
            feature_dim=get("feature_dim", 128),
            encoder_filters=get("encoder_filters", 64),
            head_filters=get("head_filters", 64),
            decoder_filters=get("decoder_filters", 64),
            mlp_hidden=get("mlp_hidden", 128),
            prior_hidden=get("prior_hidden", 256),
            mask_loss=get("mask_loss", False),
            stop_pixels=get("stop_pixels", None),
        )
    if name in ("genesis", "genesis_s"):
        from .genesis import Genesis, GenesisS

        if name == "genesis":
            return Genesis(
                **common,
                mask_latent_dim=get("latent_dim", 64),
                component_latent_dim=get("component_latent_dim", 16),
            )
        return GenesisS(**common, latent_dim=get("latent_dim", 64))
    if name == "monet":
        from .monet import MONetG

        return MONetG(**common, latent_dim=get("component_latent_dim", 16))
    if name == "slot_attention":
        from .slot_attention import SlotAttentionAutoEncoder

        return SlotAttentionAutoEncoder(
            img_size=common["img_size"],
            num_slots=common["num_slots"],
            slot_dim=get("latent_dim", 64),
            mlp_hidden=get("mlp_hidden", 128),
            iterations=get("num_iterations", 3),
            encoder_filters=get("encoder_filters", 64),
            decoder_filters=get("decoder_filters", 32),
        )
    if name in ("bd_vae", "dc_vae"):
        from .vae import SingleLatentVAE

        # One latent per image: num_slots does not apply.
        decoder = "broadcast" if name == "bd_vae" else "deconv"
        return SingleLatentVAE(common["img_size"], get("latent_dim", 64), decoder, common["pixel_std"])
    raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}")


def is_generative(model: nn.Module) -> bool:
    """Whether `model.sample` draws images (False for Slot Attention, whose `sample`
    raises `NotGenerativeError`): evaluation skips FID and the ELBO for such models."""
    return getattr(model, "generative", True)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = [
    "build_model", "count_parameters", "is_generative", "GenesisV2", "ModelOutput", "SampleOutput",
    "NotGenerativeError", "MODEL_NAMES",
]
