"""`python -m genesis_dist.train [--print-config] [--config FILE] [group=name ...] [key=value ...]`:
distributed training with Ray Train.

    python -m genesis_dist.train                                  # the embedded demo: local Ray, CPU
    python -m genesis_dist.train model=genesis data=shapestacks   # GENESIS as published, ShapeStacks' settings
    python -m genesis_dist.train data=objects_room data.url=s3://bucket/objects_room scaling.num_workers=8
    python -m genesis_dist.train --config runs/NAME/config.yaml optim.steps=1000000   # train a run longer
    python -m genesis_dist.train model=genesis --print-config     # print the resolved config and exit

Groups: model=genesis_v2|genesis|genesis_s|..., data=multi_dsprites|objects_room|
shapestacks|gqn|sketchy|apc|..., experiment=demo|... (files under configs/). No group
named: the demo. The run is named {model}-{data}[-{experiment}] unless run.name is set.

Joins the Ray cluster in RAY_ADDRESS (set by `ray job submit`) or starts a local
one. Re-running with the same `run.name` and `run.storage_path` resumes from the
latest checkpoint; a run folder whose stored config.yaml differs in anything but
optim.steps and the keys listed in config.MAY_CHANGE_ON_RESUME is refused.

Exit status: 0 finished, 1 the run failed, 2 a usage or config error.
"""
from __future__ import annotations

import os
import sys
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .config import ConfigError, load_config
from .storage import aws_environment, join
from .training.run_folder import prepare_run, with_absolute_paths
from .training.worker import build_trainer



def _init_ray() -> None:
    import ray

    if ray.is_initialized():
        return
    # RAY_ADDRESS (set by `ray job submit`) joins the cluster; otherwise a local one starts.
    ray.init(runtime_env={"env_vars": aws_environment()})


def run(cfg: DictConfig):
    """Train `cfg` to completion; returns Ray's Result (raises ConfigError for a
    config that conflicts with an existing run of the same name)."""
    cfg = prepare_run(cfg)
    _init_ray()
    return build_trainer(cfg).fit()


def _parse_args(argv: list[str]) -> tuple[list[str], str | None, bool]:
    """(overrides, --config file, --print-config)."""
    overrides, config_file, print_only = [], None, False
    items = iter(argv)
    for item in items:
        if item == "--print-config":
            print_only = True
        elif item == "--config":
            config_file = next(items, None)
            if config_file is None:
                raise ConfigError("--config needs a file: --config runs/NAME/config.yaml")
        elif item.startswith("--config="):
            config_file = item.split("=", 1)[1]
        elif item.startswith("-"):
            raise ConfigError(f"unknown option {item}; options: --config FILE, --print-config, --help")
        else:
            overrides.append(item)
    return overrides, config_file, print_only


def final_line(metrics: dict[str, Any]) -> str:
    """The run's closing numbers: held-out err, KL, ELBO (nats per image) and
    foreground ARI."""
    keys = (("step", "d"), ("eval_err", ".1f"), ("eval_kl", ".1f"), ("eval_elbo", ".1f"), ("eval_ari_fg", ".3f"))
    return " ".join(f"{k.removeprefix('eval_')} {metrics[k]:{spec}}" for k, spec in keys if isinstance(metrics.get(k), (int, float)))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    try:
        overrides, config_file, print_only = _parse_args(argv)
        cfg = with_absolute_paths(load_config(overrides, base_file=config_file))
        print(OmegaConf.to_yaml(cfg), flush=True)
        if print_only:
            return 0
        result = run(cfg)
    except ConfigError as err:
        print(f"genesis_dist.train: error: {err}", file=sys.stderr)
        return 2
    run_url = join(cfg.run.storage_path, cfg.run.name)
    if result.error is not None:
        print(f"genesis_dist.train: the run failed: {result.error}", file=sys.stderr)
        return 1
    final = result.metrics or {}
    print(f"[genesis-dist] run folder: {run_url}  TensorBoard: tensorboard --logdir {join(run_url, 'tensorboard')}")
    print(f"[genesis-dist] latest checkpoint: {result.checkpoint.path if result.checkpoint else 'none'}")
    step = final.get("step")
    figure = join(run_url, "figures", f"decomposition_{step:08d}.png") if isinstance(step, int) else join(run_url, "figures")
    print(f"[genesis-dist] held-out: {final_line(final)} — open {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
