"""Typed configuration: schema, composition of config groups, dotlist overrides.

A run's config is `configs/train.yaml`, then the chosen group files
(`model=NAME` → `configs/model/NAME.yaml`, likewise `data=`, `experiment=`; each
a partial config with any sections), then `key.path=value` overrides (see
`load_config` for what a command line composes). Every value is checked against the dataclass
schema below; a mistake is one `ConfigError` line naming the key and what is
allowed.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

GROUPS = ("model", "data", "experiment")
DEMO_EXPERIMENT = "demo"  # what `python -m genesis_dist.train` with no group named runs


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
    num_iterations: int = 3  # Slot Attention's attention iterations


@dataclass
class ObjectiveConfig:
    name: str = "geco"  # geco | elbo | mse (Slot Attention's)
    goal: float = 0.5655  # GECO goal per pixel and channel
    step_size: Optional[float] = None  # λ; None: 1e-5 · 64² / (H·W)
    alpha: float = 0.99
    speedup: float = 10.0
    beta_init: float = 1.0
    beta_min: float = 1e-10
    beta_max: float = 1e10
    beta: float = 1.0  # fixed β of the elbo objective


@dataclass
class CurriculumConfig:
    """Schedules over training steps (training/curriculum.py); off by default (the papers'
    fixed settings)."""

    pixel_std_from: Optional[float] = None  # set: σ_x starts here, geometric to model.pixel_std over pixel_std_steps; objective.goal is stated at this σ and keeps its RMSE
    pixel_std_steps: List[int] = field(default_factory=lambda: [0, 0])  # [start, end] of the σ anneal
    mask_guidance: float = 0.0  # GENESIS-V2: weight of KL(stopgrad(attention masks) ‖ decoder masks), nats, not scaled by β
    mask_guidance_steps: List[int] = field(default_factory=lambda: [0, 0])  # held until the first, linear to 0 at the second; [0, 0]: throughout
    colour_hint: float = 0.0  # GENESIS-V2: weight of the colour-affinity loss on the IC-SBP embedding (models/genesis_v2.py), not scaled by β
    colour_hint_scale: float = 2.0  # colour distance scale s of its target: similarity(s²‖x_i − x_j‖²), images in [0, 1]
    colour_hint_steps: List[int] = field(default_factory=lambda: [0, 0])  # held until the first, linear to 0 at the second; [0, 0]: throughout


@dataclass
class OptimConfig:
    lr: float = 1e-4
    warmup_steps: int = 0  # linear learning-rate warm-up
    decay_every: Optional[int] = None  # multiply the learning rate by decay_rate every so many steps
    decay_rate: float = 0.5
    batch_size: int = 32  # images per worker and step (the papers' 32 on one GPU); the global batch is × workers
    global_batch_size: Optional[int] = None  # set: a fixed global batch, split evenly (batch_size is then ignored)
    lr_scaling: str = "none"  # none | linear | sqrt: scale lr by (global batch / lr_reference_batch)^1 or ^½
    lr_reference_batch: int = 32  # the global batch `lr` was tuned for
    steps: int = 500_000
    grad_clip: Optional[float] = None  # max global gradient norm
    precision: str = "auto"  # auto (bf16 autocast on GPUs, fp32 on CPUs) | fp32 | bf16 | fp16
    channels_last: bool = True  # NHWC activations: faster convolutions on CPU (oneDNN) and GPU
    compile: bool = False  # torch.compile the model (GPUs; compiling costs ~30 s on a CPU and did not pay there)


@dataclass
class DataConfig:
    name: str = "multi_dsprites"
    url: str = "data/multi_dsprites"  # any fsspec URL: local path, s3://, gs://
    train_split: str = "train"
    eval_split: str = "test"
    num_workers: Optional[int] = None  # DataLoader workers per training worker; None: the node's cores per training worker, less one
    shuffle_buffer: int = 1000
    generate_if_missing: bool = False  # make a small Multi-dSprites set locally
    generate_train: int = 2000
    generate_test: int = 200
    storage_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ScalingConfig:
    num_workers: Any = 1  # training workers (one per GPU): N, or [MIN, MAX] for elastic training (see worker_range)
    resize_interval_s: float = 60.0  # elastic: how often Ray Train looks for room to grow the worker group
    use_gpu: Optional[bool] = None  # None: use GPUs when the cluster has them
    cpus_per_worker: float = 1.0
    # Further Ray resources each training worker reserves, e.g. {accelerator_type:A10G: 0.001} to
    # pin workers to a node type, or the rehearsal's {rehearsal_gpu: 1} (tools/local_cluster.py);
    # CPUs and GPUs are cpus_per_worker and use_gpu.
    resources_per_worker: dict[str, float] = field(default_factory=dict)
    sync_batchnorm: bool = True  # BatchNorm statistics over all workers' batches (GENESIS) when > 1 worker


@dataclass
class RunConfig:
    name: str = ""  # empty: {model}-{data}[-{experiment}]
    storage_path: str = "runs"  # local path or s3:// URL
    seed: int = 0
    deterministic: bool = True
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    log_every: int = 50
    log_sample_keys: bool = False  # debug: each rank writes the sample keys of every step to {run}/sample_keys/
    image_every: int = 1000
    eval_images: int = 64
    max_failures: int = 2
    kill_at_step: Optional[int] = None  # fault injection for tests: the last rank SIGKILLs itself once here


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
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


@dataclass
class SweepConfig:
    """`python -m genesis_dist.tune`: how a sweep runs (the `sweep:` section of
    `configs/tune/NAME.yaml`, `sweep.key=value` overrides)."""

    name: str = ""  # sweep folder under run.storage_path; empty: tune-{space}-{run name}
    metric: str = "eval_ari_fg"  # what the scheduler and best.yaml rank trials by
    mode: str = "max"  # max | min
    scheduler: str = "asha"  # asha | fifo (every trial runs to the end)
    grace_period: int = 1  # reports (checkpoints) a trial makes before ASHA may stop it
    reduction_factor: int = 2  # ASHA keeps the best 1/reduction_factor at each rung
    num_samples: int = 1  # how often the grid is repeated (random choices drawn anew)
    max_concurrent_trials: Optional[int] = None  # None: as many as the cluster's CPUs / GPUs fit
    driver_cpus: float = 0.05  # each trial's driver (Tune sees only this; its workers reserve their own)


CHOICES = {
    "model.name": ("genesis_v2", "genesis", "genesis_s", "monet", "slot_attention", "bd_vae", "dc_vae"),
    "model.kernel": ("gaussian", "laplacian", "epanechnikov"),
    "objective.name": ("geco", "elbo", "mse"),
    "optim.precision": ("auto", "fp32", "bf16", "fp16"),
    "optim.lr_scaling": ("none", "linear", "sqrt"),
}
SWEEP_CHOICES = {"mode": ("max", "min"), "scheduler": ("asha", "fifo")}

# Keys that may differ when a run is resumed: how long it trains, how it is logged and
# where its workers run. Anything else changes what is trained, so resuming a run
# folder whose stored config differs elsewhere is refused (see `resume_conflicts`).
MAY_CHANGE_ON_RESUME = (
    "optim.steps",
    "optim.precision",
    "data.url",
    "data.num_workers",
    "data.storage_options",
    "data.generate_if_missing",
    "data.generate_train",
    "data.generate_test",
    "scaling",
    "run.storage_path",
    "run.checkpoint_every",
    "run.keep_checkpoints",
    "run.log_every",
    "run.image_every",
    "run.eval_images",
    "run.max_failures",
    "run.kill_at_step",
    "run.log_sample_keys",
)


def find_config_dir() -> Path:
    """The folder holding `train.yaml` and the group folders.

    `GENESIS_DIST_CONFIGS` wins; then the copy installed inside the package
    (`pip install .` puts the repository's top-level `configs/` there); then the
    repository's `configs/` beside the package (a source checkout or editable install).
    """
    env = os.environ.get("GENESIS_DIST_CONFIGS")
    if env:
        return Path(env).expanduser()
    package = Path(__file__).resolve().parent
    for candidate in (package / "configs", package.parent / "configs"):
        if (candidate / "train.yaml").is_file():
            return candidate
    return package.parent / "configs"


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
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        cfg = OmegaConf.load(path)
    except OSError as err:
        raise ConfigError(f"config file unreadable: {path}: {err.strerror or err}") from None
    except Exception as err:  # YAML syntax errors carry several lines
        raise ConfigError(f"{path}: not valid YAML: {str(err).splitlines()[0]}") from None
    if cfg is None or not isinstance(cfg, DictConfig):
        raise ConfigError(f"{path}: expected a mapping of config sections")
    return cfg


def _group_file(group: str, name: str, config_dir: Path) -> DictConfig:
    """`configs/GROUP/NAME.yaml`: a partial TrainConfig (any sections)."""
    path = config_dir / group / f"{name}.yaml"
    if not path.exists():
        available = sorted(p.stem for p in (config_dir / group).glob("*.yaml"))
        raise ConfigError(f"{group}={name}: no such config; available: {', '.join(available) or 'none'}")
    return _load_yaml(path)


def _check_choices(cfg: DictConfig, prefix: str = "") -> None:
    for key, allowed in CHOICES.items():
        if not key.startswith(prefix):
            continue
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            raise ConfigError(f"{key}={value!r} is not allowed; choose one of: {', '.join(allowed)}")


def validate_model(cfg: DictConfig) -> None:
    """Check the `model` section of a TrainConfig; raises ConfigError."""
    _check_choices(cfg, "model.")
    size = cfg.model.img_size
    if size < 16 or size & (size - 1):
        raise ConfigError(f"model.img_size={size}: must be a power of two ≥ 16")
    if cfg.model.num_slots < 2:
        raise ConfigError(f"model.num_slots={cfg.model.num_slots}: must be ≥ 2")


def worker_range(scaling: Any) -> tuple[int, int]:
    """(min, max) training workers of a ScalingConfig: `num_workers: N` is (N, N), a fixed
    world; `num_workers: [MIN, MAX]` trains elastically (Ray Train starts with as many as
    the cluster fits, at least MIN, and grows towards MAX). Raises ConfigError."""
    value = shown = scaling.num_workers
    value = OmegaConf.to_container(value) if isinstance(value, ListConfig) else value
    if isinstance(value, bool) or not isinstance(value, (int, list, tuple)):
        raise ConfigError(f"scaling.num_workers={value!r}: expected a number of workers or [MIN, MAX]")
    if isinstance(value, int):
        value = [value, value]
    if len(value) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ConfigError(f"scaling.num_workers={value!r}: expected a number of workers or [MIN, MAX]")
    low, high = value
    if not 1 <= low <= high:
        raise ConfigError(f"scaling.num_workers={shown}: " + ("must be ≥ 1" if low == high else "need 1 ≤ MIN ≤ MAX"))
    return low, high


def validate(cfg: DictConfig) -> None:
    """Check enumerated choices and cross-field rules of a TrainConfig; raises ConfigError."""
    _check_choices(cfg)
    validate_model(cfg)
    low, high = worker_range(cfg.scaling)
    global_batch = cfg.optim.global_batch_size
    uneven = [w for w in range(low, high + 1) if global_batch is not None and global_batch % w]
    if uneven:
        raise ConfigError(f"optim.global_batch_size={global_batch} must be divisible by "
                          f"scaling.num_workers={cfg.scaling.num_workers}"
                          + (f" (every world size from {low} to {high}; {uneven[0]} does not divide it)"
                             if low < high else ""))
    for name, amount in cfg.scaling.resources_per_worker.items():
        if name in ("CPU", "GPU"):
            raise ConfigError(f"scaling.resources_per_worker.{name}: set scaling."
                              + ("cpus_per_worker" if name == "CPU" else "use_gpu") + " instead")
        if amount < 0:
            raise ConfigError(f"scaling.resources_per_worker.{name}={amount:g}: must be ≥ 0")
    if cfg.data.num_workers is not None and cfg.data.num_workers < 0:
        raise ConfigError("data.num_workers must be ≥ 0 (or null: the node's cores per training worker)")
    if cfg.run.log_sample_keys and "://" in cfg.run.storage_path and not cfg.run.storage_path.startswith("file://"):
        raise ConfigError(f"run.log_sample_keys=true writes local files; run.storage_path={cfg.run.storage_path} "
                          "is not a local folder")
    for key in ("optim.batch_size", "optim.lr_reference_batch"):
        if OmegaConf.select(cfg, key) < 1:
            raise ConfigError(f"{key} must be ≥ 1")
    for key in ("optim.lr", "optim.steps", "run.checkpoint_every", "run.log_every"):
        if OmegaConf.select(cfg, key) <= 0:
            raise ConfigError(f"{key} must be > 0")
    # Slot Attention has no likelihood or KL for GECO / the ELBO; the others have no MSE objective.
    if (cfg.model.name == "slot_attention") != (cfg.objective.name == "mse"):
        raise ConfigError(
            f"objective.name={cfg.objective.name} does not train model.name={cfg.model.name}: "
            "slot_attention trains with objective.name=mse, every other model with geco or elbo"
        )
    validate_curriculum(cfg)
    if not _RUN_NAME.fullmatch(cfg.run.name):
        raise ConfigError(f"run.name={cfg.run.name!r}: use letters, digits, '.', '_' and '-' only")


def validate_curriculum(cfg: DictConfig) -> None:
    """Cross-field rules of the `curriculum:` section; raises ConfigError."""
    cur = cfg.curriculum
    for key in ("pixel_std_steps", "mask_guidance_steps", "colour_hint_steps"):
        steps = list(cur[key])
        if len(steps) != 2 or steps[0] < 0 or steps[1] < steps[0]:
            raise ConfigError(f"curriculum.{key}={steps}: give [start, end] with 0 ≤ start ≤ end")
    for key in ("mask_guidance", "colour_hint"):
        if cur[key] < 0:
            raise ConfigError(f"curriculum.{key}={cur[key]}: must be ≥ 0")
        if cur[key] > 0 and cfg.model.name != "genesis_v2":
            raise ConfigError(f"curriculum.{key} needs IC-SBP attention: model.name=genesis_v2, not {cfg.model.name}")
    if cur.colour_hint_scale <= 0:
        raise ConfigError(f"curriculum.colour_hint_scale={cur.colour_hint_scale}: must be > 0")
    if cur.pixel_std_from is not None:
        if cur.pixel_std_from <= 0 or cfg.model.pixel_std <= 0:
            raise ConfigError("curriculum.pixel_std_from and model.pixel_std must be > 0")
        if cfg.objective.name == "mse":
            raise ConfigError("curriculum.pixel_std_from: objective.name=mse has no pixel σ")
        # GECO's goal is stated at the starting σ; it must allow some reconstruction error there.
        perfect = 0.5 * math.log(2 * math.pi) + math.log(cur.pixel_std_from)
        if cfg.objective.name == "geco" and cfg.objective.goal < perfect:
            raise ConfigError(f"objective.goal={cfg.objective.goal:g} is below the NLL of a perfect reconstruction at "
                              f"curriculum.pixel_std_from={cur.pixel_std_from:g} ({perfect:.4f} nats per pixel and channel)")
    if cfg.optim.compile and (cur.pixel_std_from is not None or cur.mask_guidance > 0 or cur.colour_hint > 0):
        raise ConfigError("optim.compile=true with a curriculum: the compiled model would recompile at every "
                          "scheduled step; set one of them off")


_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


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


def _split_overrides(overrides: list[str]) -> tuple[dict[str, str], list[str]]:
    """`group=name` selections and `key.path=value` overrides, in command-line order."""
    groups: dict[str, str] = {}
    values: list[str] = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value (e.g. optim.lr=1e-4 or model=genesis)")
        key, value = item.split("=", 1)
        if "." not in key and key in GROUPS:
            groups[key] = value
        elif "." not in key and key in TrainConfig.__dataclass_fields__:
            raise ConfigError(f"override {item!r}: {key} is a section; set one of its keys, e.g. {key}.<key>=value")
        else:
            values.append(item)
    return groups, values


def _apply_dotlist(cfg: DictConfig, values: list[str]) -> DictConfig:
    try:
        dotlist = OmegaConf.from_dotlist(values)
    except OmegaConfBaseException as err:
        raise ConfigError(f"overrides: {str(err).splitlines()[0]}") from None
    return _merge(cfg, dotlist, "override")


def per_worker_batch(optim: Any, world_size: int) -> int:
    """Images each of `world_size` workers takes per step: `optim.batch_size`, or an even
    share of `optim.global_batch_size` when that is set."""
    if optim.global_batch_size is not None:
        return optim.global_batch_size // world_size
    return optim.batch_size


def effective_lr(optim: Any, world_size: int) -> float:
    """`optim.lr` scaled for the global batch the workers make together: unchanged
    (`lr_scaling=none`), × global/reference (`linear`, Goyal et al. 2017) or × its square
    root (`sqrt`), with `lr_reference_batch` the batch `lr` was tuned for."""
    ratio = per_worker_batch(optim, world_size) * world_size / optim.lr_reference_batch
    return optim.lr * {"none": 1.0, "linear": ratio, "sqrt": ratio**0.5}[optim.lr_scaling]


def derived_run_name(model: str, data: str, experiment: str | None) -> str:
    """`{model}-{data}[-{experiment}]`, e.g. `genesis-shapestacks`."""
    return "-".join([model, data] + ([experiment] if experiment else []))


def load_config(overrides: list[str] | None = None, config_dir: str | Path | None = None,
                base_file: str | Path | None = None) -> DictConfig:
    """Compose a TrainConfig from the command line's words.

    Later sources win: schema defaults → `train.yaml` → `model/NAME.yaml` (the
    published architecture) → `data/NAME.yaml` (the dataset's resolution, K, GECO goal,
    stop pixels) → `experiment/NAME.yaml` → `key=value` overrides.

    - No group named (`[]`, or only `key=value`s): the embedded demo, `experiment=demo`.
    - `model=` and/or `data=` named without `experiment=`: the paper setting of that
      model on that dataset (`train.yaml` holds the papers' optimiser settings and
      the default model and data).
    - `experiment=NAME`: its `defaults:` choose model and data unless named too.
    - `base_file`: a resolved config (a run's `config.yaml`, a sweep's `best.yaml`)
      replaces the composition; only `key=value` overrides may follow.

    Without `run.name`, the run is named `{model}-{data}[-{experiment}]`.
    Returns a validated, read-only DictConfig with the TrainConfig schema.
    """
    config_dir = Path(config_dir) if config_dir else find_config_dir()
    cli_groups, values = _split_overrides(list(overrides or []))
    if base_file is not None:
        if cli_groups:
            raise ConfigError(f"--config {base_file}: group selections ({', '.join(cli_groups)}=) can't be combined with it; "
                              "use key=value overrides")
        cfg = _merge(OmegaConf.structured(TrainConfig), _load_yaml(Path(base_file)), str(base_file))
        cfg = _apply_dotlist(cfg, values)
        validate(cfg)
        OmegaConf.set_readonly(cfg, True)
        return cfg
    base_path = config_dir / "train.yaml"
    base, groups = _split_defaults(_load_yaml(base_path), str(base_path))
    experiment_name = cli_groups.get("experiment") or (None if cli_groups else DEMO_EXPERIMENT)
    experiment = None
    if experiment_name is not None:
        experiment, experiment_groups = _split_defaults(
            _group_file("experiment", experiment_name, config_dir), f"experiment={experiment_name}"
        )
        groups.update(experiment_groups)
    groups.update({k: v for k, v in cli_groups.items() if k != "experiment"})
    cfg = _merge(OmegaConf.structured(TrainConfig), base, str(base_path))
    for group in ("model", "data"):
        if group in groups:
            cfg = _merge(cfg, _group_file(group, groups[group], config_dir), f"{group}={groups[group]}")
    if experiment is not None:
        cfg = _merge(cfg, experiment, f"experiment={experiment_name}")
    cfg = _apply_dotlist(cfg, values)
    if not cfg.run.name:
        cfg.run.name = derived_run_name(cfg.model.name, cfg.data.name, experiment_name)
    validate(cfg)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def differing_keys(a: DictConfig | dict, b: DictConfig | dict, ignore: tuple[str, ...] = ()) -> list[str]:
    """Dotted keys whose values differ between two configs (leaves only), skipping
    keys equal to or under any of `ignore`."""
    flat_a, flat_b = _flatten(_container(a)), _flatten(_container(b))
    skipped = lambda key: any(key == p or key.startswith(p + ".") for p in ignore)  # noqa: E731
    return sorted(k for k in set(flat_a) | set(flat_b) if not skipped(k) and flat_a.get(k) != flat_b.get(k))


def resume_conflicts(stored: DictConfig | dict, requested: DictConfig | dict) -> list[str]:
    """Keys outside `MAY_CHANGE_ON_RESUME` in which a run's stored config and the
    requested one differ: a non-empty answer means it is another run."""
    return differing_keys(stored, requested, MAY_CHANGE_ON_RESUME)


def _container(cfg: DictConfig | dict) -> dict:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def load_eval_config(overrides: list[str] | None = None, config_dir: str | Path | None = None) -> DictConfig:
    """EvalConfig from `configs/eval.yaml` plus `key=value` overrides (one-line errors)."""
    config_dir = Path(config_dir) if config_dir else find_config_dir()
    cfg = OmegaConf.structured(EvalConfig)
    path = config_dir / "eval.yaml"
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
    """A validated ModelConfig: the published architecture `configs/model/NAME.yaml`
    (default genesis_v2) plus `key=value` overrides of its keys."""
    name = name or "genesis_v2"
    cfg = _merge(OmegaConf.structured(TrainConfig), _group_file("model", name, find_config_dir()), f"model={name}")
    cfg = _apply_dotlist(cfg, [f"model.{o}" for o in overrides or []])
    validate_model(cfg)
    OmegaConf.set_readonly(cfg, True)
    return cfg.model
