"""The sweep report's check for swept values that changed nothing: trials whose held-out
curves (read back from their run folders' metrics.jsonl) repeat an earlier trial's exactly."""
import json

from genesis_dist.tuning.report import heldout_curve, repeated_curves, repeats_note, trials_table


def _run(tmp_path, name, evals, extra_lines=()):
    folder = tmp_path / name
    folder.mkdir()
    lines = [json.dumps({"step": s, "loss": 1.0}) for s in (50, 100)] + list(extra_lines)
    lines += [json.dumps({"step": s, **{f"eval_{k}": v for k, v in scores.items()}}) for s, scores in evals]
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return str(folder)


def test_a_trial_whose_curve_repeats_an_earlier_one_is_named_with_the_inert_key(tmp_path):
    a = [(500, {"ari_fg": 0.2, "err": 2000.0}), (1000, {"ari_fg": 0.3, "err": 1900.0})]
    runs = {
        "t0": _run(tmp_path, "t0", a),
        "t1": _run(tmp_path, "t1", a[:1]),  # stopped early, same curve as far as it went
        "t2": _run(tmp_path, "t2", [a[0], (1000, {"ari_fg": 0.3, "err": 1900.5})]),  # differs at step 1000
        "t3": _run(tmp_path, "t3", [(1500, {"ari_fg": 0.2, "err": 2000.0})]),  # no step in common
        "t4": _run(tmp_path, "t4", []),  # never evaluated
    }
    curves = {t: heldout_curve(url) for t, url in runs.items()}
    assert curves["t0"] == {500: {"eval_ari_fg": 0.2, "eval_err": 2000.0}, 1000: {"eval_ari_fg": 0.3, "eval_err": 1900.0}}
    repeats = repeated_curves(curves)
    assert repeats == {"t1": "t0"}
    records = [{"trial": t, "params": {"goal": g, "kernel": "gaussian"}, "status": "finished", "step": 1000,
                "metrics": {}, "run": runs[t]} for t, g in zip(sorted(runs), (0.1, 0.2, 0.1, 0.1, 0.1))]
    note = repeats_note(records, repeats)
    assert note.startswith("1 of 5 trials repeat") and "goal changed nothing" in note and "kernel" not in note
    table = trials_table(records, "eval_ari_fg", repeats)
    assert "same curve as" in table.splitlines()[0]
    last_cells = [line.strip().strip("|").split("|")[-1].strip() for line in table.splitlines()[2:]]
    assert last_cells == ["", "t0", "", "", ""]
    assert "same curve as" not in trials_table(records, "eval_ari_fg", {})
    assert heldout_curve(str(tmp_path / "missing")) == {}
