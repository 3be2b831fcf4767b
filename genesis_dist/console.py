"""What `python -m genesis_dist.train` shows while it runs: a header of a few lines (the
model and its size, the data and where it is, K, workers × batch, steps, precision, the
run folder, the dashboard), then one live progress bar (tqdm: step/total, ETA, err, KL, β,
img/s) advanced from rank 0's progress events (training/progress.py), the held-out line at
each checkpoint, and the closing lines. When the output is not a terminal (CI, `ray job
logs`), plain lines every `run.log_every` steps replace the bar.
"""
from __future__ import annotations

import sys
import threading
from typing import Any, Callable, TextIO

from omegaconf import DictConfig

from .training.progress import Event, format_event

MODEL_TITLES = {"genesis_v2": "GENESIS-V2", "genesis": "GENESIS", "genesis_s": "GENESIS-S", "monet": "MONet-G",
                "slot_attention": "Slot Attention", "bd_vae": "BD-VAE", "dc_vae": "DC-VAE"}


def header(cfg: DictConfig, *, parameters: int, train_images: int | None, test_images: int | None, has_mask: bool,
           workers: str, precision: str, device: str, resuming: bool, folder: str, dashboard: str | None) -> list[str]:
    """The lines printed before training starts (at most 7)."""
    model = cfg.model
    slots = "" if model.name in ("bd_vae", "dc_vae") else f", K={model.num_slots}"
    data = f"{cfg.data.name} at {cfg.data.url}"
    if train_images is not None:
        data += f" ({train_images:,} train / {test_images or 0:,} held-out images{', with masks' if has_mask else ''})"
    lines = [
        f"{MODEL_TITLES.get(model.name, model.name)} ({model.name}), {parameters:,} parameters, "
        f"{model.img_size} px{slots}",
        f"data: {data}",
        f"{workers} × {cfg.optim.batch_size if cfg.optim.global_batch_size is None else 'a share of'} images per step, "
        f"{cfg.optim.steps:,} steps, {precision} on {device}, lr {cfg.optim.lr:g}",
        f"run folder: {folder}" + (" (resuming)" if resuming else ""),
    ]
    aids = curriculum_summary(cfg)
    if aids:
        lines.append(f"training aids (not in the papers): {aids}")
    if dashboard:
        lines.append(f"Ray dashboard: {dashboard}")
    return [f"[genesis-dist] {line}" for line in lines]


def curriculum_summary(cfg: DictConfig) -> str:
    """The curriculum the config sets, in a few words ('' for the papers' fixed settings)."""
    cur = cfg.curriculum
    parts = []
    if cur.pixel_std_from is not None:
        parts.append(f"pixel σ {cur.pixel_std_from:g} → {cfg.model.pixel_std:g} over steps "
                     f"{cur.pixel_std_steps[0]:,}–{cur.pixel_std_steps[1]:,}")
    if float(cur.mask_guidance) > 0:
        parts.append(f"mask guidance {cur.mask_guidance:g}")
    if float(cur.colour_hint) > 0:
        parts.append(f"colour hint {cur.colour_hint:g}")
    return ", ".join(parts)


class ProgressView:
    """Shows progress events: a tqdm bar on a terminal (`bar=True`), else their lines.
    Held-out lines and notes are printed above the bar in both cases; the last step's
    held-out numbers are left to the closing line."""

    def __init__(self, total: int, start: int = 0, bar: bool | None = None, out: TextIO | None = None,
                 bar_out: TextIO | None = None):
        self.out, self.total = out or sys.stdout, total
        self.bar = None
        if bar if bar is not None else self.out.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, file=bar_out or sys.stderr,
                            desc="training", smoothing=0.1, mininterval=0.5)

    def show(self, event: Event) -> None:
        kind = event.get("kind")
        if self.bar is not None and kind in ("tick", "step"):
            self.bar.update(max(0, int(event["step"]) - self.bar.n))
            if kind == "step":
                self.bar.set_postfix(err=f"{event['err']:.1f}", KL=f"{event['kl']:.1f}", β=f"{event['beta']:.3g}",
                                     img_s=f"{event['img_per_s']:.1f}", refresh=False)
            return
        line = format_event(event)
        if line is None or (kind == "heldout" and event.get("step") == self.total):
            return
        if self.bar is not None:
            self.bar.write(line, file=self.out)
        else:
            print(line, file=self.out, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Follower:
    """Takes events from the board of a running trainer (`take()` returns the new ones) in a
    background thread and shows them, until `stop()`, which shows what is left."""

    def __init__(self, take: Callable[[], list[Event]], view: ProgressView, interval_s: float = 0.25):
        self.take, self.view, self.interval_s = take, view, interval_s
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name="genesis-progress", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.done.wait(self.interval_s):
            self._show_new()

    def _show_new(self) -> None:
        try:
            events = self.take()
        except Exception:  # noqa: BLE001 - the board went away with a failed run: the failure is reported
            return
        for event in events:
            self.view.show(event)

    def stop(self, drain_s: float = 1.0) -> None:
        """Stop following; the events rank 0 posted just before the end arrive within `drain_s`."""
        self.done.set()
        self.thread.join()
        deadline = threading.Event()
        for _ in range(max(1, int(drain_s / 0.25))):
            self._show_new()
            deadline.wait(0.25)
        self.view.close()


def closing_lines(folder: str, tensorboard: str, checkpoint: str | None, figure: str, heldout: str,
                  images: Any) -> list[str]:
    """The run's last lines; the very last holds its held-out numbers and the figure to open."""
    return [f"[genesis-dist] run folder: {folder}  TensorBoard: tensorboard --logdir {tensorboard}",
            f"[genesis-dist] latest checkpoint: {checkpoint or 'none'}",
            f"[genesis-dist] held-out ({images} images): {heldout} — open {figure}"]
