"""One rank of a training run, assembled from a TrainConfig without Ray: the state
(model, objective, optimiser, schedule, scaler), the rank's data stream, resuming
from a checkpoint folder, and the standard hooks. `training/worker.py` runs it
inside Ray Train; tests and benchmarks run it directly."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from omegaconf import DictConfig

from ..config import effective_lr, per_worker_batch
from ..data import ShardSet
from ..models import build_model
from .checkpoint import CheckpointError, load_checkpoint, set_rng_state
from .hooks import Checkpoints, Figures, FinishedMarker, InjectedFailure, Publish, RunLog
from .layout import worker_file
from .loop import (Hook, TrainState, fit, keep_freed_memory, make_grad_scaler, make_optimizer, seed_everything, set_base_lr,
                   use_channels_last)
from .objective import make_objective
from .progress import Progress, note_event, print_events
from .sync_batchnorm import sync_batchnorm


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto`: bf16 autocast on CUDA (tensor cores), fp32 elsewhere (bf16 made a CPU step
    3.5× slower here)."""
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cuda" else "fp32"


@dataclass(frozen=True)
class RankPlan:
    """What one rank of a run trains with, worked out once from the config and the world:
    its images per step, the base learning rate for the global batch, the precision."""

    rank: int
    world: int
    device: torch.device
    batch: int  # images per step on this rank
    lr: float  # `optim.lr` scaled for the global batch (`optim.lr_scaling`)
    precision: str  # fp32 | bf16 | fp16 (`optim.precision=auto` resolved for the device)

    @classmethod
    def of(cls, cfg: DictConfig, rank: int, world: int, device: torch.device) -> "RankPlan":
        return cls(rank, world, device, per_worker_batch(cfg.optim, world), effective_lr(cfg.optim, world),
                   resolve_precision(cfg.optim.precision, device))

    @classmethod
    def single(cls, cfg: DictConfig, device: torch.device) -> "RankPlan":
        """The plan of a run of one worker (tests, benchmarks, the importer)."""
        return cls.of(cfg, 0, 1, device)

    @property
    def global_batch(self) -> int:
        return self.batch * self.world

    def describe(self, cfg: DictConfig) -> str:
        """One line: the workers, the global batch and the learning rate they got."""
        return (f"{self.world} worker(s) × {self.batch} images = global batch {self.global_batch}; "
                f"lr {self.lr:.3g} (optim.lr {cfg.optim.lr:g}, lr_scaling {cfg.optim.lr_scaling})")


def build_state(cfg: DictConfig, plan: RankPlan) -> TrainState:
    """Model (same initial weights on every rank, from `run.seed`) on `plan.device`, training
    objective, optimiser (at the plan's learning rate) and schedule, scaler, at step 0. On a CPU
    the process keeps the memory it frees (`keep_freed_memory`)."""
    device = plan.device
    seed_everything(cfg.run.seed, cfg.run.deterministic)
    if device.type == "cpu":
        keep_freed_memory()
    model = build_model(cfg.model).to(device)
    if cfg.optim.channels_last:
        use_channels_last(model)
    optimizer, schedule = make_optimizer(model.parameters(), cfg.optim, plan.lr)
    return TrainState(model, make_objective(cfg, model).to(device), optimizer, schedule,
                      make_grad_scaler(device, plan.precision))


def loader_workers(setting: int | None, local_world: int | None = None) -> int:
    """DataLoader worker processes per training worker: `data.num_workers`, or for None
    (auto) the node's cores shared by the training workers on it (`LOCAL_WORLD_SIZE`, set
    by Ray Train: one per GPU) less one for the training process itself, at least 1."""
    if setting is not None:
        return int(setting)
    local_world = local_world or int(os.environ.get("LOCAL_WORLD_SIZE") or 1)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, local_world) - 1)


def open_data(cfg: DictConfig) -> ShardSet:
    """The run's shard set (`data.url`, `data.storage_options`), its manifest read once."""
    return ShardSet.open(cfg.data.url, storage_options(cfg))


