"""The fault matrix (README "Failures and security"; recovery times in benchmarks/history.md): each row injects one fault into real parts —
a real local Ray cluster, `python -m genesis_dist.train` / `evaluate` (in this process,
or as processes of their own where the test kills or times them), shards and runs on a
real moto S3 server behind the fault-injecting proxy, a real size-limited filesystem —
and checks what survives and what is lost. Last, the credentials test: a secret in the
submitting shell's environment appears nowhere in Ray's metadata, the run folder or logs.

Every row prints a `[fault]` line with its measurements (`pytest -s` shows them).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

import ray  # noqa: E402  (a hard dependency: a broken install fails, never skips)

from faults.driver import Driver  # noqa: E402
from s3_faults import Fault, FaultyS3  # noqa: E402
from tiny_config import TINY  # noqa: E402

from omegaconf import OmegaConf  # noqa: E402

from genesis_dist.config import find_config_dir, load_config  # noqa: E402
from genesis_dist.data.reader import SampleCorrupt, ShardCorrupt, decode_sample, read_shard  # noqa: E402
from genesis_dist.storage import EXIT_STATUS  # noqa: E402
from genesis_dist.train import main as train_main  # noqa: E402
from genesis_dist.training.checkpoint import best_checkpoint_url, load_checkpoint  # noqa: E402
from genesis_dist.training.worker import KILL_AT_STEP_VARIABLE  # noqa: E402

pytestmark = pytest.mark.integration  # the Ray-heavy tier: python -m pytest --integration


STEPS = 8
COMMON = TINY + [f"optim.steps={STEPS}", "run.max_failures=0"]
EVAL = ["actors=1", "fid_samples=0", "segmentation_images=8", "batch_size=8", "poll_seconds=0.5"]


def train(*args: str) -> tuple[int, list[str], float]:
    """`python -m genesis_dist.train *args` in this process, on the module's cluster:
    (exit status, the lines it printed to stderr, seconds)."""
    err = io.StringIO()
    started = time.monotonic()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        status = train_main(list(args))
    return status, err.getvalue().splitlines(), time.monotonic() - started


def resumed_from(driver: Driver) -> list[int]:
    return [int(line.rsplit(" ", 1)[-1]) for _, line in driver.out if "[genesis-dist] resumed from step" in line]


def report(row: str, **numbers) -> None:
    print(f"[fault] {row}: " + ", ".join(f"{k}={v}" for k, v in numbers.items()), flush=True)


@pytest.fixture(scope="module")
def cluster(s3_server):
    """A local Ray cluster whose processes have the moto server's credentials the standard
    local way (the environment it starts in, which the commands run in this process share);
    yields the environment for driver processes."""
    import ray_local

    with pytest.MonkeyPatch.context() as patch:
        for key, value in s3_server.env.items():
            patch.setenv(key, value)
        address = ray_local.start(num_cpus=4)
        yield {**os.environ, "RAY_ADDRESS": address}
        ray_local.stop()


@pytest.fixture(scope="module")
def proxy(s3_server, shards):
    """The fault proxy in front of moto, with the shards uploaded to s3://fault-data/shards."""
    import s3fs

    bucket = s3_server.create_bucket("fault-data")
    fs = s3fs.S3FileSystem(**s3_server.storage_options)
    fs.put(str(shards) + "/", f"{bucket.removeprefix('s3://')}/shards", recursive=True)
    with FaultyS3(s3_server) as faulty:
        yield faulty


def through(proxy: FaultyS3, *extra: str) -> list[str]:
    """Overrides that reach S3 through the proxy (data and, when on S3, the run folder)."""
    return [f"data.storage_options.client_kwargs.endpoint_url={proxy.endpoint_url}", *extra]


def history(run: Path) -> dict[int, dict]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records]
    assert len(steps) == len(set(steps)), steps  # every step once
    return {r["step"]: r for r in records}


