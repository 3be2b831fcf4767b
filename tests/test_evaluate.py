"""The evaluation actor pool on a real local Ray cluster: a real 6-step training run with
3 checkpoints, real Inception weights, 2 actors; each checkpoint evaluated exactly once,
--watch following a run until finished.json, a corrupt checkpoint reported and skipped."""
from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import torch
import pytest

import ray  # noqa: E402  (a hard dependency: a broken install fails, never skips)

from omegaconf import OmegaConf  # noqa: E402

from tiny_config import TINY as BASE_TINY  # noqa: E402

from genesis_dist.training.checkpoint import save_checkpoint  # noqa: E402
from genesis_dist.config import load_config, load_eval_config  # noqa: E402
from genesis_dist.evaluation.checkpoint_eval import CheckpointEvaluator  # noqa: E402
from genesis_dist.evaluation.fid_stats import fid_against_stats  # noqa: E402
from genesis_dist.evaluate import Evaluation, main  # noqa: E402
from genesis_dist.metrics import feature_statistics, fid_from_features  # noqa: E402
from genesis_dist.models import build_model  # noqa: E402
from genesis_dist.training.run_folder import ensure_dataset  # noqa: E402
from genesis_dist.training.run import publish_to_run_folder, train_rank  # noqa: E402

TINY = BASE_TINY + ["optim.steps=6", "run.keep_checkpoints=5"]
STEPS = (2, 4, 6)


@pytest.fixture(scope="module")
def ray_cluster(s3_server):
    # The loopback S3 server's credentials reach the cluster's processes the standard local
    # way, from the environment the cluster starts in: runtime environments carry no secrets.
    with pytest.MonkeyPatch.context() as patch:
        for key, value in s3_server.env.items():
            patch.setenv(key, value)
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def trained_run(ray_cluster, tmp_path_factory) -> Path:
    """A finished 6-step run of the tiny GENESIS-V2 with checkpoints at steps 2, 4, 6: one rank
    trained in this process, as a Ray Train worker trains it (the fast tier's Ray Train run is
    tests/test_console.py's command; tests/test_train.py's integration tests train through Ray
    Train and evaluate)."""
    root = tmp_path_factory.mktemp("training")
    cfg = load_config(TINY + [f"data.url={root / 'multi_dsprites'}", "data.generate_if_missing=true",
                              "data.generate_train=96", "data.generate_test=16",
                              f"run.storage_path={root / 'runs'}", "run.name=tiny"])
    ensure_dataset(cfg)
    run = root / "runs" / "tiny"
    train_rank(cfg, str(run), rank=0, world=1, device=torch.device("cpu"), publish=publish_to_run_folder(str(run)),
               progress=lambda event: None)
    assert sorted(p.name for p in run.glob("checkpoint_0*")) == [f"checkpoint_{s:08d}" for s in STEPS]
    assert (run / "finished.json").exists()
    return run


def eval_overrides(tmp: Path, *extra: str) -> list[str]:
    return ["actors=2", "fid_samples=16", "segmentation_images=16", "batch_size=8",
            f"stats_cache={tmp / 'fid_cache'}", "poll_seconds=0.5", *extra]


def copy_run(run: Path, target: Path) -> Path:
    shutil.copytree(run, target, ignore=shutil.ignore_patterns("eval"))
    return target


@pytest.fixture(scope="module")
def evaluated(trained_run, torch_home, tmp_path_factory):
    """A copy of the run after one `evaluate --run` with 2 actors: (run folder, log lines, seconds)."""
    tmp = tmp_path_factory.mktemp("evaluated")
    run = copy_run(trained_run, tmp / "tiny")
    lines: list[str] = []
    started = time.perf_counter()
    status = Evaluation(load_eval_config(["run=" + str(run)] + eval_overrides(tmp)), log=lines.append).run()
    seconds = time.perf_counter() - started
    print("\n".join(lines), f"\nfirst evaluation: {seconds:.1f} s")
    assert status == 0, lines
    return run, lines, seconds


def _one_object_fraction(checkpoint: str, count: int) -> float:
    """Share of the first `count` test images (with foreground) that hold exactly one object."""
    from sklearn.metrics import adjusted_rand_score

    from genesis_dist.data import make_loader

    data = json.loads((Path(checkpoint) / "meta.json").read_text())["config"]["data"]
    batch = next(iter(make_loader(data["url"], data["eval_split"], count, rank=0, world_size=1, num_workers=0,
                                  seed=0, shuffle_buffer=0, drop_last=False)))
    scores = []
    for labels in batch["mask"].numpy():
        foreground = labels[labels > 0]
        if foreground.size:
            scores.append(adjusted_rand_score(foreground, np.zeros_like(foreground)))
    return float(np.mean(scores))


