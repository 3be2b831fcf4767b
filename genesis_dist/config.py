"""Configuration: composition of config groups and overrides, validated against the
schema (`genesis_dist/schema.py`).

A run's config is `configs/train.yaml`, then the chosen group files
(`model=NAME` → `configs/model/NAME.yaml`, likewise `data=`, `experiment=`; each
a partial config with any sections), then `key.path=value` overrides (see
`load_config` for what a command line composes). Every value is checked against the
schema; a mistake is one `ConfigError` line naming the key and what is allowed.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from .objectives import goal_rmse
from .schema import (MODEL_NAMES, CurriculumConfig, DataConfig, EvalConfig, ModelConfig, ObjectiveConfig,  # noqa: F401
                     OptimConfig, RunConfig, ScalingConfig, SweepConfig, TrainConfig)

GROUPS = ("model", "data", "experiment")
DEMO_EXPERIMENT = "demo"  # what `python -m genesis_dist.train` with no group named runs


class ConfigError(ValueError):
    """A user mistake in a config file or override; the message is one line."""


CHOICES = {
    "model.name": MODEL_NAMES,
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
    "run.log_sample_keys",
)


def find_config_dir() -> Path:
    """The folder holding `train.yaml` and the group folders.

    `GENESIS_DIST_CONFIGS` wins; else the package's own `configs/` (the repository's
    top-level `configs` links to it; `pip install .` ships it inside the package).
    """
    env = os.environ.get("GENESIS_DIST_CONFIGS")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parent / "configs"


def _one_line(err: OmegaConfBaseException, source: str, root: DictConfig, prefix: str) -> str:
    """`source: key: what is wrong`, naming the keys allowed where the key is unknown."""
    key = getattr(err, "full_key", None) or "?"
    msg = str(err).splitlines()[0]
    if isinstance(err, ConfigKeyError):
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        section = OmegaConf.select(root, parent) if parent else root
        if isinstance(section, DictConfig):
            msg = f"unknown key; allowed: {', '.join(section.keys())}"
    return f"{source}: {prefix}{key}: {msg}"


def merge_config(base: DictConfig, other: Any, source: str, prefix: str = "") -> DictConfig:
    """`base` (a structured config: the schema checks every value) with `other` merged in:
    a mapping, or `key=value` strings. A mistake is one ConfigError line naming `source`
    and the key (`prefix` + its dotted path), and for an unknown key the keys allowed there."""
    try:
        if isinstance(other, (list, tuple)):
            other = OmegaConf.from_dotlist(list(other))
        return OmegaConf.merge(base, other)
    except OmegaConfBaseException as err:
        if not hasattr(err, "full_key") or err.full_key is None:
            raise ConfigError(f"{source}: {str(err).splitlines()[0]}") from None
        raise ConfigError(_one_line(err, source, base, prefix)) from None


def load_yaml(path: Path) -> DictConfig:
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
    return load_yaml(path)


def _check_choices(cfg: DictConfig, prefix: str = "") -> None:
    for key, allowed in CHOICES.items():
        if not key.startswith(prefix):
            continue
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            raise ConfigError(f"{key}={value!r} is not allowed; choose one of: {', '.join(allowed)}")


def check_img_size(size: int, name: str = "model.img_size") -> None:
    """Raise ConfigError unless `size` is an image size every model builds at: a power of two
    ≥ 16 (the UNet halves it log2(size) − 1 times, the decoders start at size / 16)."""
    if size < 16 or size & (size - 1):
        raise ConfigError(f"{name}={size}: must be a power of two ≥ 16 (16, 32, 64, 128, 256, …)")


def validate_model(cfg: DictConfig) -> None:
    """Check the `model` section of a TrainConfig; raises ConfigError."""
    _check_choices(cfg, "model.")
    check_img_size(cfg.model.img_size)
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
        if cfg.objective.name == "geco":
            try:
                goal_rmse(cfg.objective.goal, cur.pixel_std_from)
            except ValueError as err:
                raise ConfigError(f"{err} (curriculum.pixel_std_from)") from None


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
    return merge_config(cfg, values, "override")


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
        cfg = merge_config(OmegaConf.structured(TrainConfig), load_yaml(Path(base_file)), str(base_file))
        cfg = _apply_dotlist(cfg, values)
        validate(cfg)
        OmegaConf.set_readonly(cfg, True)
        return cfg
    base_path = config_dir / "train.yaml"
    base, groups = _split_defaults(load_yaml(base_path), str(base_path))
    experiment_name = cli_groups.get("experiment") or (None if cli_groups else DEMO_EXPERIMENT)
    experiment = None
    if experiment_name is not None:
        experiment, experiment_groups = _split_defaults(
            _group_file("experiment", experiment_name, config_dir), f"experiment={experiment_name}"
        )
        groups.update(experiment_groups)
    groups.update({k: v for k, v in cli_groups.items() if k != "experiment"})
    cfg = merge_config(OmegaConf.structured(TrainConfig), base, str(base_path))
    for group in ("model", "data"):
        if group in groups:
            cfg = merge_config(cfg, _group_file(group, groups[group], config_dir), f"{group}={groups[group]}")
    if experiment is not None:
        cfg = merge_config(cfg, experiment, f"experiment={experiment_name}")
    cfg = _apply_dotlist(cfg, values)
    if not cfg.run.name:
        cfg.run.name = derived_run_name(cfg.model.name, cfg.data.name, experiment_name)
    validate(cfg)
    OmegaConf.set_readonly(cfg, True)
    return cfg


# The sections of a stored config that say what was trained (a checkpoint's meta.json may hold
# other sections from an older schema: where it ran, how it was logged).
TRAINED_SECTIONS = ("model", "objective", "curriculum", "optim", "data")


def resolved_config(data: dict | DictConfig, source: str) -> DictConfig:
    """A validated, read-only TrainConfig from the sections of a stored config that say what
    was trained (`TRAINED_SECTIONS` of a run's `config.yaml` or a checkpoint's `meta.json`),
    the rest at the schema's defaults (`run.name` and `run.seed` kept); `source` names it in errors."""
    sections = {k: data[k] for k in TRAINED_SECTIONS if k in data}
    sections["run"] = {k: v for k, v in (data.get("run") or {}).items() if k in ("name", "seed")}
    cfg = merge_config(OmegaConf.structured(TrainConfig), sections, source)
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
    cfg = merge_config(cfg, load_yaml(path), str(path))
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value (e.g. actors=4)")
    cfg = merge_config(cfg, list(overrides or []), "override")
    if cfg.actors < 1:
        raise ConfigError(f"actors={cfg.actors}: must be ≥ 1")
    OmegaConf.set_readonly(cfg, True)
    return cfg


def model_config(overrides: list[str] | None = None, name: str | None = None) -> DictConfig:
    """A validated ModelConfig: the published architecture `configs/model/NAME.yaml`
    (default genesis_v2) plus `key=value` overrides of its keys."""
    name = name or "genesis_v2"
    cfg = merge_config(OmegaConf.structured(TrainConfig), _group_file("model", name, find_config_dir()), f"model={name}")
    cfg = _apply_dotlist(cfg, [f"model.{o}" for o in overrides or []])
    validate_model(cfg)
    OmegaConf.set_readonly(cfg, True)
    return cfg.model