def storage_options(cfg: DictConfig) -> dict[str, Any]:
    """`data.storage_options` as a plain dict: how the run reaches its data and its folder."""
    from omegaconf import OmegaConf

    options = cfg.data.storage_options
    return OmegaConf.to_container(options) if isinstance(options, DictConfig) else dict(options)


def make_train_loader(cfg: DictConfig, data: ShardSet, plan: RankPlan):
    """The rank's stream of training batches (`plan.batch` images each)."""
    from ..data import make_loader

    return make_loader(data, cfg.data.train_split, plan.batch, rank=plan.rank, world_size=plan.world,
                       num_workers=loader_workers(cfg.data.num_workers), seed=cfg.run.seed,
                       shuffle_buffer=cfg.data.shuffle_buffer)


def heldout_batch(cfg: DictConfig, data: ShardSet, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The first `run.eval_images` images `[N, 3, H, W]` of the evaluation split and their
    foreground label maps `[N, H, W]` (background entities such as ObjectsRoom's sky,
    floor and walls merged into 0), or None where the data has no masks."""
    from ..data import make_loader
    from ..metrics import foreground_labels

    loader = make_loader(data, cfg.data.eval_split, cfg.run.eval_images, rank=0, world_size=1, num_workers=0,
                         seed=0, shuffle_buffer=0, drop_last=False)
    batch = next(iter(loader))
    masks = batch.get("mask")
    if masks is None:
        return batch["image"].to(device), None
    return batch["image"].to(device), foreground_labels(masks, data.background_entities).to(device)


def restore(state: TrainState, loader, folder: str, rank: int, seed: int) -> float | None:
    """Load a checkpoint folder into `state`, the data position and the rank's RNG;
    returns the run's best held-out score so far. The learning rate stays the one
    `state` was built with (scaled for this world size).

    The data position comes from every rank's `worker_<r>.pt` of the checkpoint: with the
    same world size each rank continues exactly where it was; with another (an elastic
    resize) the rest of the epoch, what no rank had read, is laid out over the new ranks
    (`ShardLoader.resume`). The RNG is restored only where this rank saved one under the
    same world size; otherwise it is reseeded from (seed, rank, step). A checkpoint whose
    worker file holds no data position and no RNG (an imported release, `released.py`) starts
    the data at its beginning, reseeded."""
    saved, meta = load_checkpoint(folder)
    lr = state.schedule.base_lrs[0]
    state.load_state_dict(saved, int(meta["step"]))
    set_base_lr(state.optimizer, state.schedule, lr)
    workers = saved_worker_states(folder)
    positions = [w["data"] for w in workers.values() if w.get("data") is not None]
    if positions:
        loader.resume(positions)
    mine = workers.get(rank) or {}
    same_world = (mine.get("rng") is not None
                  and (mine.get("data") or {}).get("world_size", len(workers)) == loader.layout.world_size)
    if same_world:
        set_rng_state(workers[rank]["rng"])
    else:
        torch.manual_seed(seed + 7919 * (rank + 1) + state.step)
    return meta.get("best_score")


def saved_worker_states(folder: str) -> dict[int, dict[str, Any]]:
    """{rank: worker state} of the ranks that wrote the checkpoint folder: worker_0 … worker_{W-1}
    with W the world size worker_0 records. A folder written again after a restart from an
    earlier checkpoint (Ray names it by step) can also hold files a larger, earlier world's
    ranks left there: those are not read."""
    def load(rank: int) -> dict[str, Any]:
        return torch.load(os.path.join(folder, worker_file(rank)), weights_only=True)

    if not os.path.exists(os.path.join(folder, worker_file(0))):
        return {}
    first = load(0)
    if first.get("data") is None:  # no data position (an imported release): its one file
        return {0: first}
    world = int(first["data"]["world_size"])
    missing = [worker_file(r) for r in range(1, world) if not os.path.exists(os.path.join(folder, worker_file(r)))]
    if missing:
        raise CheckpointError(f"{folder}: written by {world} ranks but {', '.join(missing)} missing "
                              "(the data position of the epoch cannot be rebuilt)")
    return {0: first, **{r: load(r) for r in range(1, world)}}


def seed_rank(seed: int, rank: int) -> None:
    """Per-rank sampling noise for a fresh run (the weights were seeded alike)."""
    torch.manual_seed(seed + 7919 * (rank + 1))


def images_of(batches: Iterator[dict[str, Any]]) -> Iterator[torch.Tensor]:
    for batch in batches:
        yield batch["image"]


def standard_hooks(cfg: DictConfig, run_url: str, plan: RankPlan, data: ShardSet, loader, publish: Publish,
                   start_step: int = 0, best_score: float | None = None, progress: Progress = print_events,
                   kill_at_step: int | None = None) -> list[Hook]:
    """Fault injection (tests: `kill_at_step`), then on rank 0 the run log, figures and
    finished marker, and on every rank the checkpoints (rank 0 scoring `run.eval_images`
    held-out images)."""
    from .run_log import RunLogger

    hooks: list[Hook] = []
    if kill_at_step is not None:
        hooks.append(InjectedFailure(kill_at_step, plan.rank, plan.world, run_url))
    run_log, heldout = None, None
    if plan.rank == 0:
        logger = RunLogger(run_url, data.storage_options)
        heldout = heldout_batch(cfg, data, plan.device)
        run_log = RunLog(run_url, cfg.run.log_every, cfg.optim.steps, logger, data.storage_options, start_step,
                         progress)
        hooks += [run_log, Figures(run_url, cfg.run.image_every, cfg.optim.steps, heldout[0], logger,
                                   data.storage_options, masks=heldout[1])]
    hooks.append(Checkpoints(cfg, run_url, plan.rank, loader, publish, data.storage_options, heldout, run_log,
                             best_score))
    if plan.rank == 0:
        hooks.append(FinishedMarker(run_url, cfg.optim.steps, data.storage_options))
    return hooks


def train_rank(cfg: DictConfig, run_url: str, rank: int, world: int, device: torch.device, publish: Publish,
               checkpoint_folder: str | None = None, wrap_model: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
               progress: Progress = print_events, kill_at_step: int | None = None) -> TrainState:
    """Run one rank of `cfg` to `optim.steps`: plan, build, resume from `checkpoint_folder`
    if given, wrap the model (DDP) with `wrap_model`, and `fit` with the standard hooks.
    `kill_at_step` (fault injection for tests) makes the last rank SIGKILL itself once there."""
    plan = RankPlan.of(cfg, rank, world, device)
    data = open_data(cfg)
    state = build_state(cfg, plan)
    loader = make_train_loader(cfg, data, plan)
    if rank == 0:
        progress(note_event(plan.describe(cfg)))
    best = None
    if checkpoint_folder is not None:
        best = restore(state, loader, checkpoint_folder, rank, cfg.run.seed)
        if rank == 0:
            progress(note_event(f"resumed from step {state.step}"))
    else:
        seed_rank(cfg.run.seed, rank)
    if world > 1 and cfg.scaling.sync_batchnorm:
        state.model = sync_batchnorm(state.model, device)
    if cfg.optim.compile:
        state.model = torch.compile(state.model)
    if wrap_model is not None:
        state.model = wrap_model(state.model)
    hooks = standard_hooks(cfg, run_url, plan, data, loader, publish, state.step, best, progress, kill_at_step)
    batches = loader.forever()
    if cfg.run.log_sample_keys:
        from .sample_log import logged_batches

        batches = logged_batches(batches, loader, run_url.removeprefix("file://"), rank, world, state.step)
    return fit(state, images_of(batches), cfg.optim.steps, hooks, precision=plan.precision,
               grad_clip=cfg.optim.grad_clip, channels_last=cfg.optim.channels_last, world_size=world)


def publish_to_run_folder(run_url: str, storage_options: dict | None = None) -> Publish:
    """A `Publish` without Ray: copy each checkpoint folder to `{run}/checkpoint_<step>`
    (for single-process runs, tests and benchmarks; Ray Train does this in a real run)."""
    from ..storage import filesystem, join
    from .layout import checkpoint_name

    def publish(folder: str, metrics: dict[str, Any], step: int) -> None:
        fs, path = filesystem(join(run_url, checkpoint_name(step)), storage_options)
        fs.put(folder.rstrip("/") + "/", path, recursive=True)

    return publish
