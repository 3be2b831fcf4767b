"""The per-worker training function that Ray Train runs on every rank.

Composes the Ray-free pieces (model, objective, `loop.train_step`, data
stream, checkpoint files, TensorBoard logger) and adds what distribution needs:
DDP, a per-rank data split, per-rank RNG and data positions in checkpoints.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import tempfile
import time
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from .checkpoint import CheckpointError, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .loop import evaluate_batch, make_grad_scaler, make_objective, seed_everything, train_step, use_channels_last
from ..models import build_model
from ..storage import filesystem, join


def parameters_digest(model: torch.nn.Module) -> str:
    """sha256 of all parameter bytes, in registration order."""
    digest = hashlib.sha256()
    for p in model.parameters():
        digest.update(p.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def checkpoint_name(step: int) -> str:
    return f"checkpoint_{step:08d}"


def _worker_file(rank: int) -> str:
    return f"worker_{rank}.pt"


def _heldout_batch(cfg: DictConfig, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The first `run.eval_images` images (and foreground label maps, background entities
    such as ObjectsRoom's sky, floor and walls merged into 0) of the evaluation split."""
    from ..data import make_loader, read_manifest
    from ..metrics import foreground_labels

    storage_options = dict(cfg.data.storage_options)
    background_entities = read_manifest(cfg.data.url, storage_options).get("background_entities")
    loader = make_loader(
        cfg.data.url, cfg.data.eval_split, cfg.run.eval_images, rank=0, world_size=1, num_workers=0,
        seed=0, shuffle_buffer=0, drop_last=False, storage_options=dict(cfg.data.storage_options),
    )
    batch = next(iter(loader))
    masks = batch.get("mask")
    if masks is None:
        return batch["image"].to(device), None
    return batch["image"].to(device), foreground_labels(masks, background_entities).to(device)


def _read_history(url: str, storage_options: dict | None, upto_step: int) -> list[dict[str, Any]]:
    """Records of `metrics.jsonl` up to `upto_step` (a resumed run drops later ones)."""
    fs, path = filesystem(url, storage_options)
    if not fs.exists(path):
        return []
    records = [json.loads(line) for line in fs.cat_file(path).decode().splitlines() if line.strip()]
    return [r for r in records if r.get("step", 0) <= upto_step]