def test_pool_evaluates_every_checkpoint_exactly_once(evaluated):
    run, lines, _ = evaluated
    records = [json.loads(line) for line in (run / "eval" / "metrics.jsonl").read_text().splitlines()]
    assert sorted(r["step"] for r in records) == list(STEPS)
    for step in STEPS:
        record = json.loads((run / "eval" / f"{step:08d}.json").read_text())
        assert record == next(r for r in records if r["step"] == step)
        assert record["checkpoint"].endswith(f"checkpoint_{step:08d}")
        assert record["elbo"] == pytest.approx(-(record["err"] + record["kl"]), rel=1e-6)
        for key in ("ari_fg", "ari", "att_ari_fg"):
            assert -1.0 <= record[key] <= 1.0, (key, record[key])
        for key in ("msc_fg", "sc_fg", "msc", "att_msc_fg"):
            assert 0.0 < record[key] <= 1.0, (key, record[key])
        assert record["fid"] > 0 and np.isfinite(record["fid"])
        assert record["segmentation_images"] == 16 and record["test_images"] == 16
        # Beside ARI-FG, the one-slot answer's on the same images: ARI-FG of a single segment
        # is 1 on an image with one object and 0 on one with several (sklearn's convention).
        assert record["one_slot_ari_fg"] == pytest.approx(_one_object_fraction(record["checkpoint"], 16))
        assert 0 < record["one_slot_msc_fg"] <= 1 and record["fg_bg_ari"] > 0.5
        assert record["fid_samples"] == 16 and record["fid_test_images"] == 16
        for figure in (f"decomposition_{step:08d}.png", f"generation_{step:08d}.png"):
            assert (run / "eval" / "figures" / figure).stat().st_size > 0
    # The pool spread the work: both actors evaluated, each counting its own evaluations.
    actors = {r["actor"] for r in records}
    assert len(actors) == 2, actors
    assert sorted(r["actor_evaluations"] for r in records) == [1, 1, 2]
    # Checkpoints differ, so their scores do; evaluation noise is seeded, so it is not that.
    assert len({r["elbo"] for r in records}) == 3
    table = (run / "eval" / "metrics.md").read_text()
    assert all(f"| {s} |" in table for s in STEPS) and "FID" in table and "ARI-FG" in table
    assert (run / "eval" / "metrics.png").stat().st_size > 0
    assert list((run / "eval" / "tensorboard").glob("events.out.tfevents.*"))
    assert sum(line.startswith("[eval] step ") for line in lines) == 3


def test_second_invocation_evaluates_none(evaluated, tmp_path, capsys):
    run, _, _ = evaluated
    before = {p.name: p.read_bytes() for p in (run / "eval").glob("*.json*")}
    cache = sorted((run.parent / "fid_cache").glob("*.npz"))
    assert len(cache) == 1  # the test set's statistics, computed once for both actors
    cache_time = cache[0].stat().st_mtime_ns
    status = main(["--run", str(run), *eval_overrides(run.parent)])
    out = capsys.readouterr().out
    assert status == 0
    assert "3 evaluated before, 0 to evaluate" in out and "[eval] step" not in out
    assert {p.name: p.read_bytes() for p in (run / "eval").glob("*.json*")} == before
    assert cache[0].stat().st_mtime_ns == cache_time


