"""What the evaluation pool writes next to a run, in `{run}/eval/`:

    <step>.json      one record per evaluated checkpoint (step zero-padded to 8 digits, as
                     the checkpoint folders); its presence marks the step as evaluated
    metrics.jsonl    the same records, appended in the order they finished
    metrics.md       a Markdown table of all records by step, rewritten after each one
    metrics.png      metrics against step
    failures.jsonl   checkpoints that could not be evaluated, with the reason
    tensorboard/     `eval/*` scalars
    figures/         decomposition_<step>.png, generation_<step>.png (written by the actors)

Only the driver writes these files (the actors write figures), so nothing races (one
driver per run: evaluation/lease.py). `<step>.json` is the record of truth: an evaluator
killed between writing it and its `metrics.jsonl` line leaves the line to be mended by the
next one (`EvalReport` rewrites `metrics.jsonl` from the records when they disagree).
"""
from __future__ import annotations

import json
import math
from typing import Any, Sequence

from ..storage import filesystem, is_remote, join
from ..training.layout import EVAL_FOLDER, HISTORY_FILE, eval_record_name, eval_record_step
# (record key, column title, format) in table order; columns without values are left out
COLUMNS = (
    ("elbo", "ELBO", ".1f"), ("err", "err", ".1f"), ("kl", "KL", ".1f"),
    ("ari_fg", "ARI-FG", ".3f"), ("one_slot_ari_fg", "one-slot ARI-FG", ".3f"), ("msc_fg", "MSC-FG", ".3f"),
    ("one_slot_msc_fg", "one-slot MSC-FG", ".3f"), ("sc_fg", "SC-FG", ".3f"), ("ari", "ARI", ".3f"),
    ("fg_bg_ari", "fg/bg ARI", ".3f"), ("colour_ari_fg", "colour ARI-FG", ".3f"),
    ("att_ari_fg", "att ARI-FG", ".3f"), ("att_msc_fg", "att MSC-FG", ".3f"),
    ("flex_ari_fg", "flex ARI-FG", ".3f"), ("flex_mean_slots", "slots", ".2f"), ("flex_slots_mae", "slots MAE", ".2f"),
    ("fid", "FID", ".1f"), ("eval_seconds", "s", ".1f"),
)
PLOTTED = ("elbo", "err", "kl", "ari_fg", "msc_fg", "att_ari_fg", "fid")


def format_value(value: Any, spec: str) -> str:
    """A table cell: numbers with `spec`, missing / NaN as an em dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return format(value, spec) if isinstance(value, (int, float)) else str(value)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub Markdown table (one line per row, trailing newline)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def metrics_table(records: Sequence[dict[str, Any]]) -> str:
    """Markdown table of evaluation records, one row per step, columns that have values."""
    columns = [c for c in COLUMNS if any(r.get(c[0]) is not None for r in records)]
    rows = [[str(r["step"])] + [format_value(r.get(key), spec) for key, _, spec in columns]
            for r in sorted(records, key=lambda r: r["step"])]
    return markdown_table(["step"] + [title for _, title, _ in columns], rows)


def read_records(run_url: str, storage_options: dict | None = None) -> dict[int, dict[str, Any]]:
    """{step: record} of every `eval/<step>.json` of a run (empty when none)."""
    fs, path = filesystem(join(run_url, EVAL_FOLDER), storage_options)
    try:
        names = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)]
    except FileNotFoundError:
        return {}
    records = {}
    for name in names:
        if eval_record_step(name) is not None:
            record = json.loads(fs.cat_file(f"{path}/{name}"))
            records[int(record["step"])] = record
    return records


def _append_line(url: str, line: str, storage_options: dict | None) -> None:
    fs, path = filesystem(url, storage_options)
    if not is_remote(url):
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        with fs.open(path, "a") as f:
            f.write(line + "\n")
        return
    old = fs.cat_file(path) if fs.exists(path) else b""  # object stores have no append
    fs.pipe_file(path, old + (line + "\n").encode())


class EvalReport:
    """Writes a run's evaluation outputs (see module docstring)."""

    def __init__(self, run_url: str, storage_options: dict | None = None):
        self.run_url = run_url
        self.folder = join(run_url, EVAL_FOLDER)
        self.storage_options = storage_options
        self.records = read_records(run_url, storage_options)
        self._logger = None
        self._mend_history()

    def _mend_history(self) -> None:
        """Make `metrics.jsonl` list each record once (in the order they were evaluated)."""
        fs, path = filesystem(join(self.folder, HISTORY_FILE), self.storage_options)
        try:
            steps = [int(json.loads(line)["step"]) for line in fs.cat_file(path).decode().splitlines() if line.strip()]
        except FileNotFoundError:
            steps = []
        except (ValueError, KeyError):  # a line cut off mid-write
            steps = None
        if steps is not None and sorted(steps) == sorted(self.records):
            return
        ordered = sorted(self.records.values(), key=lambda r: (str(r.get("evaluated_at", "")), r["step"]))
        fs.pipe_file(path, "".join(json.dumps(r, sort_keys=True, allow_nan=True) + "\n" for r in ordered).encode())

    def evaluated_steps(self) -> set[int]:
        return set(self.records)

    def add(self, record: dict[str, Any]) -> None:
        """Store one checkpoint's record: `<step>.json`, a `metrics.jsonl` line, TensorBoard
        scalars, then the table and plot of all records so far."""
        step = int(record["step"])
        text = json.dumps(record, sort_keys=True, allow_nan=True)
        fs, path = filesystem(join(self.folder, eval_record_name(step)), self.storage_options)
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        fs.pipe_file(path, (json.dumps(record, indent=1, sort_keys=True) + "\n").encode())
        _append_line(join(self.folder, HISTORY_FILE), text, self.storage_options)
        self.records[step] = record
        self._tensorboard(step, record)
        self.write_summary()

    def add_failure(self, failure: dict[str, Any]) -> None:
        """Append a failed checkpoint (`step`, `checkpoint`, `error`) to `failures.jsonl`."""
        _append_line(join(self.folder, "failures.jsonl"), json.dumps(failure, sort_keys=True), self.storage_options)

    def write_summary(self) -> None:
        """Rewrite `metrics.md` and `metrics.png` from all records."""
        records = list(self.records.values())
        fs, path = filesystem(join(self.folder, "metrics.md"), self.storage_options)
        fs.pipe_file(path, (f"# Evaluation of {self.run_url}\n\n" + metrics_table(records)).encode())
        keys = [k for k in PLOTTED if any(isinstance(r.get(k), (int, float)) for r in records)]
        if keys:
            from ..figures import plot_metrics

            history = sorted(records, key=lambda r: r["step"])
            plot_metrics(history, keys, join(self.folder, "metrics.png"), self.storage_options)

    def _tensorboard(self, step: int, record: dict[str, Any]) -> None:
        if self._logger is None:
            from ..training.run_log import RunLogger

            self._logger = RunLogger(self.folder, self.storage_options)
        numbers = {k: float(v) for k, v in record.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"}
        self._logger.scalars(step, numbers, prefix="eval")
        self._logger.flush()

    def close(self) -> None:
        if self._logger is not None:
            self._logger.close()
