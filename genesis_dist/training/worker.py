"""The per-worker function Ray Train runs on every rank: `training.run.train_rank`
with what Ray provides — rank and world size, the device, DDP (`prepare_model`),
the checkpoint to resume from, and `ray.train.report` for checkpoints."""
from __future__ import annotations

import tempfile
from typing import Any

from omegaconf import OmegaConf

from .hooks import checkpoint_name
from .run import train_rank


def train_worker(config: dict[str, Any]) -> None:
    """Ray Train loop: `config = {"cfg": TrainConfig as a dict, "run_url": str}`."""
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    cfg = OmegaConf.create(config["cfg"])
    ctx = ray.train.get_context()

    def publish(folder: str, metrics: dict[str, Any], step: int) -> None:
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(folder), checkpoint_dir_name=checkpoint_name(step))

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
