"""A finished sweep, summarised without Ray: the table of trials (printed and written as
`{sweep}/sweep.md`) and the best trial's resolved config as `{sweep}/best.yaml`."""
from __future__ import annotations

import math
import sys
from typing import Any, Sequence

from ..evaluation.report import markdown_table
from ..storage import filesystem, join
from ..training.hooks import read_history
from ..training.layout import CONFIG_FILE, HISTORY_FILE

SHOWN_METRICS = ("eval_ari_fg", "eval_elbo", "eval_err", "eval_kl", "beta")


def best_trial(records: Sequence[dict[str, Any]], metric: str, mode: str) -> dict[str, Any] | None:
    """The trial whose last reported `metric` is best (failed trials and trials that
    never reported it are not candidates)."""
    candidates = [r for r in records if r["status"] != "failed" and _finite(r["metrics"].get(metric))]
    if not candidates:
        return None
    pick = max if mode == "max" else min
    return pick(candidates, key=lambda r: r["metrics"][metric])


def heldout_curve(run_url: str, storage_options: dict | None = None) -> dict[int, dict[str, float]]:
    """step → the `eval_*` values a run's `metrics.jsonl` holds for it (empty when unreadable)."""
    try:
        records = read_history(join(run_url, HISTORY_FILE), storage_options, upto_step=sys.maxsize)
    except (OSError, ValueError):
        return {}
    curve = {}
    for record in records:
        scores = {k: v for k, v in record.items() if k.startswith("eval_")}
        if scores and "step" in record:
            curve[int(record["step"])] = scores
    return curve


def repeated_curves(curves: dict[str, dict[int, dict[str, float]]]) -> dict[str, str]:
    """trial → the first trial (in id order) whose held-out curve it repeats exactly: every
    `eval_*` value equal at every step both reached, with at least one such step. The swept
    values in which the two differ then changed nothing up to there."""
    repeats: dict[str, str] = {}
    ids = sorted(curves)
    for i, trial in enumerate(ids):
        for earlier in ids[:i]:
            if earlier in repeats:
                continue
            shared = sorted(set(curves[trial]) & set(curves[earlier]))
            if shared and all(curves[trial][s] == curves[earlier][s] for s in shared):
                repeats[trial] = earlier
                break
    return repeats


def trials_table(records: Sequence[dict[str, Any]], metric: str, repeats: dict[str, str] | None = None) -> str:
    """Markdown: one row per trial — hyperparameters, status, steps, metrics, run folder, and
    (where `repeats` names any) the earlier trial whose held-out curve it repeats exactly."""
    params = sorted({k for r in records for k in r["params"]})
    shown = [metric] + [m for m in SHOWN_METRICS if m != metric]
    headers = ["trial", *params, "status", "steps", *shown, "run folder"] + (["same curve as"] if repeats else [])
    rows = []
    for r in records:
        rows.append([r["trial"], *(_cell(r["params"].get(k)) for k in params), r["status"], str(r["step"]),
                     *(_cell(r["metrics"].get(m)) for m in shown), r["run"]]
                    + ([repeats.get(r["trial"], "")] if repeats else []))
    return markdown_table(headers, rows)


def repeats_note(records: Sequence[dict[str, Any]], repeats: dict[str, str]) -> str | None:
    """One line naming the swept keys that changed nothing, or None."""
    if not repeats:
        return None
    params = {r["trial"]: r["params"] for r in records}
    inert = sorted({k for t, e in repeats.items() for k in params.get(t, {})
                    if params[t].get(k) != params.get(e, {}).get(k)})
    return (f"{len(repeats)} of {len(records)} trials repeat an earlier trial's held-out curve exactly "
            f"(column 'same curve as'): {', '.join(inert) or 'the swept keys'} changed nothing where they differ")


def write_summary(sweep_url: str, table: str, best: dict[str, Any] | None, metric: str,
                  storage_options: dict | None = None, note: str | None = None) -> str | None:
    """`sweep.md` (the table, `note`, and the best trial) and `best.yaml` (a copy of the best
    run's `config.yaml`); returns best.yaml's URL, or None without a best trial."""
    lines = [f"# Sweep {sweep_url.rstrip('/').rsplit('/', 1)[-1]}", "", table, ""] + ([note, ""] if note else [])
    best_url = None
    if best is not None:
        lines.append(f"Best by {metric}: {best['trial']} ({_cell(best['metrics'][metric])}), run folder {best['run']}.")
        fs, path = filesystem(join(best["run"], CONFIG_FILE), storage_options)
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
