"""The per-worker function Ray Train runs on every rank: `training.run.train_rank`
with what Ray provides — rank and world size, the device, DDP (`prepare_model`),
the checkpoint to resume from, and `ray.train.report` for checkpoints."""
from __future__ import annotations

import tempfile
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..storage import Secret, aws_environment, join, ray_storage, redacted
from .hooks import checkpoint_name
from .run import train_rank


def train_worker(config: dict[str, Any]) -> None:
    """Ray Train loop: `config = {"cfg": TrainConfig as a dict with secrets redacted,
    "storage_options": Secret(data.storage_options), "run_url": str}` (Ray's dashboard shows
    the loop config; a `Secret` shows as <redacted> and reaches the worker intact).

    Each checkpoint is reported with the step's metrics and `timesteps_total` = the
    step (the x-axis of Ray Tune's TensorBoard logs when the run is a sweep trial)."""
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    cfg = OmegaConf.create(config["cfg"])
    if "storage_options" in config:
        cfg.data.storage_options = config["storage_options"].value
    ctx = ray.train.get_context()

    def publish(folder: str, metrics: dict[str, Any], step: int) -> None:
        ray.train.report({**metrics, "timesteps_total": step}, checkpoint=Checkpoint.from_directory(folder), checkpoint_dir_name=checkpoint_name(step))

    def log(line: str) -> None:
        print(line, flush=True)

    checkpoint = ray.train.get_checkpoint()
    args = dict(cfg=cfg, run_url=config["run_url"], rank=ctx.get_world_rank(), world=ctx.get_world_size(),
                device=ray.train.torch.get_device(), publish=publish, wrap_model=ray.train.torch.prepare_model,
                print_line=log)
    if checkpoint is None:
        train_rank(**args)
        return
    with tempfile.TemporaryDirectory(prefix="genesis-resume-") as folder:
        checkpoint.to_directory(folder)  # a copy: Ray may delete old checkpoints while this rank trains
        train_rank(**args, checkpoint_folder=folder)


def build_trainer(cfg: DictConfig, callbacks: list | None = None):
    """A TorchTrainer for `cfg` (Ray must be initialised); `callbacks` are Ray Train
    callbacks (a sweep passes Tune's report callback)."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    use_gpu = cfg.scaling.use_gpu
    if use_gpu is None:
        use_gpu = ray.cluster_resources().get("GPU", 0) > 0
    storage_path, storage_fs = ray_storage(cfg.run.storage_path, dict(cfg.data.storage_options))
    plain = OmegaConf.to_container(cfg, resolve=True)
    config: dict[str, Any] = {
        "cfg": redacted(plain),
        "storage_options": Secret(plain["data"]["storage_options"]),
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
            callbacks=callbacks or [],
        ),
    )
