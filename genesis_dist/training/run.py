"""One rank of a training run, assembled from a TrainConfig without Ray: the state
(model, objective, optimiser, schedule, scaler), the rank's data stream, resuming
from a checkpoint folder, and the standard hooks. `training/worker.py` runs it
inside Ray Train; tests and benchmarks run it directly."""
from __future__ import annotations

import os
from typing import Any, Callable, Iterator

import torch
from omegaconf import DictConfig

from ..config import effective_lr, per_worker_batch
from ..models import build_model
from .checkpoint import load_checkpoint, set_rng_state
from .hooks import Checkpoints, Figures, FinishedMarker, InjectedFailure, Publish, RunLog, worker_file
from .loop import (Hook, TrainState, fit, make_grad_scaler, make_objective, make_optimizer, seed_everything,
                   set_base_lr, use_channels_last)


def build_state(cfg: DictConfig, device: torch.device, world: int = 1) -> TrainState:
    """Model (same initial weights on every rank, from `run.seed`), objective, optimiser
    (learning rate scaled for the global batch of `world` workers) and schedule, scaler,
    at step 0."""
    seed_everything(cfg.run.seed, cfg.run.deterministic)
    model = build_model(cfg.model).to(device)
    if cfg.optim.channels_last:
        use_channels_last(model)
    optimizer, schedule = make_optimizer(model.parameters(), cfg.optim, effective_lr(cfg.optim, world))
    objective = make_objective(cfg.objective, cfg.model.img_size).to(device)
    return TrainState(model, objective, optimizer, schedule, make_grad_scaler(device, cfg.optim.precision))


def make_train_loader(cfg: DictConfig, rank: int, world: int):
    """The rank's stream of training batches (`per_worker_batch` images each)."""
    from ..data import make_loader

    return make_loader(
        cfg.data.url, cfg.data.train_split, per_worker_batch(cfg.optim, world), rank=rank, world_size=world,
        num_workers=cfg.data.num_workers, seed=cfg.run.seed, shuffle_buffer=cfg.data.shuffle_buffer,
        storage_options=dict(cfg.data.storage_options),
    )


