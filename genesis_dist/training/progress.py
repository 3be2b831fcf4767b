"""What a run tells the person watching it, as events from rank 0: where it is (`tick`,
cheap, at most every TICK_SECONDS), its training numbers every `run.log_every` steps
(`step`), its held-out numbers at every checkpoint (`heldout`) and notes (`note`). Ray-free:
the Ray worker hands the events to the driver, which draws a progress bar
(`genesis_dist/console.py`); without Ray they are printed as lines (`print_events`).
"""
from __future__ import annotations

import math
from typing import Any, Callable

Event = dict[str, Any]
Progress = Callable[[Event], None]
TICK_SECONDS = 0.5  # how often rank 0 says which step it is on, between metric reads


def tick_event(step: int) -> Event:
    return {"kind": "tick", "step": step}


def step_event(step: int, total: int, metrics: dict[str, float]) -> Event:
    """Training numbers of the window that ended at `step` (nats per image; img/s of all workers)."""
    return {"kind": "step", "step": step, "total": total,
            **{k: metrics[k] for k in ("err", "kl", "beta", "img_per_s") if k in metrics}}


def heldout_event(step: int, scores: dict[str, float]) -> Event:
    """Held-out scores at a checkpoint (keys as `training.loop.evaluate_batch` returns them)."""
    return {"kind": "heldout", "step": step, **{f"eval_{k}": v for k, v in scores.items()}}


def note_event(text: str) -> Event:
    return {"kind": "note", "text": text}


def _number(metrics: dict[str, Any], key: str, spec: str) -> str | None:
    value = metrics.get(key)
    return format(value, spec) if isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)) else None


def heldout_line(metrics: dict[str, Any]) -> str:
    """A run's held-out numbers on one line: err, KL, ELBO (nats per image) and, where the
    data has masks, foreground ARI and mSC of the decoder masks beside the one-slot answer's
    and the colour partition's, then those of GENESIS-V2's attention masks. `metrics` holds
    `eval_*` keys (a checkpoint's report) and `step`."""
    parts = [f"step {_number(metrics, 'step', 'd')}"] if _number(metrics, "step", "d") else []
    parts += [f"{name} {_number(metrics, key, '.1f')}" for name, key in (("err", "eval_err"), ("KL", "eval_kl"),
                                                                          ("ELBO", "eval_elbo")) if _number(metrics, key, ".1f")]
    for name, key in (("ARI-FG", "ari_fg"), ("mSC-FG", "msc_fg")):
        if _number(metrics, f"eval_{key}", ".3f"):
            beside = [f"one slot: {_number(metrics, f'eval_one_slot_{key}', '.3f')}"]
            if _number(metrics, f"eval_colour_{key}", ".3f"):
                beside.append(f"colour alone: {_number(metrics, f'eval_colour_{key}', '.3f')}")
            parts.append(f"{name} {_number(metrics, f'eval_{key}', '.3f')} ({'; '.join(beside)})")
    attention = [f"{name} {_number(metrics, f'eval_{key}_att', '.3f')}" for name, key in (("ARI-FG", "ari_fg"),
                                                                                        ("mSC-FG", "msc_fg"))
                 if _number(metrics, f"eval_{key}_att", ".3f")]
    if attention:
        parts.append("attention masks " + ", ".join(attention))
    return ", ".join(parts)


def format_event(event: Event) -> str | None:
    """The event as one line (None for ticks, which only move a progress bar)."""
    kind = event.get("kind")
    if kind == "step":
        return (f"[genesis-dist] step {event['step']}/{event['total']} err {event['err']:.1f} kl {event['kl']:.1f} "
                f"beta {event['beta']:.3g} {event['img_per_s']:.1f} img/s")
    if kind == "heldout":
        images = event.get("eval_images")
        return f"[genesis-dist] held-out{f' ({images} images)' if images else ''}: {heldout_line(event)}"
    if kind == "note":
        return f"[genesis-dist] {event['text']}"
    return None


def print_events(event: Event) -> None:
    """The progress of a run without a driver to draw it: one line per event on stdout."""
    line = format_event(event)
    if line is not None:
        print(line, flush=True)
