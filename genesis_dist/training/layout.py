"""The run folder's layout, `{run.storage_path}/{run.name}/`: the one place its names
are written down. Everything that writes or reads a run folder — training, evaluation,
sweeps, the importer of released models — builds and parses names here.

    config.yaml                  the resolved TrainConfig, without secrets
    metrics.jsonl                training's records (and eval/metrics.jsonl, evaluation's)
    finished.json                written once training reached its last step
    checkpoint_<step:08d>/       state.pt, meta.json (written last: the checkpoint is
                                 complete), worker_<rank>.pt (each rank's RNG and data position)
    best.json, best-<step:08d>-<tag>/   the best checkpoint and the pointer to it
    figures/ tensorboard/        training's pictures and TensorBoard events
    eval/                        evaluation's records (`<step:08d>.json`), figures, lease
    sample_keys/                 (debugging) the sample keys each rank trained on
    release.json                 a run imported from the authors' release: its provenance (released.py)
"""
from __future__ import annotations

import re

CONFIG_FILE = "config.yaml"
HISTORY_FILE = "metrics.jsonl"
FINISHED_FILE = "finished.json"
STATE_FILE = "state.pt"
META_FILE = "meta.json"
BEST_POINTER = "best.json"  # {"folder": "best-<step>-<tag>", "step", "sha256", "best_score"}
BEST_PREFIX = "best-"
FIGURES_FOLDER = "figures"
TENSORBOARD_FOLDER = "tensorboard"
EVAL_FOLDER = "eval"
SAMPLE_KEYS_FOLDER = "sample_keys"
RELEASE_FILE = "release.json"

_CHECKPOINT = re.compile(r"checkpoint_(\d+)")
_WORKER = re.compile(r"worker_(\d+)\.pt")
_EVAL_RECORD = re.compile(r"(\d{8})\.json")


def checkpoint_name(step: int) -> str:
    """`checkpoint_<step:08d>`: the folder of the checkpoint taken after optimiser step `step`."""
    return f"checkpoint_{step:08d}"


def checkpoint_step(name: str) -> int | None:
    """The step of a checkpoint folder's name (its last path component may be given with
    the path before it), or None when it is not one."""
    match = _CHECKPOINT.fullmatch(name.rstrip("/").rsplit("/", 1)[-1])
    return int(match.group(1)) if match else None


def worker_file(rank: int) -> str:
    """`worker_<rank>.pt`: a rank's own state inside a checkpoint folder (RNG, data position)."""
    return f"worker_{rank}.pt"


def worker_rank(name: str) -> int | None:
    """The rank of a `worker_<rank>.pt` file name, or None when it is not one."""
    match = _WORKER.fullmatch(name)
    return int(match.group(1)) if match else None


def best_name(step: int, tag: str) -> str:
    """`best-<step:08d>-<tag>`: a best checkpoint's folder (a new one each time: object stores
    cannot rename, so the pointer `best.json` switches instead)."""
    return f"{BEST_PREFIX}{step:08d}-{tag}"


def figure_name(kind: str, step: int) -> str:
    """`<kind>_<step:08d>.png` inside `figures/` (kind: decomposition, samples, generation)."""
    return f"{kind}_{step:08d}.png"


def eval_record_name(step: int) -> str:
    """`<step:08d>.json` inside `eval/`: one checkpoint's evaluation record."""
    return f"{step:08d}.json"


def eval_record_step(name: str) -> int | None:
    """The step of an `eval/<step:08d>.json` record's name, or None when it is not one."""
    match = _EVAL_RECORD.fullmatch(name)
    return int(match.group(1)) if match else None