def heldout_batch(cfg: DictConfig, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The first `run.eval_images` images `[N, 3, H, W]` of the evaluation split and their
    foreground label maps `[N, H, W]` (background entities such as ObjectsRoom's sky,
    floor and walls merged into 0), or None where the data has no masks."""
    from ..data import make_loader, read_manifest
    from ..metrics import foreground_labels

    storage_options = dict(cfg.data.storage_options)
    background_entities = read_manifest(cfg.data.url, storage_options).get("background_entities")
    loader = make_loader(
        cfg.data.url, cfg.data.eval_split, cfg.run.eval_images, rank=0, world_size=1, num_workers=0,
        seed=0, shuffle_buffer=0, drop_last=False, storage_options=storage_options,
    )
    batch = next(iter(loader))
    masks = batch.get("mask")
    if masks is None:
        return batch["image"].to(device), None
    return batch["image"].to(device), foreground_labels(masks, background_entities).to(device)


def restore(state: TrainState, loader, folder: str, rank: int, seed: int) -> float | None:
    """Load a checkpoint folder into `state` and the rank's data position and RNG;
    returns the run's best held-out score so far. The learning rate stays the one
    `state` was built with (scaled for this world size)."""
    saved, meta = load_checkpoint(folder)
    lr = state.schedule.base_lrs[0]
    state.load_state_dict(saved, int(meta["step"]))
    set_base_lr(state.optimizer, state.schedule, lr)
    worker_path = os.path.join(folder, worker_file(rank))
    if os.path.exists(worker_path):
        worker_state = torch.load(worker_path, weights_only=True)
        set_rng_state(worker_state["rng"])
        loader.load_state_dict(worker_state["data"])
    else:  # the world size changed: positions can't be carried over
        torch.manual_seed(seed + 7919 * (rank + 1) + state.step)
    return meta.get("best_score")


def seed_rank(seed: int, rank: int) -> None:
    """Per-rank sampling noise for a fresh run (the weights were seeded alike)."""
    torch.manual_seed(seed + 7919 * (rank + 1))


def images_of(batches: Iterator[dict[str, Any]]) -> Iterator[torch.Tensor]:
    for batch in batches:
        yield batch["image"]


def standard_hooks(cfg: DictConfig, run_url: str, rank: int, world: int, device: torch.device, loader,
                   publish: Publish, start_step: int = 0, best_score: float | None = None,
                   print_line: Callable[[str], None] = print) -> list[Hook]:
    """Fault injection, then on rank 0 the run log, figures and finished marker, and on
    every rank the checkpoints (rank 0 scoring `run.eval_images` held-out images)."""
    from .run_log import RunLogger

    storage_options = dict(cfg.data.storage_options)
    hooks: list[Hook] = [InjectedFailure(cfg.run.kill_at_step, rank, world, run_url)]
    run_log, heldout = None, None
    if rank == 0:
        logger = RunLogger(run_url, storage_options)
        heldout = heldout_batch(cfg, device)
        run_log = RunLog(run_url, cfg.run.log_every, cfg.optim.steps, logger, storage_options, start_step, print_line)
        hooks += [run_log, Figures(run_url, cfg.run.image_every, cfg.optim.steps, heldout[0], logger, storage_options,
                                   masks=heldout[1])]
    hooks.append(Checkpoints(cfg, run_url, rank, loader, publish, heldout, run_log, best_score))
    if rank == 0:
        hooks.append(FinishedMarker(run_url, cfg.optim.steps, storage_options))
    return hooks


def train_rank(cfg: DictConfig, run_url: str, rank: int, world: int, device: torch.device, publish: Publish,
               checkpoint_folder: str | None = None, wrap_model: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
               print_line: Callable[[str], None] = print) -> TrainState:
    """Run one rank of `cfg` to `optim.steps`: build, resume from `checkpoint_folder` if
    given, wrap the model (DDP) with `wrap_model`, and `fit` with the standard hooks."""
    state = build_state(cfg, device, world)
    loader = make_train_loader(cfg, rank, world)
    if rank == 0:
        batch = per_worker_batch(cfg.optim, world)
        print_line(f"[genesis-dist] {world} worker(s) × {batch} images = global batch {batch * world}; "
                   f"lr {state.schedule.base_lrs[0]:.3g} (optim.lr {cfg.optim.lr:g}, lr_scaling {cfg.optim.lr_scaling})")
    best = None
    if checkpoint_folder is not None:
        best = restore(state, loader, checkpoint_folder, rank, cfg.run.seed)
        if rank == 0:
            print_line(f"[genesis-dist] resumed from step {state.step}")
    else:
        seed_rank(cfg.run.seed, rank)
    if wrap_model is not None:
        state.model = wrap_model(state.model)
    hooks = standard_hooks(cfg, run_url, rank, world, device, loader, publish, state.step, best, print_line)
    return fit(state, images_of(loader.forever()), cfg.optim.steps, hooks, precision=cfg.optim.precision,
               grad_clip=cfg.optim.grad_clip, channels_last=cfg.optim.channels_last, world_size=world)


def publish_to_run_folder(run_url: str, storage_options: dict | None = None) -> Publish:
    """A `Publish` without Ray: copy each checkpoint folder to `{run}/checkpoint_<step>`
    (for single-process runs, tests and benchmarks; Ray Train does this in a real run)."""
    from ..storage import filesystem, join
    from .hooks import checkpoint_name

    def publish(folder: str, metrics: dict[str, Any], step: int) -> None:
        fs, path = filesystem(join(run_url, checkpoint_name(step)), storage_options)
        fs.put(folder.rstrip("/") + "/", path, recursive=True)

    return publish
