"""Models: GENESIS-V2 (default), GENESIS and GENESIS-S, and the baselines MONet-G,
Slot Attention, BD-VAE and DC-VAE, built from a ModelConfig."""
from __future__ import annotations

from typing import Any

from torch import nn

from .genesis_v2 import GenesisV2
from .outputs import ModelOutput, SampleOutput
from .slot_attention import NotGenerativeError

def build_model(cfg: Any) -> nn.Module:
    """The model a validated ModelConfig describes, every value taken from it: a TrainConfig's
    `model` section, `config.model_config(name=...)` (the published architecture plus
    overrides), or a `schema.ModelConfig` (torch-only code). Keys that do not apply to the
    named model are ignored; nothing is filled in here."""
    if isinstance(cfg, dict):
        raise TypeError("build_model takes a validated ModelConfig (genesis_dist.config.model_config(name=...), "
                        "a TrainConfig's model section, or genesis_dist.schema.ModelConfig), not a dict")
    name = cfg.name
    if name == "genesis_v2":
        return GenesisV2(
            img_size=cfg.img_size, num_slots=cfg.num_slots, latent_dim=cfg.latent_dim, kernel=cfg.kernel,
            embedding_dim=cfg.embedding_dim, feature_dim=cfg.feature_dim, encoder_filters=cfg.encoder_filters,
            head_filters=cfg.head_filters, decoder_filters=cfg.decoder_filters, mlp_hidden=cfg.mlp_hidden,
            prior_hidden=cfg.prior_hidden, pixel_std=cfg.pixel_std, mask_loss=cfg.mask_loss,
            stop_pixels=cfg.stop_pixels,
        )
    if name == "genesis":
        from .genesis import Genesis

        return Genesis(img_size=cfg.img_size, num_slots=cfg.num_slots, mask_latent_dim=cfg.latent_dim,
                       component_latent_dim=cfg.component_latent_dim, pixel_std=cfg.pixel_std,
                       prior_hidden=cfg.prior_hidden)
    if name == "genesis_s":
        from .genesis import GenesisS

        return GenesisS(img_size=cfg.img_size, num_slots=cfg.num_slots, latent_dim=cfg.latent_dim,
                        pixel_std=cfg.pixel_std, prior_hidden=cfg.prior_hidden)
    if name == "monet":
        from .monet import MONetG

        return MONetG(img_size=cfg.img_size, num_slots=cfg.num_slots, latent_dim=cfg.component_latent_dim,
                      pixel_std=cfg.pixel_std)
    if name == "slot_attention":
        from .slot_attention import SlotAttentionAutoEncoder

        return SlotAttentionAutoEncoder(
            img_size=cfg.img_size, num_slots=cfg.num_slots, slot_dim=cfg.latent_dim, mlp_hidden=cfg.mlp_hidden,
            iterations=cfg.num_iterations, encoder_filters=cfg.encoder_filters, decoder_filters=cfg.decoder_filters,
        )
    if name in ("bd_vae", "dc_vae"):
        from .vae import SingleLatentVAE

        # One latent per image: num_slots does not apply.
        return SingleLatentVAE(img_size=cfg.img_size, latent_dim=cfg.latent_dim,
                               decoder="broadcast" if name == "bd_vae" else "deconv", pixel_std=cfg.pixel_std)
    raise ValueError(f"unknown model {name!r}")


def is_generative(model: nn.Module) -> bool:
    """Whether `model.sample` draws images (False for Slot Attention, whose `sample`
    raises `NotGenerativeError`): evaluation skips FID and the ELBO for such models."""
    return getattr(model, "generative", True)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = [
    "build_model", "count_parameters", "is_generative", "GenesisV2", "ModelOutput", "SampleOutput",
    "NotGenerativeError",
]
