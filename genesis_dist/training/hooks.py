"""The components a run composes around `loop.fit`: run log, figures, checkpoints,
fault injection, the finished marker. Ray-free: the Ray worker passes in what is
Ray's (a `publish` callable that reports a checkpoint folder)."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import tempfile
import time
from typing import Any, Callable

import torch
from omegaconf import DictConfig, OmegaConf

from ..storage import filesystem, join, without_secrets
from .checkpoint import rng_state, save_best, save_checkpoint
from .layout import FIGURES_FOLDER, FINISHED_FILE, HISTORY_FILE, figure_name, worker_file
from .loop import Hook, TrainState, evaluate_batch
from .progress import TICK_SECONDS, Progress, heldout_event, print_events, step_event, tick_event

Publish = Callable[[str, dict[str, Any], int], None]  # (checkpoint folder, metrics, step)


def parameters_digest(model: torch.nn.Module) -> str:
    """sha256 of all parameter bytes, in registration order."""
    digest = hashlib.sha256()
    for p in model.parameters():
        digest.update(p.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def isolated_rng(device: torch.device):
    """Evaluation and figures draw random numbers without moving the training RNG,
    so a resumed run sees exactly the noise an uninterrupted run would."""
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


def read_history(url: str, storage_options: dict | None, upto_step: int) -> list[dict[str, Any]]:
    """Records of `metrics.jsonl` up to `upto_step` (a resumed run drops later ones)."""
    fs, path = filesystem(url, storage_options)
    if not fs.exists(path):
        return []
    records = [json.loads(line) for line in fs.cat_file(path).decode().splitlines() if line.strip()]
    return [r for r in records if r.get("step", 0) <= upto_step]


def write_history(url: str, records: list[dict[str, Any]], storage_options: dict | None) -> None:
    fs, path = filesystem(url, storage_options)
    with fs.open(path, "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records))


class InjectedFailure(Hook):
    """Fault injection for tests: the last rank SIGKILLs itself once at `kill_at_step`
    (a marker file in the run folder makes it once per run)."""

    def __init__(self, kill_at_step: int | None, rank: int, world: int, run_url: str):
        self.kill_at_step, self.armed, self.marker = kill_at_step, rank == world - 1, join(run_url, "injected_failure")

    def before_step(self, state: TrainState, step: int) -> None:
        if self.kill_at_step is None or step != self.kill_at_step or not self.armed:
            return
        fs, path = filesystem(self.marker)
        if fs.exists(path):
            return
        fs.pipe_file(path, str(step).encode())
        os.kill(os.getpid(), signal.SIGKILL)


class RunLog(Hook):
    """Rank 0's record of training: every `log_every` steps TensorBoard scalars, a record in
    `metrics.jsonl` (written at checkpoints) and a `step` event for whoever watches
    (`progress`, training/progress.py), between them a `tick` event at most every
    TICK_SECONDS, and the held-out scores of each checkpoint as a `heldout` event."""

    def __init__(self, run_url: str, log_every: int, total_steps: int, logger, storage_options: dict | None,
                 start_step: int = 0, progress: Progress = print_events):
        self.log_every, self.total, self.logger = log_every, total_steps, logger
        self.storage_options = storage_options
        self.history_url = join(run_url, HISTORY_FILE)
        self.history = read_history(self.history_url, storage_options, start_step)
        self.progress = progress
        self.last_tick = time.monotonic()

    def wants_metrics(self, step: int) -> bool:
        return step % self.log_every == 0

    def after_step(self, state: TrainState, metrics: dict[str, float] | None) -> None:
        if metrics is None:
            if time.monotonic() - self.last_tick >= TICK_SECONDS:
                self.last_tick = time.monotonic()
                self.progress(tick_event(state.step))
            return
        self.history.append(dict(metrics))
        self.logger.scalars(state.step, {k: v for k, v in metrics.items() if k != "step"})
        self.last_tick = time.monotonic()
        self.progress(step_event(state.step, self.total, metrics))

    def add_eval(self, step: int, scores: dict[str, float]) -> None:
        """Held-out scores join the step's record and TensorBoard; the history is saved."""
        if self.history and self.history[-1].get("step") == step:
            self.history[-1].update({f"eval_{k}": v for k, v in scores.items()})
        self.logger.scalars(step, scores, prefix="heldout")
        write_history(self.history_url, self.history, self.storage_options)
        self.logger.flush()
        self.progress(heldout_event(step, scores))

    def on_end(self, state: TrainState) -> None:
        self.logger.close()


