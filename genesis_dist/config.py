"""Typed configuration: schema, composition of config groups, dotlist overrides.

A run's config is `configs/train.yaml`, then the chosen group files
(`model=NAME` → `configs/model/NAME.yaml`, likewise `data=`, `experiment=`),
then `key.path=value` overrides. Every value is checked against the dataclass
schema below; a mistake is one `ConfigError` line naming the key and what is
allowed.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

CONFIG_DIR = Path(os.environ.get("GENESIS_DIST_CONFIGS", Path(__file__).resolve().parents[1] / "configs"))
GROUPS = ("model", "data", "experiment")


class ConfigError(ValueError):
    """A user mistake in a config file or override; the message is one line."""


@dataclass
class ModelConfig:
    name: str = "genesis_v2"
    img_size: int = 64
    num_slots: int = 7
    latent_dim: int = 64
    component_latent_dim: int = 16  # GENESIS z^c
    kernel: str = "gaussian"  # GENESIS-V2 IC-SBP kernel
    embedding_dim: int = 8
    feature_dim: int = 128
    encoder_filters: int = 64
    head_filters: int = 64
    decoder_filters: int = 64
    mlp_hidden: int = 128
    prior_hidden: int = 256
    pixel_std: float = 0.7
    mask_loss: bool = False
    stop_pixels: Optional[float] = None  # flexible number of slots at test time


@dataclass
class ObjectiveConfig:
    name: str = "geco"  # geco | elbo
    goal: float = 0.5655  # GECO goal per pixel and channel
    step_size: Optional[float] = None  # λ; None: 1e-5 · 64² / (H·W)
    alpha: float = 0.99
    speedup: float = 10.0
    beta_init: float = 1.0
    beta_min: float = 1e-10
    beta_max: float = 1e10
    beta: float = 1.0  # fixed β of the elbo objective


@dataclass
class OptimConfig:
    lr: float = 1e-4
    batch_size: int = 32  # global batch, split evenly across workers
    steps: int = 500_000
    grad_clip: Optional[float] = None  # max global gradient norm
    precision: str = "fp32"  # fp32 | bf16 | fp16
    channels_last: bool = True  # NHWC activations: faster convolutions on CPU (oneDNN) and GPU


@dataclass
class DataConfig:
    name: str = "multi_dsprites"
    url: str = "data/multi_dsprites"  # any fsspec URL: local path, s3://, gs://
    train_split: str = "train"
    eval_split: str = "test"
    num_workers: int = 2  # DataLoader workers per training worker
    shuffle_buffer: int = 1000
    generate_if_missing: bool = False  # make a small Multi-dSprites set locally
    generate_train: int = 2000
    generate_test: int = 200
    storage_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ScalingConfig:
    num_workers: int = 1
    use_gpu: Optional[bool] = None  # None: use GPUs when the cluster has them
    cpus_per_worker: float = 1.0


@dataclass
class RunConfig:
    name: str = "genesis-v2-default"
    storage_path: str = "runs"  # local path or s3:// URL
    seed: int = 0
    deterministic: bool = True
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    log_every: int = 50
    image_every: int = 1000
    eval_images: int = 64
    max_failures: int = 2
    kill_at_step: Optional[int] = None  # fault injection for tests: the last rank SIGKILLs itself once here


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    run: RunConfig = field(default_factory=RunConfig)


@dataclass
class EvalConfig:
    """`python -m genesis_dist.evaluate`: the evaluation actor pool (configs/eval.yaml)."""

    run: str = ""  # run folder URL: {run.storage_path}/{run.name}
    watch: bool = False  # keep polling for new checkpoints until the run writes finished.json
    poll_seconds: float = 30.0
    actors: int = 2
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    batch_size: int = 64
    fid_samples: int = 10_000  # model samples vs as many test images (papers: 10,000)
    segmentation_images: int = 320  # papers: 320 test images
    elbo_images: Optional[int] = None  # test images for ELBO / err / KL; None: the whole test split
    stop_pixels: Optional[float] = None  # flexible number of slots (GENESIS-V2)
    seed: int = 0  # posterior and prior noise, the same for every checkpoint
    start_timeout_s: float = 600.0  # an actor that has not started by then (no resources) is an error
    checkpoint_timeout_s: float = 3600.0  # an evaluation running longer is killed and reported failed
    stats_cache: str = "~/.cache/genesis_dist/fid"  # test-set FID statistics, keyed by manifest sha256
    storage_options: dict[str, Any] = field(default_factory=dict)


CHOICES = {
    "model.name": ("genesis_v2", "genesis", "genesis_s"),
    "model.kernel": ("gaussian", "laplacian", "epanechnikov"),
    "objective.name": ("geco", "elbo"),
    "optim.precision": ("fp32", "bf16", "fp16"),
}


def _one_line(err: OmegaConfBaseException, source: str) -> str:
    key = getattr(err, "full_key", None) or "?"
    msg = str(err).splitlines()[0]
    if isinstance(err, ConfigKeyError):
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        root = OmegaConf.structured(TrainConfig)
        section = OmegaConf.select(root, parent) if parent else root
        if isinstance(section, DictConfig):
            msg = f"unknown key; allowed: {', '.join(section.keys())}"
    return f"{source}: {key}: {msg}"


def _merge(base: DictConfig, other: Any, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, other)
    except OmegaConfBaseException as err:
        raise ConfigError(_one_line(err, source)) from None


def _load_yaml(path: Path) -> DictConfig:
    try:
        cfg = OmegaConf.load(path)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except Exception as err:  # YAML syntax errors carry several lines
        raise ConfigError(f"{path}: not valid YAML: {str(err).splitlines()[0]}") from None
    return cfg


def _group_file(group: str, name: str, config_dir: Path) -> DictConfig:
    path = config_dir / group / f"{name}.yaml"
    if not path.exists():
        available = sorted(p.stem for p in (config_dir / group).glob("*.yaml"))
        raise ConfigError(f"{group}={name}: no such config; available: {', '.join(available) or 'none'}")
    cfg = _load_yaml(path)
    # Group files hold their own section (model/data) or, for experiments, any sections.
    return cfg if group == "experiment" else OmegaConf.create({group: cfg})


def validate(cfg: DictConfig) -> None:
    """Check enumerated choices and cross-field rules; raises ConfigError."""
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            raise ConfigError(f"{key}={value!r} is not allowed; choose one of: {', '.join(allowed)}")
    size = cfg.model.img_size
    if size < 16 or size & (size - 1):
        raise ConfigError(f"model.img_size={size}: must be a power of two ≥ 16")
    if cfg.model.num_slots < 2:
        raise ConfigError(f"model.num_slots={cfg.model.num_slots}: must be ≥ 2")
    if cfg.optim.batch_size % cfg.scaling.num_workers:
        raise ConfigError(
            f"optim.batch_size={cfg.optim.batch_size} must be divisible by scaling.num_workers={cfg.scaling.num_workers}"
        )
    for key in ("optim.lr", "optim.steps", "scaling.num_workers", "run.checkpoint_every", "run.log_every"):
        if OmegaConf.select(cfg, key) <= 0:
            raise ConfigError(f"{key} must be > 0")


def _split_defaults(cfg: DictConfig, source: str) -> tuple[DictConfig, dict[str, str]]:
    """Separate a file's `defaults:` group selections from its values."""
    cfg = cfg.copy()
    defaults = cfg.pop("defaults", None)
    if defaults is None:
        return cfg, {}
    selections = OmegaConf.to_container(defaults)
    if not isinstance(selections, dict) or not set(selections) <= set(GROUPS):
        raise ConfigError(f"{source}: defaults must map groups ({', '.join(GROUPS)}) to config names")
    return cfg, {k: str(v) for k, v in selections.items()}


