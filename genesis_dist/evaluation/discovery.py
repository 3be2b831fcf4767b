"""Finding a run's checkpoints while training may still be writing them.

A run folder `{run.storage_path}/{run.name}/` holds `checkpoint_<8-digit step>/` folders
(Ray-managed; older ones are deleted as training goes on), the best checkpoint (the
folder `best.json` points to), and `finished.json` once training has ended
(`training/layout.py` names them). A checkpoint is ready when its `meta.json` (written last) is readable and
`state.pt` has the size it records; anything else may still be uploading.

Training deletes all but the last `run.keep_checkpoints` checkpoints: the scanner notes
checkpoints that disappear (`vanished`), and `missed_steps` finds checkpoint steps that
were gone before any scan saw them, so the evaluator can warn about both.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import OmegaConf

from ..storage import filesystem, join
from ..training.checkpoint import BEST_ALIAS as BEST, best_checkpoint_url, checkpoint_status
from ..training.layout import BEST_POINTER, CONFIG_FILE, FINISHED_FILE, checkpoint_step


@dataclass(frozen=True)
class CheckpointInfo:
    """One checkpoint folder: its URL, the step its meta.json records, whether it is ready
    to evaluate (else `reason` says why not) and its meta (None until readable)."""

    name: str
    url: str
    step: int | None
    ready: bool
    reason: str = ""
    meta: dict[str, Any] | None = None


def run_exists(run_url: str, storage_options: dict | None = None) -> bool:
    """True when the run folder exists (is a directory / has objects under it)."""
    fs, path = filesystem(run_url, storage_options)
    return fs.isdir(path)


def run_finished(run_url: str, storage_options: dict | None = None) -> bool:
    """True once training wrote `finished.json` into the run folder."""
    fs, path = filesystem(join(run_url, FINISHED_FILE), storage_options)
    return fs.exists(path)


def missed_steps(run_url: str, present: set[int], evaluated: set[int], storage_options: dict | None = None) -> list[int]:
    """Checkpoint steps the run's stored config (`run.checkpoint_every`) says were written,
    up to the latest present, that are neither present nor evaluated: training deleted
    them first. [] when the run has no readable config.yaml."""
    if not present:
        return []
    fs, path = filesystem(join(run_url, CONFIG_FILE), storage_options)
    try:
        every = int(OmegaConf.create(fs.cat_file(path).decode()).run.checkpoint_every)
    except Exception:  # noqa: BLE001 - no config (a hand-made run folder): nothing to compare with
        return []
    return [s for s in range(every, max(present), every) if s not in present and s not in evaluated]


class CheckpointScanner:
    """Lists a run's checkpoints; remembers the meta.json of `checkpoint_*` folders (they
    never change once complete) so a poll reads only new folders and `best/`."""

    def __init__(self, run_url: str, storage_options: dict | None = None):
        self.run_url = run_url
        self.storage_options = storage_options
        self._metas: dict[str, dict[str, Any]] = {}
        self._seen: dict[str, int | None] = {}  # checkpoint_* name -> step (None until readable)
        self.vanished: list[tuple[str, int | None]] = []  # (name, step) gone since the last scan

    def scan(self) -> list[CheckpointInfo]:
        """Checkpoints sorted by step (incomplete ones last); a step present both as
        `checkpoint_*` and `best/` is listed once, as the former."""
        fs, path = filesystem(self.run_url, self.storage_options)
        fs.invalidate_cache()
        try:
            names = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)]
        except FileNotFoundError:
            return []
        names = sorted(n for n in names if checkpoint_step(n) is not None) + ([BEST] if BEST_POINTER in names else [])
        self._metas = {n: m for n, m in self._metas.items() if n in names}
        self.vanished = [(n, step) for n, step in self._seen.items() if n not in names]
        self._seen = {n: step for n, step in self._seen.items() if n in names}
        found, steps = [], set()
        for name in names:
            info = self._inspect(name)
            if name != BEST:
                self._seen[name] = info.step if info.step is not None else self._seen.get(name)
            if info.step is not None and info.step in steps:
                continue
            if info.step is not None:
                steps.add(info.step)
            found.append(info)
        return sorted(found, key=lambda c: (c.step is None, c.step or 0))

    def _inspect(self, name: str) -> CheckpointInfo:
        url = join(self.run_url, name)
        if name == BEST:  # follow the pointer: the folder it names is complete
            url = best_checkpoint_url(self.run_url, self.storage_options) or url
        if name in self._metas:  # complete before, and checkpoint folders never change
            meta = self._metas[name]
            return CheckpointInfo(name, url, int(meta["step"]), True, "", meta)
        meta, reason = checkpoint_status(url, self.storage_options)
        step = int(meta["step"]) if meta is not None else None
        if reason:
            return CheckpointInfo(name, url, step, False, reason, meta)
        if name != BEST:
            self._metas[name] = meta
        return CheckpointInfo(name, url, step, True, "", meta)
