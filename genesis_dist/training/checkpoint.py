"""Checkpoint files: one `state.pt` (loadable with `weights_only=True`) and a
`meta.json` written last that records the step and the state file's sha256.

A checkpoint is valid only if `meta.json` exists and the sha256 matches, so a
crash mid-write never leaves a checkpoint that loads as valid. Works on any
fsspec URL (local path, s3://, gs://).

A run's best checkpoint is never overwritten in place (object stores have no rename):
`save_best` writes a new folder `best-<step>-<tag>/` beside the old one, then switches the
pointer `best.json` (one atomic write, last), then deletes best folders older than the
previous one. Readers follow the pointer (`best_checkpoint_url`), so a crash or a failed
upload at any moment leaves the previous best loadable.
"""
from __future__ import annotations

import hashlib
import io
import json
import random
import uuid
from typing import Any

import numpy as np
import torch

from ..storage import filesystem, join, list_names, write_atomic
from .layout import BEST_POINTER, BEST_PREFIX, META_FILE, STATE_FILE, best_name, checkpoint_step, worker_file

FORMAT_VERSION = 1
BEST_ALIAS = "best"  # `RUN/best` names the folder RUN/best.json points to


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or corrupt; the message names it."""


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch CPU random states in a weights_only-safe form."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(url: str, state: dict[str, Any], meta: dict[str, Any], storage_options: dict | None = None) -> str:
    """Write `state` (tensors, numbers, strings, lists, dicts) and `meta` to the
    folder `url`; returns the state file's sha256. `meta` must hold `step`."""
    fs, path = filesystem(url, storage_options)
    fs.makedirs(path, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    digest = hashlib.sha256(payload).hexdigest()
    with fs.open(f"{path}/{STATE_FILE}", "wb") as f:
        f.write(payload)
    record = {**meta, "format": FORMAT_VERSION, "sha256": digest, "bytes": len(payload)}
    # Written last: its presence (with a matching hash) marks the checkpoint complete.
    with fs.open(f"{path}/{META_FILE}", "w") as f:
        json.dump(record, f, indent=1, default=str)
    return digest


def read_meta(url: str, storage_options: dict | None = None) -> dict[str, Any]:
    """The checkpoint's `meta.json`; CheckpointError if it is missing or unreadable."""
    fs, path = filesystem(url, storage_options)
    try:
        with fs.open(f"{path}/{META_FILE}", "r") as f:
            return json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{url}: incomplete checkpoint (no {META_FILE})") from None
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{url}: unreadable {META_FILE}: {err}") from None


def stored_model(meta: dict[str, Any]) -> torch.nn.Module:
    """A fresh model of the architecture a checkpoint's meta.json records (its run's
    validated `model` config; load the weights into it)."""
    from ..models import build_model
    from ..schema import ModelConfig

    return build_model(ModelConfig(**meta["config"]["model"]))


def load_checkpoint(url: str, storage_options: dict | None = None, map_location: str | torch.device = "cpu") -> tuple[dict, dict]:
    """Load and verify a checkpoint folder: returns (state, meta).

    Uses `torch.load(weights_only=True)`: no arbitrary code runs on load.
    """
    meta = read_meta(url, storage_options)
    fs, path = filesystem(url, storage_options)
    try:
        with fs.open(f"{path}/{STATE_FILE}", "rb") as f:
            payload = f.read()
    except FileNotFoundError:
        raise CheckpointError(f"{url}: missing {STATE_FILE}") from None
    if hashlib.sha256(payload).hexdigest() != meta.get("sha256"):
        raise CheckpointError(f"{url}: {STATE_FILE} does not match the sha256 in {META_FILE} (corrupt or partial)")
    state = torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    return state, meta


def save_best(run_url: str, state: dict[str, Any], meta: dict[str, Any], storage_options: dict | None = None) -> str:
    """Make `state` the run's best checkpoint without ever leaving no valid one: write the
    new folder `best-<step>-<tag>/` (state.pt, then meta.json), switch `best.json` to it
    (atomically, last), then delete best folders other than the new and the previous one
    (a reader that followed the old pointer a moment ago can still load it). Returns the
    new folder's URL."""
    previous = read_best_pointer(run_url, storage_options)
    name = best_name(int(meta["step"]), uuid.uuid4().hex[:6])
    url = join(run_url, name)
    digest = save_checkpoint(url, state, meta, storage_options)
    pointer = {"folder": name, "step": int(meta["step"]), "sha256": digest, "best_score": meta.get("best_score")}
    write_atomic(join(run_url, BEST_POINTER), json.dumps(pointer).encode(), storage_options)
    keep = {name, (previous or {}).get("folder")}
    for stale in list_names(run_url, storage_options):
        if stale.startswith(BEST_PREFIX) and stale not in keep:
            fs, stale_path = filesystem(join(run_url, stale), storage_options)
            try:
                fs.rm(stale_path, recursive=True)
            except FileNotFoundError:
                pass
    return url


def read_best_pointer(run_url: str, storage_options: dict | None = None) -> dict[str, Any] | None:
    """The run's `best.json` ({"folder", "step", "sha256", "best_score"}), or None when the
    run has none (or it is unreadable: it is written atomically, so that means no best)."""
    fs, path = filesystem(join(run_url, BEST_POINTER), storage_options)
    try:
        pointer = json.loads(fs.cat_file(path))
    except (FileNotFoundError, ValueError):
        return None
    return pointer if isinstance(pointer, dict) and isinstance(pointer.get("folder"), str) else None


def best_checkpoint_url(run_url: str, storage_options: dict | None = None) -> str | None:
    """The URL of the run's best checkpoint folder (where `best.json` points), or None."""
    pointer = read_best_pointer(run_url, storage_options)
    return join(run_url, pointer["folder"]) if pointer is not None else None


def resolve_checkpoint(url: str, storage_options: dict | None = None) -> str:
    """`url` itself, or for `RUN/best` (an alias) the folder `RUN/best.json` points to."""
    if url.rstrip("/").rsplit("/", 1)[-1] != BEST_ALIAS:
        return url
    run_url = url.rstrip("/").rsplit("/", 1)[0]
    return best_checkpoint_url(run_url, storage_options) or url


def checkpoint_status(url: str, storage_options: dict | None = None, with_workers: bool = False
                      ) -> tuple[dict[str, Any] | None, str]:
    """(meta, "") when the checkpoint folder at `url` is complete — meta.json readable with
    its step and config, state.pt of the size meta.json records and, `with_workers`, the
    `worker_<r>.pt` of every rank of the world that wrote it (meta.json's
    `data_position.world_size`) — else (meta or None, the reason it is not (yet) complete).
    Never raises for a folder still being uploaded."""
    fs, path = filesystem(url, storage_options)
    try:
        meta = json.loads(fs.cat_file(f"{path}/{META_FILE}"))
    except FileNotFoundError:
        return None, f"no {META_FILE} yet"
    except ValueError:
        return None, f"{META_FILE} not readable yet"
    if not isinstance(meta, dict) or "step" not in meta or "config" not in meta:
        return None, f"{META_FILE} lacks step/config"
    try:
        size = fs.size(f"{path}/{STATE_FILE}")
    except FileNotFoundError:
        return meta, f"no {STATE_FILE} yet"
    if meta.get("bytes") is not None and size != meta["bytes"]:
        return meta, f"{STATE_FILE} has {size} of {meta['bytes']} bytes"
    if with_workers:
        world = int((meta.get("data_position") or {}).get("world_size") or 1)
        missing = [worker_file(rank) for rank in range(world) if not fs.exists(f"{path}/{worker_file(rank)}")]
        if missing:
            return meta, f"no {', '.join(missing)} yet"
    return meta, ""


def latest_complete_checkpoint(run_url: str, storage_options: dict | None = None) -> tuple[int, str] | None:
    """(step, URL) of the newest `checkpoint_<step>` folder of a run that is complete with
    every rank's worker file (`checkpoint_status`), or None when there is none. This is
    what a re-run resumes from when Ray's own record of the run's checkpoints lags behind
    the folder (a driver killed before Ray saved it)."""
    steps = {name: checkpoint_step(name) for name in list_names(run_url, storage_options)}
    for name in sorted((n for n, s in steps.items() if s is not None), key=steps.get, reverse=True):
        url = join(run_url, name)
        meta, reason = checkpoint_status(url, storage_options, with_workers=True)
        if not reason:
            return int(meta["step"]), url
    return None