def expected_keys(shards: Path, steps: int) -> list[list[str]]:
    """The sample keys of training steps 1..`steps` as the data layer deals them to one
    rank without any fault (its loader, read here directly: the oracle)."""
    import torch

    from genesis_dist.training.run import RankPlan, make_train_loader, open_data

    cfg = load_config(COMMON + [f"data.url={shards}"])
    loader = make_train_loader(cfg, open_data(cfg), RankPlan.single(cfg, torch.device("cpu")))
    batches = loader.forever()
    return [list(next(batches)["key"]) for _ in range(steps)]


def trained(run: Path) -> dict[int, list[str]]:
    from genesis_dist.training.sample_log import trained_keys

    return {step: entry["keys"] for step, entry in trained_keys(str(run)).items()}


@pytest.fixture(scope="module")
def read_faults_run(cluster, proxy, tmp_path_factory):
    """A run of 8 steps on the S3 shards through the proxy while it answers a fraction of
    the training-shard reads with 503, 500, resets, cut bodies and stalls (reads time out
    after 1 s), checkpoints every 2 steps (the last 3 kept), every step's sample keys logged.
    (run folder, seconds, faults injected, GET requests, distinct objects read)."""
    storage = tmp_path_factory.mktemp("read_faults")
    proxy.clear(seed=3)
    for kind, fraction in (("503", 0.2), ("500", 0.1), ("reset", 0.1), ("cut", 0.1), ("stall", 0.1)):
        proxy.add(Fault("GET", "/fault-data/shards/train/", kind, times=None, fraction=fraction, seconds=3.0))
    status, err, seconds = train(*COMMON, *through(proxy, "data.url=s3://fault-data/shards", f"run.storage_path={storage}",
                                                   "run.name=faulty", "data.storage_options.config_kwargs.read_timeout=1",
                                                   "run.log_sample_keys=true"))
    assert status == 0, err
    reads = {path: n for (method, path), n in proxy.requests.items() if method == "GET" and "/shards/train/" in path}
    injected = dict(proxy.injected)
    proxy.clear()
    return storage / "faulty", seconds, injected, reads


def test_s3_errors_and_resets_during_shard_reads_are_retried_and_lose_nothing(read_faults_run, shards):
    run, seconds, injected, reads = read_faults_run
    assert sum(injected.values()) >= 3 and len(injected) >= 3, injected
    retries = sum(reads.values()) - len(reads)
    assert retries >= sum(injected.values()), reads  # each shard is read once without faults: the rest are retries
    keys = trained(run)
    assert sorted(keys) == list(range(1, STEPS + 1))
    assert [keys[s] for s in sorted(keys)] == expected_keys(shards, STEPS)  # every sample, in order, once
    assert sorted(history(run)) == list(range(1, STEPS + 1))
    report("S3 5xx/resets/stalls/cut bodies on shard reads", faults=injected, shard_objects=len(reads),
           requests=sum(reads.values()), retries=retries, seconds=round(seconds, 1))


def test_a_failed_checkpoint_upload_keeps_the_previous_checkpoint_and_the_run_resumes(cluster, proxy, s3_server):
    import s3fs

    bucket = s3_server.create_bucket("fault-runs")
    args = COMMON + through(proxy, "data.url=s3://fault-data/shards", f"run.storage_path={bucket}/runs",
                            "run.name=upload", "data.storage_options.config_kwargs.retries.total_max_attempts=2",
                            "optim.steps=6")
    proxy.clear()
    proxy.add(Fault("PUT", "/runs/upload/checkpoint_00000004/", "503", times=None))
    status, err, _ = train(*args)
    assert status == EXIT_STATUS["unreachable"] and len(err) == 1, err
    assert "the run failed after 1 attempt" in err[0] and "checkpoint_00000004: object store unreachable" in err[0]
    assert proxy.injected["503"] >= 2  # retried before giving up
    options = s3_server.storage_options
    run = f"{bucket}/runs/upload"
    _, meta = load_checkpoint(f"{run}/checkpoint_00000002", options)  # the previous checkpoint is intact
    assert meta["step"] == 2
    assert load_checkpoint(best_checkpoint_url(run, options), options)[1]["step"] in (2, 4)
    proxy.clear()
    again = Driver("train", args, cluster)
    assert again.finish() == 0, again.tail()
    assert resumed_from(again) == [2], again.tail()
    fs = s3fs.S3FileSystem(**options)
    lines = fs.cat_file(f"{run}/metrics.jsonl".removeprefix("s3://")).decode().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(1, 7))
    first_step = min(stamp for stamp, step in again.steps())
    report("S3 failure during a checkpoint upload", status=status, resumed_from=2, steps_redone=2,
           rerun_to_first_step_s=round(first_step - again.started, 1), rerun_seconds=round(again.seconds, 1))