class Figures(Hook):
    """Rank 0: decomposition and sample figures (`genesis_dist.figures`) every `image_every`
    steps and at the end, to TensorBoard and `{run}/figures/`. The decomposition shows the
    first 8 held-out images, captioned with their scores (against ground-truth `masks`
    `[N, H, W]` when the data has them); models that cannot sample get no sample figure."""

    def __init__(self, run_url: str, image_every: int, total_steps: int, heldout: torch.Tensor, logger,
                 storage_options: dict | None, masks: torch.Tensor | None = None):
        self.run_url, self.every, self.total = run_url, image_every, total_steps
        self.images, self.logger, self.storage_options = heldout[:8], logger, storage_options
        self.masks = masks[:8] if masks is not None else None

    def after_step(self, state: TrainState, metrics: dict[str, float] | None) -> None:
        if state.step % self.every and state.step != self.total:
            return
        from ..figures import decomposition_figure, generation_figure, save_png, scores_caption
        from ..models import is_generative

        model = state.module
        generative = is_generative(model)
        with isolated_rng(self.images.device):
            was_training = model.training
            model.eval()
            with torch.no_grad():
                out = model(self.images)
                samples = model.sample(len(self.images)) if generative else None
            model.train(was_training)
        caption = scores_caption("held-out decomposition", state.step, out.log_masks, self.masks,
                                 out.elbo if generative else None, log_att_masks=out.log_att_masks)
        figures = {"decomposition": decomposition_figure(self.images, out.recon, out.log_masks, out.components,
                                                         out.log_att_masks, caption)}
        if samples is not None:
            caption = scores_caption("prior samples, slots added one at a time", state.step)
            figures["samples"] = generation_figure(samples.images, samples.components, samples.log_masks, caption)
        for name, figure in figures.items():
            self.logger.image(state.step, name, figure)
            save_png(figure, join(self.run_url, FIGURES_FOLDER, figure_name(name, state.step)), self.storage_options)


class Checkpoints(Hook):
    """Every `checkpoint_every` steps and at the end: rank 0 scores the held-out batch and
    writes the training state (and, when the held-out ELBO improved, a new best checkpoint
    through `save_best`: never in place); every rank adds its RNG, data position and the
    count of corrupt samples/shards its stream skipped (`data_skipped`); `publish` hands
    the folder on (to Ray Train, which keeps the last `keep_checkpoints` and resumes from
    them). The stored config holds no secrets (`storage.without_secrets`).

    `loader` is the rank's data stream (its `state_dict` is its position).
    """

    def __init__(self, cfg: DictConfig, run_url: str, rank: int, loader, publish: Publish,
                 storage_options: dict | None = None, heldout: tuple[torch.Tensor, torch.Tensor | None] | None = None,
                 run_log: RunLog | None = None, best_score: float | None = None):
        self.cfg, self.run_url, self.rank, self.loader, self.publish = cfg, run_url, rank, loader, publish
        self.heldout, self.run_log, self.best = heldout, run_log, best_score
        self.every, self.total = cfg.run.checkpoint_every, cfg.optim.steps
        self.storage_options = storage_options

    def wants_metrics(self, step: int) -> bool:
        return step % self.every == 0 or step == self.total

    def after_step(self, state: TrainState, metrics: dict[str, float] | None) -> None:
        if not self.wants_metrics(state.step):
            return
        step, eval_scores = state.step, {}
        if self.heldout is not None:
            with isolated_rng(self.heldout[0].device):
                eval_scores = evaluate_batch(state.module, *self.heldout)
        score = eval_scores.get("elbo")
        improved = score is not None and (self.best is None or score > self.best)
        self.best = score if improved else self.best
        with tempfile.TemporaryDirectory() as folder:
            if self.rank == 0:
                train_state = state.state_dict()
                meta = {"step": step, "best_score": self.best, "metrics": metrics, "eval": eval_scores,
                        "data_skipped": self._skipped(), "data_position": self._position(),
                        "config": without_secrets(OmegaConf.to_container(self.cfg))}
                save_checkpoint(folder, train_state, meta)
                if improved:
                    save_best(self.run_url, train_state, meta, self.storage_options)
                if self.run_log is not None:
                    self.run_log.add_eval(step, eval_scores)
            worker_state = {
                "rng": rng_state(), "data": self.loader.state_dict(), "data_skipped": self._skipped(),
                # Lets anyone check that DDP kept every rank identical.
                "beta": state.objective.beta, "params_sha256": parameters_digest(state.module),
            }
            torch.save(worker_state, os.path.join(folder, worker_file(self.rank)))
            self.publish(folder, {**(metrics or {}), **{f"eval_{k}": v for k, v in eval_scores.items()}}, step)

    def _position(self) -> dict[str, int] | None:
        """{"epoch", "trained": samples of it trained on by all ranks} (every rank's exact
        reading position is in its worker file: what an elastic restart resumes from)."""
        position = getattr(self.loader, "epoch_position", None)
        return dict(position(), world_size=self.loader.layout.world_size) if position else None

    def _skipped(self) -> int:
        """Corrupt samples and shards this rank's stream skipped so far (since it started)."""
        return int(getattr(self.loader, "corrupt_total", 0))


class FinishedMarker(Hook):
    """Rank 0 writes `{run}/finished.json` when the run reaches its last step, which
    `genesis_dist.evaluate --watch` waits for."""

    def __init__(self, run_url: str, total_steps: int, storage_options: dict | None):
        self.run_url, self.total, self.storage_options = run_url, total_steps, storage_options

    def on_end(self, state: TrainState) -> None:
        if state.step < self.total:
            return
        fs, path = filesystem(join(self.run_url, FINISHED_FILE), self.storage_options)
        fs.pipe_file(path, json.dumps({"step": state.step}).encode())
