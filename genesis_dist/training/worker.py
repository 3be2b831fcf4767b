"""Training's Ray glue: the per-worker function Ray Train runs on every rank
(`training.run.train_rank` with what Ray provides — rank and world size, the device, DDP
(`prepare_model`), the checkpoint to resume from, and `ray.train.report` for checkpoints),
the TorchTrainer of a config, the pyarrow view of the run folder Ray's storage needs, and
what a failure that reached the driver through Ray's wrappers was."""
from __future__ import annotations

import os
import tempfile
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..config import worker_range
from ..storage import (EXIT_STATUS, Secret, StorageError, aws_environment, filesystem, is_remote, join, redacted,
                       one_line, root_errors, storage_errors, storage_failure)
from .checkpoint import latest_complete_checkpoint
from .layout import META_FILE, checkpoint_name, checkpoint_step
from .run import storage_options, train_rank
from .progress import note_event, print_events
from .run_folder import run_url

# Tests inject a worker failure by setting this in the environment of the command that builds
# the trainer: the last rank SIGKILLs itself once at that step (training/hooks.py: InjectedFailure).
KILL_AT_STEP_VARIABLE = "GENESIS_DIST_TEST_KILL_AT_STEP"


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
    options = storage_options(cfg)
    ctx = ray.train.get_context()

    def publish(folder: str, metrics: dict[str, Any], step: int) -> None:
        ray.train.report({**metrics, "timesteps_total": step}, checkpoint=Checkpoint.from_directory(folder),
                         checkpoint_dir_name=checkpoint_name(step),
                         checkpoint_upload_fn=lambda local, name: upload_checkpoint(local.path, config["run_url"], name,
                                                                                   options))

    def upload_checkpoint(folder: str, run_url: str, name: str, storage_options: dict | None):
        upload_folder(folder, join(run_url, name), storage_options)
        storage = ray.train.get_context().get_storage()
        return Checkpoint(path=f"{storage.experiment_fs_path}/{name}", filesystem=storage.storage_filesystem)

    board = config.get("progress_board")
    progress = board_progress(board) if board is not None else print_events
    checkpoint = ray.train.get_checkpoint()
    args = dict(cfg=cfg, run_url=config["run_url"], rank=ctx.get_world_rank(), world=ctx.get_world_size(),
                device=ray.train.torch.get_device(), publish=publish, wrap_model=ray.train.torch.prepare_model,
                progress=progress, kill_at_step=config.get("kill_at_step"))
    newer = newer_than_ray(checkpoint, config["run_url"], options, ctx.get_world_rank())
    if checkpoint is None and newer is None:
        train_rank(**args)
        return
    with tempfile.TemporaryDirectory(prefix="genesis-resume-") as folder:
        # A copy: Ray may delete old checkpoints while this rank trains.
        if newer is not None:
            fs, path = filesystem(newer, options)
            fs.get(path.rstrip("/") + "/", folder.rstrip("/") + "/", recursive=True)
            if ctx.get_world_rank() == 0:
                progress(note_event(f"{newer} is newer than the last checkpoint Ray recorded "
                                    f"({checkpoint.path.rstrip('/').rsplit('/', 1)[-1] if checkpoint else 'none'}): "
                                    "resuming from it"))
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
        recorded = -1 if checkpoint is None else checkpoint_step(checkpoint.path)
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