def test_a_truncated_shard_is_skipped_and_counted_without_a_ddp_hang(cluster, shards, tmp_path):
    import torch

    data = tmp_path / "shards"
    shutil.copytree(shards, data)
    victim = sorted((data / "train").glob("*.tar"))[1]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    usable = 0  # samples of the cut shard that still decode
    with contextlib.suppress(ShardCorrupt):
        for raw in read_shard(str(victim), expected=16):
            with contextlib.suppress(SampleCorrupt):
                decode_sample(raw, 32, has_mask=True)
                usable += 1
    status, err, seconds = train(*COMMON, f"data.url={data}", f"run.storage_path={tmp_path}", "run.name=truncated",
                                 "scaling.num_workers=2", "optim.steps=6")
    assert status == 0, err  # a DDP hang would time the test out instead
    last = tmp_path / "truncated" / "checkpoint_00000006"
    skipped = [torch.load(last / f"worker_{r}.pt", weights_only=True)["data_skipped"] for r in (0, 1)]
    assert min(skipped) == 0 and max(skipped) >= 1, skipped  # the rank that read it skipped what it could not read
    assert sorted(history(tmp_path / "truncated")) == list(range(1, 7))
    report("truncated shard", skipped_per_rank=skipped, samples_lost=16 - usable, seconds=round(seconds, 1))


def test_a_sigkilled_driver_is_resumed_by_the_rerun_and_loses_only_steps_since_the_checkpoint(cluster, shards,
                                                                                              read_faults_run, tmp_path):
    run = read_faults_run[0]
    args = COMMON + [f"data.url={shards}", f"run.storage_path={tmp_path}", "run.name=driver", "run.log_sample_keys=true"]
    first = Driver("train", args, cluster)
    marker = tmp_path / "driver" / "checkpoint_00000004" / "meta.json"
    deadline = time.monotonic() + 300
    while not marker.exists() and first.process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    first.kill()
    assert first.process.returncode == -9, first.tail()  # killed, not finished
    killed_at = max([step for _, step in first.steps()], default=0)
    again = Driver("train", args, cluster)
    assert again.finish() == 0, again.tail()
    resumed = resumed_from(again)
    assert resumed and resumed[0] >= 2, again.tail()
    rerun, reference = history(tmp_path / "driver"), history(run)
    assert sorted(rerun) == list(range(1, STEPS + 1))
    assert [rerun[s]["loss"] for s in rerun] == [reference[s]["loss"] for s in rerun]  # an exact resume
    keys = trained(tmp_path / "driver")
    assert [keys[s] for s in sorted(keys)] == expected_keys(shards, STEPS)
    first_step = min(stamp for stamp, step in again.steps())
    via_folder = any("newer than the last checkpoint Ray recorded" in line for _, line in again.out)
    report("driver SIGKILL", killed_after_checkpoint=4, last_step_line_seen=killed_at, resumed_from=resumed[0],
           resumed_past_rays_record=via_folder,
           rerun_to_first_step_s=round(first_step - again.started, 1))