@pytest.mark.integration
def test_watch_follows_the_run_and_skips_a_corrupt_checkpoint(trained_run, torch_home, tmp_path):
    run = copy_run(trained_run, tmp_path / "tiny")
    (run / "finished.json").unlink()
    held_back = tmp_path / "held_back"
    shutil.move(run / "checkpoint_00000004", held_back)
    shutil.rmtree(run / "checkpoint_00000006")
    (run / "best.json").unlink()  # the best checkpoint counts too: here it would be step 6
    for best in run.glob("best-*"):
        shutil.rmtree(best)
    lines: list[str] = []
    cfg = load_eval_config(["run=" + str(run), "watch=true"] + eval_overrides(tmp_path, "actors=1"))
    result: dict[str, int] = {}
    watcher = threading.Thread(target=lambda: result.update(status=Evaluation(cfg, log=lines.append).run()))
    watcher.start()
    deadline = time.monotonic() + 120
    while not (run / "eval" / "00000002.json").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert (run / "eval" / "00000002.json").exists(), lines
    assert watcher.is_alive()  # no finished.json yet: it keeps watching
    # Training "writes" step 4, a corrupt step 8 and a step 10 still uploading, then finishes.
    corrupt = run / "checkpoint_00000008"
    shutil.copytree(held_back, corrupt)
    meta = json.loads((corrupt / "meta.json").read_text())
    (corrupt / "meta.json").write_text(json.dumps({**meta, "step": 8}))
    payload = bytearray((corrupt / "state.pt").read_bytes())
    payload[len(payload) // 2] ^= 0xFF
    (corrupt / "state.pt").write_bytes(bytes(payload))
    (run / "checkpoint_00000010").mkdir()
    shutil.move(held_back, run / "checkpoint_00000004")
    (run / "finished.json").write_text(json.dumps({"step": 10}))
    watcher.join(timeout=120)
    assert not watcher.is_alive(), lines
    assert result["status"] == 1  # a checkpoint failed; the others were evaluated
    assert sorted(p.name for p in (run / "eval").glob("0*.json")) == ["00000002.json", "00000004.json"]
    failures = [json.loads(line) for line in (run / "eval" / "failures.jsonl").read_text().splitlines()]
    assert [f["step"] for f in failures] == [8] and "sha256" in failures[0]["error"]
    assert any("step 8" in line and "FAILED" in line for line in lines)
    assert any("checkpoint_00000010: incomplete" in line for line in lines)


@pytest.mark.integration
def test_a_run_on_s3_is_evaluated_in_place(trained_run, torch_home, s3_server, monkeypatch, capsys):
    import s3fs

    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    bucket = s3_server.create_bucket("eval-runs")
    fs = s3fs.S3FileSystem(**s3_server.storage_options)
    run = f"{bucket}/runs/tiny"
    prefix = run.removeprefix("s3://")
    for path in [trained_run / "finished.json", *(trained_run / "checkpoint_00000006").iterdir()]:
        fs.put_file(str(path), f"{prefix}/{path.relative_to(trained_run)}")
    overrides = ["actors=1", "fid_samples=16", "segmentation_images=16", "batch_size=8", f"stats_cache={bucket}/fid"]
    assert main(["--run", run, *overrides]) == 0
    fs.invalidate_cache()
    written = {p.removeprefix(prefix + "/eval/") for p in fs.find(f"{prefix}/eval")}
    assert {"00000006.json", "metrics.jsonl", "metrics.md", "metrics.png", "figures/decomposition_00000006.png",
            "figures/generation_00000006.png"} <= written, written
    assert any(p.startswith("tensorboard/events.out.tfevents") for p in written)
    assert len(fs.find(f"{bucket.removeprefix('s3://')}/fid")) == 1
    capsys.readouterr()
    assert main(["--run", run, *overrides]) == 0
    assert "1 evaluated before, 0 to evaluate" in capsys.readouterr().out


def test_compare_sets_runs_beside_the_published_numbers(evaluated, capsys):
    run, _, _ = evaluated
    assert main(["compare", str(run)]) == 0
    table = capsys.readouterr().out
    latest = json.loads((run / "eval" / "00000006.json").read_text())
    rows = [line for line in table.splitlines() if line.startswith("| tiny |")]
    assert any("latest @ 6" in row and f"{latest['fid']:.1f}" in row for row in rows), table
    paper = [line for line in table.splitlines() if line.startswith("| paper | multi_dsprites | GENESIS |")]
    assert len(paper) == 1 and "24.9" in paper[0], table


def test_user_mistakes_are_one_line_errors(tmp_path, capsys):
    cases = [
        (["--run", str(tmp_path / "missing")], "run folder not found"),
        (["--run", str(tmp_path)], "no checkpoints in"),
        (["--run", str(tmp_path), "actorz=3"], "actorz"),
        (["--run"], "--run needs"),
        ([], "no run given"),
        (["compare", str(tmp_path)], "none of the runs has evaluations"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert message in err[-1] and not any("Traceback" in line for line in err), (argv, err)


def test_evaluator_scores_a_genesis_checkpoint_reproducibly(trained_run, tmp_path):
    """Ray-free: GENESIS (no attention masks, no flexible slots), FID off."""
    cfg = load_config(TINY + ["model=genesis", "model.img_size=32", "model.num_slots=3",
                              f"data.url={trained_run.parent.parent / 'multi_dsprites'}"])
    checkpoint = str(tmp_path / "run" / "checkpoint_00000001")
    save_checkpoint(checkpoint, {"model": build_model(cfg.model).state_dict()},
                    {"step": 1, "config": OmegaConf.to_container(cfg)})
    settings = OmegaConf.to_container(load_eval_config(["fid_samples=0", "segmentation_images=12", "batch_size=5",
                                                        "stop_pixels=5"]))
    evaluator = CheckpointEvaluator(settings)
    first, again = (evaluator.evaluate(checkpoint, str(tmp_path / "run")) for _ in range(2))
    assert first["ok"] and again["ok"], first.get("traceback")
    record = first["record"]
    assert record["model"] == "genesis" and record["test_images"] == 16 and record["segmentation_images"] == 12
    assert -1 <= record["ari_fg"] <= 1 and 0 < record["msc_fg"] <= 1
    assert not any(k.startswith(("att_", "flex_", "fid")) for k in record)
    drop = ("eval_seconds", "evaluated_at", "actor_evaluations")
    assert {k: v for k, v in record.items() if k not in drop} == {k: v for k, v in again["record"].items() if k not in drop}
    assert (tmp_path / "run" / "eval" / "figures" / "generation_00000001.png").exists()
    broken = evaluator.evaluate(str(tmp_path / "run" / "checkpoint_99"), str(tmp_path / "run"))
    assert not broken["ok"] and "no meta.json" in broken["error"]


def test_few_sample_fid_equals_pytorch_fid():
    rng = np.random.default_rng(0)
    for samples, reference, dim in ((16, 16, 64), (10, 40, 64), (5, 200, 128)):
        fake = rng.normal(size=(samples, dim)) * rng.uniform(0.5, 2, size=dim)
        real = rng.normal(size=(reference, dim)) @ rng.normal(size=(dim, dim)) * 0.2 + 0.3
        assert fid_against_stats(fake, *feature_statistics(real)) == pytest.approx(fid_from_features(fake, real), rel=1e-5)