class ProgressBoard:
    """Where rank 0 posts its progress events (training/progress.py) for the driver, which
    takes them to draw its progress bar. Posting is fire-and-forget, so a step never waits
    for the driver; the board keeps the newest `capacity` events."""

    def __init__(self, capacity: int = 10_000):
        import collections

        self.events = collections.deque(maxlen=capacity)

    def post(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def take(self) -> list[dict[str, Any]]:
        """Every event posted since the last take, oldest first."""
        events = list(self.events)
        self.events.clear()
        return events


def start_progress_board():
    """A ProgressBoard actor (no CPU reserved) for a trainer's workers to post to."""
    import ray

    return ray.remote(num_cpus=0)(ProgressBoard).remote()


def board_progress(board):
    """A `Progress` that posts each event to `board` without waiting."""
    def post(event: dict[str, Any]) -> None:
        board.post.remote(event)

    return post


def uses_gpu(cfg: DictConfig) -> bool:
    """Whether the run's workers take GPUs: `scaling.use_gpu`, or (None) whether the cluster has any."""
    import ray

    return cfg.scaling.use_gpu if cfg.scaling.use_gpu is not None else ray.cluster_resources().get("GPU", 0) > 0


def build_trainer(cfg: DictConfig, callbacks: list | None = None, progress_board=None):
    """A TorchTrainer for `cfg` (Ray must be initialised); `callbacks` are Ray Train
    callbacks (a sweep passes Tune's report callback); rank 0 posts its progress to
    `progress_board` (a ProgressBoard actor) or, without one, prints it."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    workers = worker_range(cfg.scaling)  # (min, max): elastic when they differ (README, "Elastic training")
    use_gpu = uses_gpu(cfg)
    storage_path, storage_fs = ray_storage(cfg.run.storage_path, storage_options(cfg))
    plain = OmegaConf.to_container(cfg, resolve=True)
    config: dict[str, Any] = {
        "cfg": redacted(plain),
        "storage_options": Secret(plain["data"]["storage_options"]),
        "run_url": run_url(cfg),
    }
    if progress_board is not None:
        config["progress_board"] = progress_board
    if os.environ.get(KILL_AT_STEP_VARIABLE):  # fault injection, set by tests only
        config["kill_at_step"] = int(os.environ[KILL_AT_STEP_VARIABLE])
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


def ray_storage(url: str, storage_options: dict | None = None):
    """(storage_path, storage_filesystem) for Ray's RunConfig: local paths as absolute paths,
    remote URLs as a pyarrow view of the same fsspec filesystem the rest of genesis-dist
    uses (so custom endpoints work)."""
    if not is_remote(url):
        return os.path.abspath(url.removeprefix("file://")), None
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    fs, path = filesystem(url, storage_options)
    return path, PyFileSystem(FSSpecHandler(fs))


# Ray's errors that say a process died, and Ray's wrappers around a worker's own error.
_PROCESS_DIED = {"WorkerHealthCheckFailedError", "ActorDiedError", "ActorUnavailableError", "NodeDiedError",
                 "WorkerCrashedError", "OutOfMemoryError", "ObjectLostError"}
_RAY_WRAPPERS = {"TrainingFailedError", "WorkerGroupError", "ControllerError", "RayTaskError", "UserExceptionWithTraceback"}


def failure_chain(error: BaseException) -> list[BaseException]:
    """`error` and every error it wraps: causes and contexts (`storage.root_errors`), and
    Ray's wrappers (a TrainingFailedError's `worker_failures` and `controller_failure`, a
    worker's `_base_exc`, a RayTaskError's `cause`), found by attribute."""
    chain: list[BaseException] = []
    todo: list[BaseException] = [error]
    while todo:
        for current in root_errors(todo.pop(0)):
            if any(current is seen for seen in chain):
                continue
            chain.append(current)
            failures = getattr(current, "worker_failures", None)
            todo += list(failures.values()) if isinstance(failures, dict) else []
            todo += [wrapped for name in ("_base_exc", "controller_failure", "cause")
                     if isinstance(wrapped := getattr(current, name, None), BaseException)]
    return chain


def describe_failure(error: BaseException) -> tuple[int, str]:
    """(exit status, one line) for a command that ends in `error`: a storage failure
    anywhere in its chain gives that kind's status (EXIT_STATUS); anything else is status 1
    with the first error in the chain that is not one of Ray's wrappers (a worker's own
    exception rather than Ray's TrainingFailedError around it)."""
    chain = failure_chain(error)
    failures = [f for f in map(storage_failure, chain) if f is not None]
    if failures:
        failure = next((f for f in failures if f in chain), failures[0])  # one raised as a StorageError first
        return failure.exit_status, str(failure)
    own = [e for e in chain if not type(e).__module__.startswith("ray.")]
    if own:
        text = one_line(own[0])
        return EXIT_STATUS["failed"], f"{type(own[0]).__name__}: {text[:400] + ' …' if len(text) > 400 else text}"
    died = [e for e in chain if type(e).__name__ in _PROCESS_DIED]
    if died:
        return EXIT_STATUS["failed"], f"a worker process died ({type(died[0]).__name__}: {_first_line(died[0])})"
    inner = [e for e in chain if type(e).__name__ not in _RAY_WRAPPERS] or chain
    return EXIT_STATUS["failed"], f"{type(inner[0]).__name__}: {_first_line(inner[0])}"


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0][:300] if lines else ""