@pytest.mark.slow  # tests/test_train.py runs the same fault in the default suite; this one times the recovery
def test_a_sigkilled_worker_is_replaced_and_the_run_completes(cluster, shards, tmp_path):
    driver = Driver("train", COMMON + [f"data.url={shards}", f"run.storage_path={tmp_path}", "run.name=worker",
                                       "scaling.num_workers=2", "optim.steps=6", "run.max_failures=1"],
                    {**cluster, KILL_AT_STEP_VARIABLE: "3"})
    assert driver.finish() == 0, driver.tail()
    assert (tmp_path / "worker" / "injected_failure").read_text() == "3"
    assert sorted(history(tmp_path / "worker")) == list(range(1, 7))
    steps = driver.steps()
    before = max(stamp for stamp, step in steps if step == 2)
    after = min(stamp for stamp, step in steps if step == 3)
    report("worker SIGKILL", killed_at_step=3, resumed_from=2, steps_lost=0, step2_to_step3_s=round(after - before, 1))


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs (a real filesystem that fills up); skips where mounting is not allowed."""
    folder = tmp_path / "small_disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        reason = f"cannot mount a size-limited tmpfs ({mounted.stderr.decode().strip()})"
        if os.geteuid() == 0:  # CI runs as root: the disk-full row must run there, or fail
            pytest.fail(f"{reason}, although running as root")
        pytest.skip(f"{reason}: the disk-full row needs root or CAP_SYS_ADMIN")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def test_a_full_disk_while_checkpointing_is_one_line_and_keeps_the_previous_checkpoint(cluster, shards, small_disk):
    args = COMMON + [f"data.url={shards}", f"run.storage_path={small_disk}", "run.name=disk"]
    status, err, _ = train(*args, "optim.steps=2")
    assert status == 0, err
    run = small_disk / "disk"
    checkpoint_bytes = (run / "checkpoint_00000002" / "state.pt").stat().st_size
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * max(0, shutil.disk_usage(small_disk).free - checkpoint_bytes // 2))
    status, err, _ = train(*args, "optim.steps=4")  # less room left than one checkpoint needs
    assert status == EXIT_STATUS["disk_full"] and len(err) == 1, err
    assert "disk full" in err[0] and str(run) in err[0], err
    _, meta = load_checkpoint(str(run / "checkpoint_00000002"))
    assert meta["step"] == 2 and load_checkpoint(best_checkpoint_url(str(run)))[1]["step"] == 2
    report("disk full while checkpointing", status=status, error=err[0][:200], previous_checkpoint="valid")


def _evaluation_copy(run: Path, target: Path) -> Path:
    shutil.copytree(run, target, ignore=shutil.ignore_patterns("eval"))
    return target


def _records(run: Path) -> list[int]:
    lines = (run / "eval" / "metrics.jsonl").read_text().splitlines()
    return sorted(json.loads(line)["step"] for line in lines)


def test_an_evaluator_killed_mid_checkpoint_is_rerun_and_two_at_once_evaluate_each_checkpoint_once(cluster,
                                                                                                   read_faults_run,
                                                                                                   tmp_path):
    run = _evaluation_copy(read_faults_run[0], tmp_path / "run")
    best = json.loads((run / "best.json").read_text())["step"]
    kept = sorted({int(p.name.split("_")[1]) for p in run.glob("checkpoint_0*")} | {best})
    first = Driver("evaluate", ["--run", str(run), *EVAL], cluster)
    first.wait_for(r"^\[eval\] step ")
    first.kill()
    before = _records(run)
    assert 1 <= len(before) < len(kept), before  # it died with work left
    # The re-run, started twice at once: one evaluates, the other is refused in one line.
    evaluators = [Driver("evaluate", ["--run", str(run), *EVAL], cluster) for _ in range(2)]
    statuses = [e.finish() for e in evaluators]
    assert sorted(statuses) == [0, 8], [e.tail() for e in evaluators]
    refused, rerun = evaluators[statuses.index(8)], evaluators[statuses.index(0)]
    assert len(refused.err) == 1 and "another evaluator" in refused.err[0][1], refused.tail()
    assert _records(run) == kept  # each kept checkpoint once, the interrupted one included
    assert sorted(int(p.name[:8]) for p in (run / "eval").glob("0*.json")) == kept
    if 2 not in kept:  # checkpoint_00000002 was deleted by training (it keeps 3) and is not the best
        assert any("training deleted the checkpoints of steps 2 " in line for _, line in first.out), first.tail()
    evaluated = sum(line.startswith("[eval] step ") for _, line in rerun.out)
    assert evaluated == len(kept) - len(before)
    report("evaluator SIGKILL mid-checkpoint", evaluated_before_kill=len(before), evaluated_by_rerun=evaluated,
           evaluated_twice=0, concurrent_evaluator="refused (status 8)", rerun_seconds=round(rerun.seconds, 1))


def test_a_secret_in_the_submitting_shell_reaches_no_ray_metadata_run_folder_or_log(cluster, s3_server, shards,
                                                                                     tmp_path):
    import dataclasses
    import urllib.request
    import uuid

    import s3fs
    from ray._private.authentication.http_token_authentication import get_auth_headers_if_auth_enabled
    from ray.util.state import list_actors, list_jobs, list_tasks

    marker = f"env-secret-{uuid.uuid4().hex}"  # AWS_SECRET_ACCESS_KEY of the submitting shell
    option_marker = f"option-secret-{uuid.uuid4().hex}"  # a secret given in storage_options
    bucket = s3_server.create_bucket("secret-runs")
    fs = s3fs.S3FileSystem(**s3_server.storage_options)
    fs.put(str(shards) + "/", f"{bucket.removeprefix('s3://')}/shards", recursive=True)
    # moto accepts any secret; state tracking puts the train loop config on the dashboard
    env = {**cluster, "AWS_SECRET_ACCESS_KEY": marker, "RAY_TRAIN_ENABLE_STATE_TRACKING": "1"}
    run = f"{bucket}/runs/secret"
    # Secrets in storage_options come from files (a command line is public: ps, Ray's job list).
    options = {"key": "testing", "secret": option_marker}
    config = load_config(COMMON + [f"data.url={bucket}/shards", f"run.storage_path={bucket}/runs", "run.name=secret",
                                   "optim.steps=4"])
    config_file = tmp_path / "train.yaml"
    config_file.write_text(OmegaConf.to_yaml(OmegaConf.merge(config, {"data": {"storage_options": options}})))
    training = Driver("train", ["--config", str(config_file)], env)
    assert training.finish() == 0, training.tail()
    configs = tmp_path / "configs"
    shutil.copytree(find_config_dir(), configs)
    with open(configs / "eval.yaml", "a") as f:
        f.write(OmegaConf.to_yaml({"storage_options": options}))
    evaluation = Driver("evaluate", ["--run", run, *EVAL], {**env, "GENESIS_DIST_CONFIGS": str(configs)})
    assert evaluation.finish() == 0, evaluation.tail()

    def plain(item):
        return dataclasses.asdict(item) if dataclasses.is_dataclass(item) else getattr(item, "__dict__", item)

    state = json.dumps([plain(x) for x in list_jobs(detail=True) + list_actors(detail=True, limit=10_000)
                        + list_tasks(detail=True, limit=10_000)], default=str)
    request = urllib.request.Request(os.environ["RAY_API_SERVER_ADDRESS"] + "/api/train/v2/runs/v1",
                                     headers=get_auth_headers_if_auth_enabled({}))
    train_runs = urllib.request.urlopen(request, timeout=30).read().decode()
    # The checks can see what they look for: runtime environments and the train loop config.
    assert s3_server.endpoint_url in state and "AWS_ENDPOINT_URL" in state
    assert "s3://secret-runs/runs/secret" in train_runs and "<redacted>" in train_runs
    for secret in (marker, option_marker):
        where = [state[max(0, i - 300): i + 80] for i in range(len(state)) if state.startswith(secret, i)]
        assert secret not in state and secret not in train_runs, where
        objects = fs.find(run.removeprefix("s3://"))
        assert any(o.endswith("config.yaml") for o in objects) and any("/eval/" in o for o in objects)
        leaked = [o for o in objects if secret.encode() in fs.cat_file(o)]
        assert not leaked, leaked
        session = Path(ray._private.worker._global_node.get_session_dir_path())
        logs = [f for f in session.rglob("*") if f.is_file() and not f.is_symlink() and "sockets" not in f.parts]
        assert not [f for f in logs if secret.encode() in f.read_bytes()]
        for driver in (training, evaluation):
            assert secret not in driver.stdout() + driver.stderr()
    report("credentials", secret_in_ray_state=False, secret_in_run_folder=False, secret_in_logs=False,
           run_folder_objects=len(objects), log_files=len(logs))
