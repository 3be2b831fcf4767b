"""The per-worker function Ray Train runs on every rank: `training.run.train_rank`
with what Ray provides — rank and world size, the device, DDP (`prepare_model`),
the checkpoint to resume from, and `ray.train.report` for checkpoints."""
from __future__ import annotations

import tempfile
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..config import worker_range
from ..storage import Secret, StorageError, aws_environment, filesystem, join, ray_storage, redacted, storage_errors
from .checkpoint import META_FILE, latest_complete_checkpoint
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
        ray.train.report({**metrics, "timesteps_total": step}, checkpoint=Checkpoint.from_directory(folder),
                         checkpoint_dir_name=checkpoint_name(step),
                         checkpoint_upload_fn=lambda local, name: upload_checkpoint(local.path, config["run_url"], name,
                                                                                   dict(cfg.data.storage_options)))

    def upload_checkpoint(folder: str, run_url: str, name: str, storage_options: dict | None):
        upload_folder(folder, join(run_url, name), storage_options)
        storage = ray.train.get_context().get_storage()
        return Checkpoint(path=f"{storage.experiment_fs_path}/{name}", filesystem=storage.storage_filesystem)

    def log(line: str) -> None:
        print(line, flush=True)

    checkpoint = ray.train.get_checkpoint()
    args = dict(cfg=cfg, run_url=config["run_url"], rank=ctx.get_world_rank(), world=ctx.get_world_size(),
                device=ray.train.torch.get_device(), publish=publish, wrap_model=ray.train.torch.prepare_model,
                print_line=log)
    newer = newer_than_ray(checkpoint, config["run_url"], dict(cfg.data.storage_options), ctx.get_world_rank())
    if checkpoint is None and newer is None:
        train_rank(**args)
        return
    with tempfile.TemporaryDirectory(prefix="genesis-resume-") as folder:
        # A copy: Ray may delete old checkpoints while this rank trains.
        if newer is not None:
            fs, path = filesystem(newer, dict(cfg.data.storage_options))
            fs.get(path.rstrip("/") + "/", folder.rstrip("/") + "/", recursive=True)
            if ctx.get_world_rank() == 0:
                log(f"[genesis-dist] {newer} is newer than the last checkpoint Ray recorded "
                    f"({checkpoint.path.rstrip('/').rsplit('/', 1)[-1] if checkpoint else 'none'}): resuming from it")
        else:
            checkpoint.to_directory(folder)
        train_rank(**args, checkpoint_folder=folder)


def newer_than_ray(checkpoint, run_url: str, storage_options: dict | None, rank: int) -> str | None:
    """The run folder's newest complete checkpoint when it is newer than `checkpoint` (the
    one Ray recorded; None: none), else None. Ray records a checkpoint some time after it
    was uploaded; a driver killed in between would otherwise make the re-run start over.
    Rank 0 decides and every rank follows (the folder is read once)."""
    import torch.distributed as dist

    choice = [None]
    if rank == 0:
        found = latest_complete_checkpoint(run_url, storage_options)
        recorded = -1 if checkpoint is None else int(checkpoint.path.rstrip("/").rsplit("_", 1)[-1])
        choice = [found[1] if found is not None and found[0] > recorded else None]
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(choice, src=0)
    return choice[0]


def upload_folder(folder: str, url: str, storage_options: dict | None) -> None:
    """Copy the files of the local `folder` (a rank's checkpoint) into `url` and check every
    file arrived at its size; raises StorageError when the upload failed.

    The Ray worker uploads checkpoints with this instead of Ray's default (pyarrow's
    copy_files over the fsspec filesystem), which reports success when closing an S3 object
    failed: the checkpoint would be registered as the latest while its files are missing
    (found by tests/test_faults.py)."""
    import os

    fs, path = filesystem(url, storage_options)
    local_sizes = {f: os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder)}
    with storage_errors(url):
        fs.makedirs(path, exist_ok=True)
        for file in sorted(local_sizes, key=lambda f: f == META_FILE):  # meta.json, which marks it complete, last
            fs.put_file(os.path.join(folder, file), f"{path}/{file}")
        fs.invalidate_cache(path)
        uploaded = {f: fs.size(f"{path}/{f}") for f in local_sizes if fs.exists(f"{path}/{f}")}
    if uploaded != local_sizes:
        raise StorageError(f"{url}: the checkpoint upload is incomplete ({uploaded} of {local_sizes} bytes)")


def build_trainer(cfg: DictConfig, callbacks: list | None = None):
    """A TorchTrainer for `cfg` (Ray must be initialised); `callbacks` are Ray Train
    callbacks (a sweep passes Tune's report callback)."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    workers = worker_range(cfg.scaling)  # (min, max): elastic when they differ (README, "Elastic training")
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
            num_workers=workers if workers[0] < workers[1] else workers[0],
            elastic_resize_monitor_interval_s=cfg.scaling.resize_interval_s,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": cfg.scaling.cpus_per_worker, **({"GPU": 1} if use_gpu else {}),
                                  **cfg.scaling.resources_per_worker},
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
