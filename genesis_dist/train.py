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

from .config import ConfigError, load_config, resume_conflicts
from .storage import aws_environment, filesystem, is_remote, join, ray_storage


RUN_CONFIG_FILE = "config.yaml"


def ensure_dataset(cfg: DictConfig) -> None:
    """Generate a small Multi-dSprites shard set at `data.url` if it is missing and
    `data.generate_if_missing` is set; otherwise fail clearly when it is missing."""
    fs, path = filesystem(join(cfg.data.url, "manifest.json"), dict(cfg.data.storage_options))
    if fs.exists(path):
        from .data import read_manifest

        resolution = read_manifest(cfg.data.url, dict(cfg.data.storage_options)).get("resolution")
        if resolution is not None and resolution != cfg.model.img_size:
            raise ConfigError(
                f"data.url={cfg.data.url} holds {resolution} px images but model.img_size={cfg.model.img_size}; "
                f"set model.img_size={resolution} or convert the data at {cfg.model.img_size} px"
            )
        return
    if not cfg.data.generate_if_missing:
        raise ConfigError(
            f"data.url={cfg.data.url}: no manifest.json there; convert a dataset with tools/shard.py "
            f"or set data.generate_if_missing=true for a generated Multi-dSprites set"
        )
    if cfg.data.name != "multi_dsprites":
        raise ConfigError(f"data.generate_if_missing only generates multi_dsprites, not {cfg.data.name}")
    from .data.formats import multi_dsprites

    print(
        f"[genesis-dist] generating Multi-dSprites at {cfg.data.url} "
        f"({cfg.data.generate_train} train / {cfg.data.generate_test} test, {cfg.model.img_size} px)",
        flush=True,
    )
    multi_dsprites.convert(
        cfg.data.url,
        sizes={cfg.data.train_split: cfg.data.generate_train, cfg.data.eval_split: cfg.data.generate_test},
        img_size=cfg.model.img_size,
        seed=cfg.run.seed,
    )


def with_absolute_paths(cfg: DictConfig) -> DictConfig:
    """Local `data.url` / `run.storage_path` made absolute: Ray workers run in
    another working directory than the driver."""
    cfg = cfg.copy()
    OmegaConf.set_readonly(cfg, False)
    for key in ("data.url", "run.storage_path"):
        value = OmegaConf.select(cfg, key)
        if not is_remote(value):
            OmegaConf.update(cfg, key, os.path.abspath(os.path.expanduser(value.removeprefix("file://"))))
    OmegaConf.set_readonly(cfg, True)
    return cfg


def _init_ray() -> None:
    import ray

    if ray.is_initialized():
        return
    # RAY_ADDRESS (set by `ray job submit`) joins the cluster; otherwise a local one starts.
    ray.init(runtime_env={"env_vars": aws_environment()})


def build_trainer(cfg: DictConfig):
    """A TorchTrainer for `cfg` (Ray must be initialised)."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from .training.worker import train_worker

    use_gpu = cfg.scaling.use_gpu
    if use_gpu is None:
        use_gpu = ray.cluster_resources().get("GPU", 0) > 0
    storage_path, storage_fs = ray_storage(cfg.run.storage_path, dict(cfg.data.storage_options))
    config: dict[str, Any] = {
        "cfg": OmegaConf.to_container(cfg, resolve=True),
        "run_url": join(cfg.run.storage_path, cfg.run.name),
    }
    return TorchTrainer(
        train_worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(
            num_workers=cfg.scaling.num_workers,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": cfg.scaling.cpus_per_worker, **({"GPU": 1} if use_gpu else {})},
        ),
        run_config=RunConfig(
            name=cfg.run.name,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            failure_config=FailureConfig(max_failures=cfg.run.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.run.keep_checkpoints),
            worker_runtime_env={"env_vars": aws_environment()},
        ),
    )


def check_run_identity(cfg: DictConfig) -> str | None:
    """Refuse to resume another run: compare `cfg` with the run folder's stored
    `config.yaml`. Returns "new" or "resume"; raises ConfigError naming the keys that
    differ outside `config.MAY_CHANGE_ON_RESUME`."""
    stored_url = join(cfg.run.storage_path, cfg.run.name, RUN_CONFIG_FILE)
    fs, path = filesystem(stored_url, dict(cfg.data.storage_options))
    if not fs.exists(path):
        return "new"
    stored = OmegaConf.create(fs.cat_file(path).decode())
    conflicts = resume_conflicts(stored, cfg)
    if conflicts:
        shown = ", ".join(f"{k} ({OmegaConf.select(stored, k)!r} → {OmegaConf.select(cfg, k)!r})" for k in conflicts[:4])
        more = f" and {len(conflicts) - 4} more" if len(conflicts) > 4 else ""
        raise ConfigError(
            f"run {cfg.run.name!r} in {cfg.run.storage_path} was started with another config: {shown}{more}; "
            f"choose another run.name (or run.storage_path) to start a new run"
        )
    return "resume"


def write_run_config(cfg: DictConfig) -> None:
    """The resolved config, kept in the run folder (`python -m genesis_dist.train --config` takes it)."""
    fs, path = filesystem(join(cfg.run.storage_path, cfg.run.name, RUN_CONFIG_FILE), dict(cfg.data.storage_options))
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    fs.pipe_file(path, OmegaConf.to_yaml(cfg).encode())


def run(cfg: DictConfig):
    """Train `cfg` to completion; returns Ray's Result (raises ConfigError for a
    config that conflicts with an existing run of the same name)."""
    cfg = with_absolute_paths(cfg)
    check_run_identity(cfg)
    ensure_dataset(cfg)
    write_run_config(cfg)
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
