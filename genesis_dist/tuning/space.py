"""A sweep's definition, without Ray: `configs/tune/NAME.yaml` read and checked against
the training config it varies, and each trial's resolved config.

A space file holds two sections:

    sweep:            # SweepConfig: metric, mode, scheduler, grace_period, ...
      metric: eval_ari_fg
    space:            # dotted TrainConfig key → one of
      objective.goal: {offset: [0.0, 0.005]}         # grid of the composed value + each offset
      model.kernel: {grid: [gaussian, laplacian]}     # grid: every value, crossed with the others
      optim.lr: {loguniform: [1.0e-4, 1.0e-3]}        # sampled once per trial (num_samples trials)
      # also {choice: [...]}, {uniform: [lo, hi]}, {scale: [0.5, 1, 2]} (grid of the value × each)

Every mistake is a ConfigError of one line, raised before any trial starts.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..config import SWEEP_CHOICES, ConfigError, SweepConfig, TrainConfig, find_config_dir, load_yaml, merge_config, validate
from ..training.loop import STEP_METRICS, WINDOW_METRICS, heldout_metric_names

GRID_KINDS = ("grid", "offset", "scale")
SAMPLED_KINDS = ("choice", "uniform", "loguniform")


@dataclass(frozen=True)
class Dimension:
    """One swept key: `kind` is grid (every value), choice (one value per trial),
    uniform or loguniform (`values` = [low, high])."""

    key: str
    kind: str
    values: tuple

    @property
    def size(self) -> int:
        return len(self.values) if self.kind == "grid" else 1


def load_space_file(name: str, config_dir: str | Path | None = None) -> tuple[DictConfig, dict[str, Any]]:
    """(SweepConfig, raw space mapping) of `configs/tune/NAME.yaml`."""
    config_dir = Path(config_dir) if config_dir else find_config_dir()
    path = config_dir / "tune" / f"{name}.yaml"
    if not path.is_file():
        available = sorted(p.stem for p in (config_dir / "tune").glob("*.yaml"))
        raise ConfigError(f"space={name}: no such sweep; available: {', '.join(available) or 'none'}")
    raw = load_yaml(path)
    unknown = set(raw.keys()) - {"sweep", "space"}
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {', '.join(sorted(map(str, unknown)))}; allowed: sweep, space")
    sweep = merge_sweep(OmegaConf.structured(SweepConfig), raw.get("sweep") or {}, str(path))
    space = OmegaConf.to_container(raw.get("space") or OmegaConf.create({}), resolve=True)
    return sweep, space


def merge_sweep(sweep: DictConfig, other: Any, source: str) -> DictConfig:
    """`sweep` with `other` merged in (a mapping or `key=value` strings), checked."""
    sweep = merge_config(sweep, other, source, prefix="sweep.")
    for key, allowed in SWEEP_CHOICES.items():
        if sweep[key] not in allowed:
            raise ConfigError(f"sweep.{key}={sweep[key]!r} is not allowed; choose one of: {', '.join(allowed)}")
    for key in ("grace_period", "reduction_factor", "num_samples"):
        if sweep[key] < 1:
            raise ConfigError(f"sweep.{key}={sweep[key]}: must be ≥ 1")
    return sweep


def resolve_space(space: dict[str, Any], base: DictConfig) -> list[Dimension]:
    """The space's dimensions with `offset` / `scale` turned into grids around the
    composed value of `base`; each candidate value is checked against the schema."""
    if not space:
        raise ConfigError("the search space is empty: give at least one key under space:")
    dimensions = []
    for key, spec in space.items():
        if not isinstance(spec, dict) or len(spec) != 1:
            raise ConfigError(f"space.{key}: expected one of {{grid|choice|offset|scale: [...]}} or "
                              f"{{uniform|loguniform: [low, high]}}; got {spec!r}")
        (kind, values), = spec.items()
        if kind not in GRID_KINDS + SAMPLED_KINDS:
            raise ConfigError(f"space.{key}: unknown kind {kind!r}; choose one of: {', '.join(GRID_KINDS + SAMPLED_KINDS)}")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"space.{key}.{kind}: needs a non-empty list of values")
        current = OmegaConf.select(base, key, default=_MISSING)
        if current is _MISSING or isinstance(current, DictConfig):
            raise ConfigError(f"space.{key}: not a key of the training config (e.g. objective.goal, model.kernel)")
        if kind in ("offset", "scale"):
            if not isinstance(current, (int, float)) or isinstance(current, bool):
                raise ConfigError(f"space.{key}.{kind}: {key} is {current!r}, not a number")
            values = [round(current + v, 10) if kind == "offset" else round(current * v, 10) for v in values]
            kind = "grid"
        if kind in ("uniform", "loguniform") and (len(values) != 2 or not values[0] < values[1]):
            raise ConfigError(f"space.{key}.{kind}: needs [low, high] with low < high; got {values}")
        for value in values:
            apply_params(base, {key: value})
        dimensions.append(Dimension(key, kind, tuple(values)))
    return dimensions


_MISSING = object()


def apply_params(base: DictConfig, params: dict[str, Any]) -> DictConfig:
    """`base` with the trial's `params` (dotted key → value) set, validated."""
    cfg = OmegaConf.merge(OmegaConf.structured(TrainConfig), OmegaConf.to_container(base, resolve=True))
    for key, value in params.items():
        try:
            OmegaConf.update(cfg, key, value, merge=False)
        except OmegaConfBaseException as err:
            raise ConfigError(f"space.{key}={value!r}: {str(err).splitlines()[0]}") from None
    validate(cfg)
    return cfg


def check_metric(metric: str, base: DictConfig, has_masks: bool) -> None:
    """The metric must be one the trials report (training window or held-out `eval_*`)."""
    heldout = heldout_metric_names(has_masks, has_attention=base.model.name == "genesis_v2")
    reported = set(STEP_METRICS) | set(WINDOW_METRICS) | {f"eval_{name}" for name in heldout}
    if base.model.name == "genesis_v2" and base.model.mask_loss:
        reported.add("mask_loss")
    if metric not in reported:
        why = " (the data has no masks, so no ARI is computed)" if metric.startswith("eval_ari") and not has_masks else ""
        raise ConfigError(f"sweep.metric={metric!r} is not reported by the trials{why}; "
                          f"choose one of: {', '.join(sorted(reported))}")


def grid_size(dimensions: list[Dimension], num_samples: int) -> int:
    """Number of trials: the product of the grid sizes, times `num_samples`."""
    size = num_samples
    for dimension in dimensions:
        size *= dimension.size
    return size