def load_config(overrides: list[str] | None = None, config_dir: str | Path | None = None) -> DictConfig:
    """Compose a TrainConfig; later sources win:

    schema defaults → `train.yaml` → `model/NAME.yaml` → `data/NAME.yaml` →
    `experiment/NAME.yaml` → `key=value` overrides. Group names come from the
    command line (`model=genesis`), else the experiment's `defaults:`, else
    `train.yaml`'s `defaults:`.

    Args:
        overrides: e.g. `["model=genesis", "data=shapestacks", "optim.lr=1e-4"]`.
    Returns: a validated, read-only DictConfig with the TrainConfig schema.
    """
    config_dir = Path(config_dir) if config_dir else CONFIG_DIR
    cli_groups: dict[str, str] = {}
    values: list[str] = []
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value (e.g. optim.lr=1e-4 or model=genesis)")
        key, value = item.split("=", 1)
        if "." not in key and key in GROUPS:
            cli_groups[key] = value
        elif "." not in key and key in TrainConfig.__dataclass_fields__:
            raise ConfigError(f"override {item!r}: {key} is a section; set one of its keys, e.g. {key}.<key>=value")
        else:
            values.append(item)
    base_path = config_dir / "train.yaml"
    base, groups = (_split_defaults(_load_yaml(base_path), str(base_path)) if base_path.exists()
                    else (OmegaConf.create({}), {}))
    groups.update({k: v for k, v in cli_groups.items() if k == "experiment"})
    experiment = None
    if "experiment" in groups:
        experiment, experiment_groups = _split_defaults(
            _group_file("experiment", groups["experiment"], config_dir), f"experiment={groups['experiment']}"
        )
        groups.update(experiment_groups)
    groups.update(cli_groups)
    cfg = _merge(OmegaConf.structured(TrainConfig), base, str(base_path))
    for group in ("model", "data"):
        if group in groups:
            cfg = _merge(cfg, _group_file(group, groups[group], config_dir), f"{group}={groups[group]}")
    if experiment is not None:
        cfg = _merge(cfg, experiment, f"experiment={groups['experiment']}")
    try:
        dotlist = OmegaConf.from_dotlist(values)
    except OmegaConfBaseException as err:
        raise ConfigError(f"overrides: {str(err).splitlines()[0]}") from None
    cfg = _merge(cfg, dotlist, "override")
    validate(cfg)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def load_eval_config(overrides: list[str] | None = None, config_dir: str | Path | None = None) -> DictConfig:
    """EvalConfig from `configs/eval.yaml` plus `key=value` overrides (one-line errors)."""
    config_dir = Path(config_dir) if config_dir else CONFIG_DIR
    cfg = OmegaConf.structured(EvalConfig)
    path = config_dir / "eval.yaml"
    if path.exists():
        cfg = _merge(cfg, _load_yaml(path), str(path))
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value (e.g. actors=4)")
    try:
        dotlist = OmegaConf.from_dotlist(list(overrides or []))
    except OmegaConfBaseException as err:
        raise ConfigError(f"overrides: {str(err).splitlines()[0]}") from None
    try:
        cfg = OmegaConf.merge(cfg, dotlist)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        msg = str(err).splitlines()[0]
        if isinstance(err, ConfigKeyError):
            msg = f"unknown key; allowed: {', '.join(OmegaConf.structured(EvalConfig).keys())}"
        raise ConfigError(f"override: {key}: {msg}") from None
    if cfg.actors < 1:
        raise ConfigError(f"actors={cfg.actors}: must be ≥ 1")
    OmegaConf.set_readonly(cfg, True)
    return cfg


def model_config(overrides: list[str] | None = None, name: str | None = None) -> DictConfig:
    """A validated ModelConfig from `configs/model/NAME.yaml` plus `key=value` overrides."""
    items = ([f"model={name}"] if name else []) + [f"model.{o}" for o in overrides or []]
    return load_config(items).model