def _write_history(url: str, records: list[dict[str, Any]], storage_options: dict | None) -> None:
    fs, path = filesystem(url, storage_options)
    with fs.open(path, "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records))


def _isolated_rng(device: torch.device):
    """Evaluation and figures draw random numbers without moving the training RNG,
    so a resumed run sees exactly the noise an uninterrupted run would."""
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


def _maybe_inject_failure(cfg: DictConfig, step: int, rank: int, world: int, run_url: str) -> None:
    """Fault injection for tests: the last rank SIGKILLs itself once at `run.kill_at_step`."""
    if cfg.run.kill_at_step is None or step != cfg.run.kill_at_step or rank != world - 1:
        return
    fs, path = filesystem(join(run_url, "injected_failure"))
    if fs.exists(path):
        return
    fs.pipe_file(path, str(step).encode())
    os.kill(os.getpid(), signal.SIGKILL)


def train_worker(config: dict[str, Any]) -> None:
    """Ray Train loop: `config = {"cfg": TrainConfig as a dict, "run_url": str}`."""
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    from ..data import make_loader
    from ..figures import decomposition_grid, generation_steps_figure, save_png
    from .run_log import RunLogger

    cfg = OmegaConf.create(config["cfg"])
    run_url = config["run_url"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    storage_options = dict(cfg.data.storage_options)

    seed_everything(cfg.run.seed, cfg.run.deterministic)
    model = build_model(cfg.model).to(device)  # same initial weights on every rank
    if cfg.optim.channels_last:
        use_channels_last(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr)
    objective = make_objective(cfg.objective, cfg.model.img_size)
    scaler = make_grad_scaler(device, cfg.optim.precision)
    loader = make_loader(
        cfg.data.url, cfg.data.train_split, cfg.optim.batch_size // world, rank=rank, world_size=world,
        num_workers=cfg.data.num_workers, seed=cfg.run.seed, shuffle_buffer=cfg.data.shuffle_buffer,
        storage_options=storage_options,
    )
    start_step, best = 0, None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state, meta = load_checkpoint(folder)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            objective.load_state_dict(state["objective"])
            if scaler is not None and state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            start_step, best = int(meta["step"]), meta.get("best_score")
            worker_path = os.path.join(folder, _worker_file(rank))
            if os.path.exists(worker_path):
                worker_state = torch.load(worker_path, weights_only=True)
                set_rng_state(worker_state["rng"])
                loader.load_state_dict(worker_state["data"])
            else:  # the world size changed: positions can't be carried over
                torch.manual_seed(cfg.run.seed + 7919 * (rank + 1) + start_step)
        if rank == 0:
            print(f"[genesis-dist] resumed from step {start_step}", flush=True)
    else:
        torch.manual_seed(cfg.run.seed + 7919 * (rank + 1))  # per-rank sampling noise

    ddp_model = ray.train.torch.prepare_model(model)
    logger = RunLogger(run_url, storage_options) if rank == 0 else None
    heldout = _heldout_batch(cfg, device) if rank == 0 else None
    history_url = join(run_url, "metrics.jsonl")
    history = _read_history(history_url, storage_options, start_step) if rank == 0 else []
    batches = loader.forever()
    total = cfg.optim.steps
    window_start, window_images = time.perf_counter(), 0
    metrics: dict[str, float] = {}
    for step in range(start_step + 1, total + 1):
        _maybe_inject_failure(cfg, step, rank, world, run_url)
        images = next(batches)["image"].to(device, non_blocking=True)
        metrics = train_step(
            ddp_model, objective, optimizer, images,
            precision=cfg.optim.precision, scaler=scaler, grad_clip=cfg.optim.grad_clip,
            channels_last=cfg.optim.channels_last,
        )
        window_images += images.shape[0]
        is_checkpoint = step % cfg.run.checkpoint_every == 0 or step == total
        if step % cfg.run.log_every == 0 or is_checkpoint:
            elapsed = time.perf_counter() - window_start
            metrics["img_per_s"] = window_images * world / max(elapsed, 1e-9)
            metrics["lr"] = optimizer.param_groups[0]["lr"]
            metrics["step"] = step
            window_start, window_images = time.perf_counter(), 0
            if logger is not None:
                history.append(dict(metrics))
                logger.scalars(step, {k: v for k, v in metrics.items() if k != "step"})
                print(
                    f"[genesis-dist] step {step}/{total} err {metrics['err']:.1f} kl {metrics['kl']:.1f} "
                    f"beta {metrics['beta']:.3g} {metrics['img_per_s']:.1f} img/s",
                    flush=True,
                )
        if logger is not None and (step % cfg.run.image_every == 0 or step == total):
            with _isolated_rng(device):
                _write_figures(model, heldout, logger, run_url, step, storage_options,
                               decomposition_grid, generation_steps_figure, save_png)
        if is_checkpoint:
            eval_scores = {}
            if rank == 0:
                with _isolated_rng(device):
                    eval_scores = evaluate_batch(model, *heldout)
            score = eval_scores.get("elbo")
            improved = score is not None and (best is None or score > best)
            best = score if improved else best
            with tempfile.TemporaryDirectory() as folder:
                if rank == 0:
                    state = {
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "objective": objective.state_dict(),
                        "scaler": scaler.state_dict() if scaler is not None else {},
                    }
                    meta = {
                        "step": step, "best_score": best, "metrics": metrics,
                        "eval": eval_scores, "config": OmegaConf.to_container(cfg),
                    }
                    save_checkpoint(folder, state, meta)
                    if improved:
                        save_checkpoint(join(run_url, "best"), state, meta, storage_options)
                    history[-1].update({f"eval_{k}": v for k, v in eval_scores.items()})
                    _write_history(history_url, history, storage_options)
                    logger.scalars(step, eval_scores, prefix="heldout")
                    logger.flush()
                worker_state = {
                    "rng": rng_state(), "data": loader.state_dict(),
                    # Lets anyone check that DDP kept every rank identical.
                    "beta": objective.beta, "params_sha256": parameters_digest(model),
                }
                torch.save(worker_state, os.path.join(folder, _worker_file(rank)))
                ray.train.report(
                    {**metrics, **{f"eval_{k}": v for k, v in eval_scores.items()}},
                    checkpoint=Checkpoint.from_directory(folder),
                    checkpoint_dir_name=checkpoint_name(step),
                )
    if logger is not None:
        logger.close()
        # Marks the run complete for `genesis_dist.evaluate --watch`.
        fs, path = filesystem(join(run_url, "finished.json"), storage_options)
        fs.pipe_file(path, json.dumps({"step": total}).encode())


def _write_figures(model, heldout, logger, run_url, step, storage_options, decomposition_grid, generation_steps_figure, save_png):
    """Decomposition grid of held-out images and step-by-step samples, to TensorBoard and PNG."""
    images, _ = heldout
    shown = images[:8]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model(shown)
        samples = model.sample(8)
    model.train(was_training)
    grid = decomposition_grid(shown, out.recon, out.log_masks, out.components)
    steps = generation_steps_figure(samples.components, samples.log_masks)
    logger.image(step, "decomposition", grid)
    logger.image(step, "samples", steps)
    save_png(grid, join(run_url, "figures", f"decomposition_{step:08d}.png"), storage_options)
    save_png(steps, join(run_url, "figures", f"samples_{step:08d}.png"), storage_options)
