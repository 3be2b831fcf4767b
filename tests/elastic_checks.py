"""What an elastic run's sample-key logs (`run.log_sample_keys=true`) must show, shared by
the elastic test on `ray.cluster_utils` nodes and the cluster rehearsal's spot scenario."""
from __future__ import annotations

from collections import defaultdict

from genesis_dist.training.sample_log import read_attempts, trained_keys


def progress(run_folder) -> tuple[int, int | None, int | None, int | None]:
    """(attempts so far, the latest attempt's world size, its first and last logged step)."""
    try:
        attempts = read_attempts(str(run_folder))
    except FileNotFoundError:
        return 0, None, None, None
    if not attempts:
        return 0, None, None, None
    records = [r for ranks in attempts[max(attempts)].values() for r in ranks]
    if not records:
        return len(attempts), None, None, None
    return len(attempts), records[0]["world"], min(r["step"] for r in records), max(r["step"] for r in records)


def attempt_worlds(run_folder) -> list[int]:
    """Worker counts of the run's attempts in order, repeats of the same count merged
    (e.g. [2, 1, 2]: it lost a worker and got it back)."""
    worlds = [next(iter(ranks.values()))[0]["world"] for _, ranks in sorted(read_attempts(str(run_folder)).items())
              if any(ranks.values())]
    return [w for i, w in enumerate(worlds) if i == 0 or w != worlds[i - 1]]


def check_every_sample_once(run_folder, steps: int, samples: int, batch: int) -> dict[int, dict]:
    """Assert that the steps 1..`steps` of the final model's history each took `batch`
    samples per worker and that every epoch took each of the `samples` samples exactly once
    (the last one at most once); returns the history (sample_log.trained_keys)."""
    history = trained_keys(str(run_folder))
    assert sorted(history) == list(range(1, steps + 1))
    for step, entry in history.items():
        assert len(entry["keys"]) == batch * entry["world"], step
    epochs = defaultdict(list)
    for step in sorted(history):
        epochs[history[step]["epoch"]].extend(history[step]["keys"])
    everything = set(epochs[0])
    assert len(everything) == samples
    for epoch, keys in epochs.items():
        assert len(keys) == len(set(keys)), f"epoch {epoch} repeats samples"
        if epoch < max(epochs):
            assert set(keys) == everything, f"epoch {epoch} skipped {sorted(everything - set(keys))[:5]}"
    return history
