"""`python -m genesis_dist.train [overrides]`: distributed training with Ray Train.

    python -m genesis_dist.train                                  # embedded default: local Ray, CPU
    python -m genesis_dist.train experiment=paper_shapestacks scaling.num_workers=8
    python -m genesis_dist.train model=genesis optim.lr=1e-4 run.storage_path=s3://bucket/runs

Joins the Ray cluster in RAY_ADDRESS (set by `ray job submit`) or starts a local
one. Re-running with the same `run.name` and `run.storage_path` resumes from the
latest checkpoint.
"""
from __future__ import annotations

import os
import sys
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .config import ConfigError, load_config
from .storage import aws_environment, filesystem, is_remote, join, ray_storage


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


def run(cfg: DictConfig):
    """Train `cfg` to completion; returns Ray's Result."""
    cfg = with_absolute_paths(cfg)
    ensure_dataset(cfg)
    _init_ray()
    result = build_trainer(cfg).fit()
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    try:
        cfg = with_absolute_paths(load_config(argv))
        print(OmegaConf.to_yaml(cfg), flush=True)
        result = run(cfg)
    except ConfigError as err:
        print(f"genesis_dist.train: error: {err}", file=sys.stderr)
        return 2
    run_url = join(cfg.run.storage_path, cfg.run.name)
    if result.error is not None:
        print(f"genesis_dist.train: the run failed: {result.error}", file=sys.stderr)
        return 1
    final = result.metrics or {}
    keys = ("step", "err", "kl", "elbo", "beta", "eval_err", "eval_kl", "eval_elbo", "eval_ari_fg")
    print("[genesis-dist] final: " + " ".join(f"{k} {final[k]:.4g}" for k in keys if k in final))
    print(f"[genesis-dist] run folder: {run_url}")
    print(f"[genesis-dist] latest checkpoint: {result.checkpoint.path if result.checkpoint else 'none'}")
    print(f"[genesis-dist] figures: {join(run_url, 'figures')}  TensorBoard: tensorboard --logdir {join(run_url, 'tensorboard')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
