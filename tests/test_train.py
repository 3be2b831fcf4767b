"""Distributed training on a real local Ray cluster (CPU, gloo): DDP agreement,
surviving a SIGKILLed worker, checkpoints on S3, run identity. (Exact resume through Ray
is the driver-SIGKILL row of tests/test_faults.py; without Ray, tests/test_loop.py.)"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import ray  # noqa: E402  (a hard dependency: a broken install fails, never skips)

from tiny_config import TINY  # noqa: E402

from genesis_dist.training.checkpoint import load_checkpoint  # noqa: E402
from genesis_dist.config import load_config  # noqa: E402
from genesis_dist.training.run_folder import ensure_dataset  # noqa: E402
from genesis_dist.training.worker import KILL_AT_STEP_VARIABLE, build_trainer  # noqa: E402
from genesis_dist.training.hooks import parameters_digest  # noqa: E402
from genesis_dist.models import build_model  # noqa: E402



@pytest.fixture(scope="module")
def ray_cluster(s3_server):
    # As `python -m genesis_dist.train` does: Ray's processes (the Train controller
    # included) get the driver's AWS variables, here those of the loopback S3 server.
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": s3_server.env})
    yield
    ray.shutdown()


def _config(shards, storage, name, *extra):
    return load_config(TINY + [f"data.url={shards}", f"run.storage_path={storage}", f"run.name={name}", *extra])


def _history(run_dir: Path) -> dict[int, dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r for r in map(json.loads, lines)}


@pytest.mark.integration
def test_two_workers_keep_identical_parameters_and_beta(ray_cluster, shards, tmp_path):
    cfg = _config(shards, tmp_path, "ddp", "scaling.num_workers=2", "optim.steps=4")
    result = build_trainer(cfg).fit()
    assert result.error is None
    ckpt = Path(result.checkpoint.path)
    ranks = [torch.load(ckpt / f"worker_{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["params_sha256"] == ranks[1]["params_sha256"]
    assert ranks[0]["beta"] == ranks[1]["beta"] != 1.0
    state, meta = load_checkpoint(str(ckpt))
    assert meta["step"] == 4
    model = build_model(cfg.model)
    model.load_state_dict(state["model"])
    assert parameters_digest(model) == ranks[0]["params_sha256"]
    assert state["objective"]["beta"] == ranks[0]["beta"]


@pytest.mark.integration
def test_run_survives_a_sigkilled_worker(ray_cluster, shards, tmp_path, monkeypatch):
    cfg = _config(shards, tmp_path, "killed", "scaling.num_workers=2", "optim.steps=6", "run.max_failures=1")
    monkeypatch.setenv(KILL_AT_STEP_VARIABLE, "3")  # read when the trainer is built
    result = build_trainer(cfg).fit()
    assert result.error is None
    assert (tmp_path / "killed" / "injected_failure").read_text() == "3"
    assert result.metrics["step"] == 6
    _, meta = load_checkpoint(result.checkpoint.path)
    assert meta["step"] == 6


@pytest.mark.integration
def test_checkpoints_go_to_and_resume_from_s3(ray_cluster, shards, s3_server, monkeypatch):
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    bucket = s3_server.create_bucket("train-runs")
    storage = f"{bucket}/runs"
    first = build_trainer(_config(shards, storage, "on-s3", "optim.steps=2")).fit()
    assert first.error is None
    import s3fs

    fs = s3fs.S3FileSystem(**s3_server.storage_options)
    run = storage.removeprefix("s3://") + "/on-s3"
    listing = fs.ls(run)
    assert any(p.endswith("checkpoint_00000002") for p in listing), listing
    assert fs.exists(f"{run}/checkpoint_00000002/state.pt")
    again = build_trainer(_config(shards, storage, "on-s3", "optim.steps=4")).fit()
    assert again.error is None and again.metrics["step"] == 4
    fs.invalidate_cache()
    history = [json.loads(l) for l in fs.cat_file(f"{run}/metrics.jsonl").decode().splitlines()]
    assert [r["step"] for r in history] == [1, 2, 3, 4]


def test_resolution_mismatch_is_caught_before_training(shards, tmp_path):
    from genesis_dist.config import ConfigError

    cfg = _config(shards, tmp_path, "mismatch", "model.img_size=64")
    with pytest.raises(ConfigError, match=r"holds 32 px images but model.img_size=64"):
        ensure_dataset(cfg)


@pytest.mark.integration
def test_a_run_is_never_resumed_with_another_config(ray_cluster, shards, tmp_path, capsys):
    from genesis_dist.train import main

    args = TINY + [f"data.url={shards}", f"run.storage_path={tmp_path}", "run.name=same"]
    assert main(args + ["optim.steps=2"]) == 0
    assert (tmp_path / "same" / "config.yaml").exists()
    capsys.readouterr()
    assert main(args + ["optim.steps=2", "model.num_slots=4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model.num_slots (3 → 4)" in err and "run.name" in err
    # Training longer is the same run: it resumes.
    assert main(args + ["optim.steps=4"]) == 0
    assert sorted(_history(tmp_path / "same")) == [1, 2, 3, 4]
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("[genesis-dist] held-out (8 images): step 4, err ") and "ARI-FG " in last
    assert "(one slot: " in last and last.endswith("decomposition_00000004.png")
