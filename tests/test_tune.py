"""`python -m genesis_dist.tune` on a real local Ray cluster: a 2 × 2 sweep with ASHA,
its table, best.yaml and TensorBoard logs; a sweep whose driver is SIGKILLed and
resumed; bad input refused in one line before any trial starts."""
from __future__ import annotations

import re
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


from tiny_config import TINY  # noqa: E402

from genesis_dist import tune as tune_cli  # noqa: E402
from genesis_dist.config import find_config_dir, load_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ray_address():
    import ray_local

    yield ray_local.start(num_cpus=2)
    ray_local.stop()


@pytest.fixture
def config_dir(tmp_path, monkeypatch):
    """A copy of configs/ with the test's own sweep files (GENESIS_DIST_CONFIGS)."""
    folder = tmp_path / "configs"
    shutil.copytree(find_config_dir(), folder)
    monkeypatch.setenv("GENESIS_DIST_CONFIGS", str(folder))
    return folder


def _space(config_dir: Path, name: str, text: str) -> None:
    (config_dir / "tune" / f"{name}.yaml").write_text(text)


def _events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (path,) = folder.glob("events.out.tfevents*")
    accumulator = EventAccumulator(str(path))
    accumulator.Reload()
    return accumulator


@pytest.mark.integration
def test_a_2x2_sweep_stops_trials_early_and_writes_table_best_and_tensorboard(ray_address, shards, config_dir,
                                                                              tmp_path, capsys):
    _space(config_dir, "two_by_two", """
sweep: {metric: eval_elbo, mode: max, scheduler: asha, grace_period: 1, reduction_factor: 2}
space:
  objective.goal: {offset: [0.0, 0.01]}
  model.kernel: {grid: [gaussian, laplacian]}
""")
    status = tune_cli.main(["space=two_by_two", *TINY, f"data.url={shards}", f"run.storage_path={tmp_path / 'runs'}",
                            "optim.steps=8", "sweep.max_concurrent_trials=1"])
    assert status == 0
    sweep = tmp_path / "runs" / "tune-two_by_two-genesis_v2-multi_dsprites-demo"
    table = (sweep / "sweep.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "_0000" in line]
    assert len(rows) == 4
    assert any("| stopped early |" in row for row in rows) and any("| finished | 8 |" in row for row in rows)
    assert {"0.5655", "0.5755"} <= set(table.replace("|", " ").split())
    # best.yaml is the best trial's resolved config: train takes it as a base.
    best = load_config(["optim.steps=10"], base_file=sweep / "best.yaml")
    best_row = next(row for row in rows if f"| {best.run.name} |" in row)
    elbos = [float(row.split("|")[6]) for row in rows]
    assert float(best_row.split("|")[6]) == max(elbos)
    assert Path(best.run.storage_path) == sweep / "runs"
    # Every trial is a normal run folder with its checkpoints, and has Tune's TensorBoard
    # events: scalars against the training step, and the hyperparameters (HParams view).
    for row in rows:
        trial = row.split("|")[1].strip()
        assert list((sweep / "runs" / trial).glob("checkpoint_*/meta.json")) and (sweep / "runs" / trial / "config.yaml").exists()
        events = _events(sweep / trial)
        steps = [e.step for e in events.Scalars("ray/tune/eval_elbo")]
        assert steps[0] == 2 and steps == sorted(steps) and steps[-1] in (2, 4, 8)
        assert "_hparams_/session_start_info" in events.Tags()["tensors"] or events.PluginTagToContent("hparams")
    assert "best by eval_elbo" in capsys.readouterr().out


@pytest.mark.integration
@pytest.mark.slow  # Known open problem (2026-12-08): passes alone and with tests/test_train.py (69 s), but in the
# whole integration tier the resumed trial's worker group never gets its CPU (Ray Train's
# WorkerGroupStartupTimeoutError, retried until the 300 s timeout) although the killed sweep's
# actors and placement groups are gone; kept out of CI's tier until that is understood:
# python -m pytest --integration -m 'slow or not slow' tests/test_tune.py runs it.
def test_a_killed_sweep_resumes_only_unfinished_trials_from_their_checkpoints(ray_address, shards, config_dir,
                                                                               tmp_path):
    _space(config_dir, "kernels", """
sweep: {metric: eval_elbo, scheduler: fifo}
space:
  model.kernel: {grid: [gaussian, laplacian]}
""")
    args = [sys.executable, "-m", "genesis_dist.tune", "space=kernels", *TINY, f"data.url={shards}",
            f"run.storage_path={tmp_path / 'runs'}", "optim.steps=8", "run.keep_checkpoints=10",
            "sweep.max_concurrent_trials=1"]
    env = {**os.environ, "RAY_ADDRESS": ray_address}  # the driver joins the cluster, as `ray job submit` does
    runs = tmp_path / "runs" / "tune-kernels-genesis_v2-multi_dsprites-demo" / "runs"
    first = subprocess.Popen(args, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        finished, interrupted = None, None
        while time.monotonic() < deadline and interrupted is None:
            time.sleep(0.2)
            trials = sorted(runs.glob("*_0000*")) if runs.exists() else []
            finished = next((t for t in trials if (t / "finished.json").exists()), None)
            interrupted = next((t for t in trials if t != finished and finished is not None
                                and (t / "checkpoint_00000004" / "meta.json").exists()
                                and not (t / "finished.json").exists()), None)
        assert interrupted is not None, "the sweep never reached one finished and one half-done trial"
        os.killpg(first.pid, signal.SIGKILL)
        killed_at = time.time()
    finally:
        first.wait(timeout=60)
    # Ray kills a dead driver's actors (trial drivers, Train controllers, workers) in a
    # cascade; resubmitting while they still run would have two runs write one folder.
    from ray.util.state import list_actors, list_placement_groups

    def job_actors():  # Ray's own detached service actors (autoscaling coordinator) stay
        return [a for a in list_actors(filters=[("state", "=", "ALIVE")], detail=True) if not a.is_detached]

    def reserved_groups():  # a dead job's placement groups go after its actors, and hold the CPUs till then
        return list_placement_groups(filters=[("state", "=", "CREATED")])

    deadline = time.monotonic() + 90
    while (job_actors() or reserved_groups()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not job_actors(), "the killed sweep's actors are still alive"
    assert not reserved_groups(), "the killed sweep's placement groups still hold the cluster's CPUs"
    finished_history = (finished / "metrics.jsonl").read_bytes()
    early_checkpoint = (interrupted / "checkpoint_00000002" / "meta.json").stat().st_mtime

    try:
        again = subprocess.run(args, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired as err:
        raise AssertionError("the resumed sweep did not finish within 300 s:\n"
                             + (err.stderr or b"").decode(errors="replace")[-6000:]) from None
    assert again.returncode == 0, again.stderr[-2000:]
    # The finished trial did not run again; the interrupted one continued from its checkpoint:
    # the checkpoints it wrote before the kill were not written again, the later ones were.
    assert (finished / "metrics.jsonl").read_bytes() == finished_history
    assert f"Trial run_trial_{finished.name} started" not in again.stdout
    assert (interrupted / "checkpoint_00000002" / "meta.json").stat().st_mtime == early_checkpoint < killed_at
    assert (interrupted / "checkpoint_00000008" / "meta.json").stat().st_mtime > killed_at
    steps = [int(line.split('"step": ')[1].split(",")[0].rstrip("}")) for line in
             (interrupted / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))
    assert (interrupted / "finished.json").exists() and (interrupted / "checkpoint_00000008" / "meta.json").exists()
    assert "| finished | 8 |" in (runs.parent / "sweep.md").read_text()


@pytest.mark.parametrize("space, extra, message", [
    ("space:\n  model.nope: {grid: [1, 2]}\n", [], r"space\.model\.nope: not a key of the training config"),
    ("space: {}\n", [], r"the search space is empty"),
    ("space:\n  model.kernel: {grid: [gaussian]}\n", ["sweep.metric=eval_fid"],
     r"sweep\.metric='eval_fid' is not reported by the trials; choose one of: .*eval_ari_fg"),
    ("space:\n  model.num_slots: {grid: [abc]}\n", [], r"space\.model\.num_slots='abc'"),
    ("space:\n  model.kernel: {grid: [cosine]}\n", [], r"model\.kernel='cosine' is not allowed"),
    ("space:\n  model.kernel: {sobol: [1]}\n", [], r"space\.model\.kernel: unknown kind 'sobol'"),
    ("space:\n  model.kernel: {grid: [gaussian]}\n", ["sweep.mode=up"], r"sweep\.mode='up' is not allowed"),
])
def test_bad_input_is_one_line_before_any_trial(space, extra, message, shards, config_dir, tmp_path, capsys):
    _space(config_dir, "bad", space)
    status = tune_cli.main(["space=bad", *TINY, f"data.url={shards}", f"run.storage_path={tmp_path / 'runs'}", *extra])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1
    assert re.search(message, err), err
    assert not (tmp_path / "runs").exists()


def test_an_unknown_space_names_the_available_ones(capsys):
    assert tune_cli.main(["space=nope"]) == 2
    assert "space=nope: no such sweep; available: demo_aids, geco_kernels" in capsys.readouterr().err


@pytest.mark.integration
def test_a_trial_that_cannot_fit_the_local_cluster_is_one_line(ray_address, shards, config_dir, tmp_path, capsys):
    _space(config_dir, "one", "space:\n  model.kernel: {grid: [gaussian]}\n")
    status = tune_cli.main(["space=one", *TINY, f"data.url={shards}", f"run.storage_path={tmp_path / 'runs'}",
                            "scaling.cpus_per_worker=8"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1
    assert "one trial needs 8.05 CPUs (1 worker(s) × scaling.cpus_per_worker=8 + sweep.driver_cpus=0.05)" in err


def test_trials_get_no_aws_credentials_from_the_driver(monkeypatch):
    """Ray Tune would copy the driver's AWS credentials into each trial actor's runtime
    environment, which the dashboard shows; the sweep turns that off and keeps the
    variables that are no secret."""
    from ray.tune.execution import class_cache

    from genesis_dist.tuning.sweep import keep_credentials_out_of_trials

    monkeypatch.setattr(class_cache, "ENV_VARS_TO_PROPAGATE", class_cache.ENV_VARS_TO_PROPAGATE)  # restored after
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "driver-secret")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "driver-token")
    monkeypatch.setenv("RAY_CHDIR_TO_TRIAL_DIR", "0")

    class Trainable:
        pass

    class Other:
        pass

    def trial_env(cls) -> dict:
        return class_cache._ActorClassCache().get(cls)._default_options["runtime_env"]["env_vars"]

    assert trial_env(Trainable)["AWS_SECRET_ACCESS_KEY"] == "driver-secret"  # what Ray Tune does by itself
    keep_credentials_out_of_trials()
    env = trial_env(Other)
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"} & set(env)
    assert env["RAY_CHDIR_TO_TRIAL_DIR"] == "0"  # what is no secret still travels
