"""Checkpoint files: one `state.pt` (loadable with `weights_only=True`) and a
`meta.json` written last that records the step and the state file's sha256.

A checkpoint is valid only if `meta.json` exists and the sha256 matches, so a
crash mid-write never leaves a checkpoint that loads as valid. Works on any
fsspec URL (local path, s3://, gs://).
"""
from __future__ import annotations

import hashlib
import io
import json
import random
from typing import Any

import fsspec
import numpy as np
import torch

STATE_FILE = "state.pt"
META_FILE = "meta.json"
FORMAT_VERSION = 1


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
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
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
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    try:
        with fs.open(f"{path}/{META_FILE}", "r") as f:
            return json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{url}: incomplete checkpoint (no {META_FILE})") from None
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{url}: unreadable {META_FILE}: {err}") from None


def load_checkpoint(url: str, storage_options: dict | None = None, map_location: str | torch.device = "cpu") -> tuple[dict, dict]:
    """Load and verify a checkpoint folder: returns (state, meta).

    Uses `torch.load(weights_only=True)`: no arbitrary code runs on load.
    """
    meta = read_meta(url, storage_options)
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    try:
        with fs.open(f"{path}/{STATE_FILE}", "rb") as f:
            payload = f.read()
    except FileNotFoundError:
        raise CheckpointError(f"{url}: missing {STATE_FILE}") from None
    if hashlib.sha256(payload).hexdigest() != meta.get("sha256"):
        raise CheckpointError(f"{url}: {STATE_FILE} does not match the sha256 in {META_FILE} (corrupt or partial)")
    state = torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    return state, meta
