"""A finished sweep, summarised without Ray: the table of trials (printed and written as
`{sweep}/sweep.md`) and the best trial's resolved config as `{sweep}/best.yaml`."""
from __future__ import annotations

import math
from typing import Any, Sequence

from ..evaluation.report import markdown_table
from ..storage import filesystem, join

SHOWN_METRICS = ("eval_ari_fg", "eval_elbo", "eval_err", "eval_kl", "beta")


def best_trial(records: Sequence[dict[str, Any]], metric: str, mode: str) -> dict[str, Any] | None:
    """The trial whose last reported `metric` is best (failed trials and trials that
    never reported it are not candidates)."""
    candidates = [r for r in records if r["status"] != "failed" and _finite(r["metrics"].get(metric))]
    if not candidates:
        return None
    pick = max if mode == "max" else min
    return pick(candidates, key=lambda r: r["metrics"][metric])


def trials_table(records: Sequence[dict[str, Any]], metric: str) -> str:
    """Markdown: one row per trial — hyperparameters, status, steps, metrics, run folder."""
    params = sorted({k for r in records for k in r["params"]})
    shown = [metric] + [m for m in SHOWN_METRICS if m != metric]
    headers = ["trial", *params, "status", "steps", *shown, "run folder"]
    rows = []
    for r in records:
        rows.append([r["trial"], *(_cell(r["params"].get(k)) for k in params), r["status"], str(r["step"]),
                     *(_cell(r["metrics"].get(m)) for m in shown), r["run"]])
    return markdown_table(headers, rows)


def write_summary(sweep_url: str, table: str, best: dict[str, Any] | None, metric: str,
                  storage_options: dict | None = None) -> str | None:
    """`sweep.md` (the table and the best trial) and `best.yaml` (a copy of the best run's
    `config.yaml`); returns best.yaml's URL, or None without a best trial."""
    lines = [f"# Sweep {sweep_url.rstrip('/').rsplit('/', 1)[-1]}", "", table, ""]
    best_url = None
    if best is not None:
        lines.append(f"Best by {metric}: {best['trial']} ({_cell(best['metrics'][metric])}), run folder {best['run']}.")
        fs, path = filesystem(join(best["run"], "config.yaml"), storage_options)
        best_url = join(sweep_url, "best.yaml")
        best_fs, best_path = filesystem(best_url, storage_options)
        best_fs.pipe_file(best_path, fs.cat_file(path))
    fs, path = filesystem(join(sweep_url, "sweep.md"), storage_options)
    fs.pipe_file(path, ("\n".join(lines) + "\n").encode())
    return best_url


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "—" if value is None else str(value)
