"""Faults without Ray: the atomic best checkpoint (a crash or a failed upload mid-write),
the evaluation lease (locally and on moto S3), the credential hygiene of storage, and the
commands' one-line failures with their documented exit statuses (real processes, a real
moto server behind the fault-injecting proxy)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch

from s3_faults import Fault, FaultyS3

from genesis_dist.config import load_config
from genesis_dist.evaluation.lease import EvalLease, LeaseBusy, LeaseLost
from genesis_dist.storage import (EXIT_STATUS, StorageError, aws_environment, create_exclusive,
                                  redacted, storage_errors, without_secrets)
from genesis_dist.training.checkpoint import (CheckpointError, best_checkpoint_url, latest_complete_checkpoint,
                                              load_checkpoint, read_best_pointer, resolve_checkpoint, save_best,
                                              save_checkpoint)
from genesis_dist.training.run_folder import only_generate_where_configured
from genesis_dist.training.worker import describe_failure

NO_AWS = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}


def _state(value: float) -> dict:
    return {"model": {"w": torch.full((64, 64), value)}}


def _meta(step: int) -> dict:
    return {"step": step, "best_score": -float(step), "config": {}}


# --- the best checkpoint -------------------------------------------------------------------

def test_best_is_switched_by_a_pointer_and_old_folders_are_pruned(tmp_path):
    run = str(tmp_path / "run")
    for step in (2, 4, 6):
        save_best(run, _state(step), _meta(step))
    pointer = read_best_pointer(run)
    assert pointer["step"] == 6 and pointer["folder"].startswith("best-00000006-")
    state, meta = load_checkpoint(best_checkpoint_url(run))
    assert meta["step"] == 6 and float(state["model"]["w"][0, 0]) == 6
    # The new and the previous best stay (a reader may have followed the old pointer); older go.
    folders = sorted(p.name for p in (tmp_path / "run").iterdir() if p.name.startswith("best-"))
    assert [f[:13] for f in folders] == ["best-00000004", "best-00000006"]
    assert resolve_checkpoint(f"{run}/best") == best_checkpoint_url(run)
    assert not list((tmp_path / "run").glob(".*tmp"))  # the pointer's temporary file is gone


CRASH_MID_BEST = textwrap.dedent("""
    import io, os, signal, sys, torch
    from genesis_dist.training import checkpoint
    run = sys.argv[1]
    checkpoint.save_best(run, {"model": {"w": torch.full((64, 64), 2.0)}}, {"step": 2, "best_score": -2.0, "config": {}})

    def write_half_then_die(url, state, meta, storage_options=None):  # the process dies inside state.pt
        os.makedirs(url, exist_ok=True)
        buffer = io.BytesIO()
        torch.save(state, buffer)
        with open(os.path.join(url, "state.pt"), "wb") as f:
            f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        os.kill(os.getpid(), signal.SIGKILL)

    checkpoint.save_checkpoint = write_half_then_die
    checkpoint.save_best(run, {"model": {"w": torch.full((64, 64), 4.0)}}, {"step": 4, "best_score": -4.0, "config": {}})
""")


def test_a_process_killed_while_writing_best_leaves_the_previous_best_loadable(tmp_path):
    run = tmp_path / "run"
    done = subprocess.run([sys.executable, "-c", CRASH_MID_BEST, str(run)], capture_output=True, text=True, timeout=120)
    assert done.returncode == -9, done.stderr  # it really died mid-write
    partial = [p for p in run.iterdir() if p.name.startswith("best-00000004")]
    assert partial and (partial[0] / "state.pt").exists() and not (partial[0] / "meta.json").exists()
    state, meta = load_checkpoint(best_checkpoint_url(str(run)))
    assert meta["step"] == 2 and float(state["model"]["w"][0, 0]) == 2.0
    # The next best replaces the debris.
    save_best(str(run), _state(6), _meta(6))
    assert not (run / partial[0].name).exists()
    assert load_checkpoint(best_checkpoint_url(str(run)))[1]["step"] == 6


def test_a_failed_upload_of_best_on_s3_leaves_the_previous_best_loadable(s3_server):
    bucket = s3_server.create_bucket("best-upload")
    run = f"{bucket}/runs/r"
    with FaultyS3(s3_server) as proxy:
        options = {**proxy.storage_options, "config_kwargs": {"retries": {"total_max_attempts": 2}}}
        save_best(run, _state(2), _meta(2), options)
        proxy.add(Fault("PUT", "/best-00000004", "503", times=None))  # the new folder never uploads
        with pytest.raises(OSError):
            save_best(run, _state(4), _meta(4), options)
        assert proxy.injected["503"] >= 2  # retried, then given up
        proxy.clear()
        state, meta = load_checkpoint(best_checkpoint_url(run, options), options)
        assert meta["step"] == 2 and float(state["model"]["w"][0, 0]) == 2.0
        # Even with state.pt of step 4 uploaded and only its meta.json refused:
        proxy.add(Fault("PUT", "/meta.json", "403", times=None))
        with pytest.raises(PermissionError):
            save_best(run, _state(4), _meta(4), options)
        proxy.clear()
        assert read_best_pointer(run, options)["step"] == 2
        assert load_checkpoint(best_checkpoint_url(run, options), options)[1]["step"] == 2


def test_the_newest_complete_checkpoint_is_found_and_partial_ones_are_skipped(tmp_path):
    run = tmp_path / "run"
    for step in (2, 4, 6, 8):
        folder = str(run / f"checkpoint_{step:08d}")
        save_checkpoint(folder, _state(step), {**_meta(step), "data_position": {"world_size": 2}})
        for rank in (0, 1):
            torch.save({"rank": rank}, f"{folder}/worker_{rank}.pt")
    (run / "checkpoint_00000008" / "worker_1.pt").unlink()  # rank 1's upload never arrived
    state = run / "checkpoint_00000006" / "state.pt"
    state.write_bytes(state.read_bytes()[:-1])  # cut short
    (run / "checkpoint_00000010").mkdir()  # still uploading: no meta.json yet
    assert latest_complete_checkpoint(str(run)) == (4, str(run / "checkpoint_00000004"))


# --- the evaluation lease ------------------------------------------------------------------

def test_one_of_two_racing_evaluators_gets_the_lease_locally_and_on_s3(tmp_path, s3_server):
    bucket = s3_server.create_bucket("lease-race")
    for run, options in ((str(tmp_path / "run"), None), (f"{bucket}/runs/r", s3_server.storage_options)):
        leases = [EvalLease(run, options) for _ in range(4)]
        outcomes: list[str] = []
        barrier = threading.Barrier(len(leases))

        def take(lease: EvalLease) -> None:
            barrier.wait()
            try:
                lease.acquire()
                outcomes.append("held")
            except LeaseBusy:
                outcomes.append("busy")

        threads = [threading.Thread(target=take, args=(lease,)) for lease in leases]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(outcomes) == ["busy", "busy", "busy", "held"], (run, outcomes)
        holder = next(lease for lease in leases if lease.generation is not None)
        with pytest.raises(LeaseBusy, match="another evaluator .* is evaluating this run"):
            EvalLease(run, options).acquire()
        holder.release()
        successor = EvalLease(run, options)
        successor.acquire()  # a released lease is free at once
        assert successor.generation == 2
        successor.release()


def test_moto_honours_exclusive_creation(s3_server):
    """The lease relies on If-None-Match: * (AWS S3 since 2024); moto must refuse the second PUT."""
    bucket = s3_server.create_bucket("exclusive")
    assert create_exclusive(f"{bucket}/x.json", b"1", s3_server.storage_options)
    assert not create_exclusive(f"{bucket}/x.json", b"2", s3_server.storage_options)
    import s3fs

    assert s3fs.S3FileSystem(**s3_server.storage_options).cat_file(f"{bucket}/x.json".removeprefix("s3://")) == b"1"


def test_an_expired_or_dead_holders_lease_is_taken_over_and_the_loser_notices(tmp_path):
    run = str(tmp_path / "run")
    clock = [1000.0]
    first = EvalLease(run, seconds=60, clock=lambda: clock[0])
    first.acquire()
    second = EvalLease(run, seconds=60, clock=lambda: clock[0])
    with pytest.raises(LeaseBusy):
        second.acquire()
    clock[0] += 61  # the first stopped renewing (paused, or on another machine)
    second.acquire()
    with pytest.raises(LeaseLost):
        first.renew()
    second.release()
    # A holder on this machine whose process is gone frees the lease at once.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    third = EvalLease(run)
    third.pid = int(dead.stdout)  # the lease a killed evaluator left behind
    third.owner = f"{third.host}:{third.pid}:dead"
    third.acquire()
    fourth = EvalLease(run)
    fourth.acquire()
    assert fourth.generation == third.generation + 1


# --- credentials ---------------------------------------------------------------------------

def test_only_non_secret_aws_settings_travel(monkeypatch):
    secrets = {"AWS_ACCESS_KEY_ID": "AKIA-MARKER", "AWS_SECRET_ACCESS_KEY": "secret-marker",
               "AWS_SESSION_TOKEN": "token-marker", "AWS_SHARED_CREDENTIALS_FILE": "/creds"}
    settings = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_DEFAULT_REGION": "eu-west-1", "AWS_PROFILE": "p",
                "AWS_RETRY_MODE": "standard", "AWS_MAX_ATTEMPTS": "3"}
    for key, value in {**secrets, **settings}.items():
        monkeypatch.setenv(key, value)
    assert aws_environment() == settings


def test_secrets_in_storage_options_are_redacted_in_prints_and_dropped_from_files(tmp_path):
    marker = "storage-option-marker-31337"
    config = {"model": {"key": 3}, "data": {"storage_options": {"key": "AKIA", "secret": marker,
                                                                "client_kwargs": {"endpoint_url": "http://e",
                                                                                  "aws_session_token": marker}}}}
    assert marker not in json.dumps(redacted(config)) and "<redacted>" in json.dumps(redacted(config))
    stored = without_secrets(config)
    assert marker not in json.dumps(stored) and stored["data"]["storage_options"] == {"client_kwargs": {"endpoint_url": "http://e"}}
    assert stored["model"] == {"key": 3}  # only storage_options are searched for secrets
    printed = subprocess.run([sys.executable, "-m", "genesis_dist.train", "--print-config",
                              f"data.storage_options.secret={marker}"], capture_output=True, text=True, cwd=tmp_path,
                             timeout=120)
    assert printed.returncode == 0 and marker not in printed.stdout + printed.stderr
    assert "secret: <redacted>" in printed.stdout
    assert "data.storage_options.secret on the command line is visible" in printed.stderr  # a warning, naming no value


# --- one-line failures and exit statuses ---------------------------------------------------

def _command(module: str, *args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=300,
                          env=env or NO_AWS, cwd=cwd)


def _one_line(done: subprocess.CompletedProcess, status: int, *phrases: str) -> str:
    err = done.stderr.strip().splitlines()
    assert done.returncode == status, (done.returncode, done.stderr[-2000:])
    assert len(err) == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    for phrase in phrases:
        assert phrase in err[0], err[0]
    return err[0]


def test_no_credentials_is_one_line_and_status_3(tmp_path):
    env = {**NO_AWS, "AWS_EC2_METADATA_DISABLED": "true", "HOME": str(tmp_path)}
    done = _command("genesis_dist.train", "data=shapestacks", "data.url=s3://nobucket/x", env=env, cwd=tmp_path)
    _one_line(done, EXIT_STATUS["no_credentials"], "s3://nobucket/x", "no credentials", "ray start")
    evaluate = _command("genesis_dist.evaluate", "--run", "s3://nobucket/runs/x", env=env, cwd=tmp_path)
    _one_line(evaluate, EXIT_STATUS["no_credentials"], "no credentials")
    tune = _command("genesis_dist.tune", "data=shapestacks", "data.url=s3://nobucket/x", env=env, cwd=tmp_path)
    _one_line(tune, EXIT_STATUS["no_credentials"], "no credentials")


@pytest.mark.integration  # four command processes, ~13 s; the fast tier keeps the no-credentials status
def test_storage_failures_have_their_own_statuses(s3_server, tmp_path):
    bucket = s3_server.create_bucket("statuses")
    env = {**NO_AWS, **s3_server.env}
    missing = _command("genesis_dist.train", "data=shapestacks", "data.url=s3://nobucket/x", env=env, cwd=tmp_path)
    _one_line(missing, EXIT_STATUS["not_found"], "no bucket 'nobucket'")
    no_data = _command("genesis_dist.train", "data=shapestacks", f"data.url={bucket}/none", env=env, cwd=tmp_path)
    _one_line(no_data, EXIT_STATUS["not_found"], "no manifest.json there")
    unreachable = {**env, "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_MAX_ATTEMPTS": "2"}
    down = _command("genesis_dist.train", "data=shapestacks", f"data.url={bucket}/x", env=unreachable, cwd=tmp_path)
    _one_line(down, EXIT_STATUS["unreachable"], "object store unreachable")
    with FaultyS3(s3_server) as proxy:
        proxy.add(Fault("HEAD", "/", "403", times=None))
        proxy.add(Fault("GET", "/", "403", times=None))
        denied = _command("genesis_dist.train", "data=shapestacks", f"data.url={bucket}/x", cwd=tmp_path,
                          env={**env, "AWS_ENDPOINT_URL": proxy.endpoint_url})
        _one_line(denied, EXIT_STATUS["access_denied"], "access denied")


def test_a_typed_data_url_without_data_is_an_error_not_a_new_dataset(tmp_path):
    done = _command("genesis_dist.train", "data.url=data/multi_dsprites_32p", cwd=tmp_path)  # the demo's, mistyped
    _one_line(done, 2, "data/multi_dsprites_32p: no manifest.json there", "data.generate_if_missing=true")
    assert not (tmp_path / "data").exists() and not (tmp_path / "runs").exists()
    # The rule itself: the demo's own data.url still generates; a typed one only when asked to.
    demo = load_config([])
    assert only_generate_where_configured(demo, []).data.generate_if_missing
    assert not only_generate_where_configured(demo, ["data.url=elsewhere"]).data.generate_if_missing
    asked = ["data.url=elsewhere", "data.generate_if_missing=true"]
    assert only_generate_where_configured(load_config(asked), asked).data.generate_if_missing


def test_a_storage_failure_in_a_data_loading_process_keeps_its_kind(s3_server):
    from genesis_dist.data import make_loader
    from genesis_dist.data.convert import convert_dataset
    from genesis_dist.data.formats.multi_dsprites import MultiDSprites

    bucket = s3_server.create_bucket("loader-kind")
    convert_dataset(MultiDSprites({"train": 16, "test": 8}, img_size=32), f"{bucket}/mds", shard_samples=8,
                           storage_options=s3_server.storage_options, progress=False)
    with FaultyS3(s3_server) as proxy:
        proxy.add(Fault("GET", "/mds/train/", "503", times=None))
        options = {**proxy.storage_options, "config_kwargs": {"retries": {"total_max_attempts": 2}}}
        loader = make_loader(f"{bucket}/mds", "train", 4, rank=0, world_size=1, num_workers=1, storage_options=options)
        with pytest.raises(StorageError) as failure:
            next(iter(loader))
    assert failure.value.kind == "unreachable" and failure.value.exit_status == 6, str(failure.value)
    assert "\n" not in str(failure.value)


def test_a_failed_runs_line_names_the_workers_own_error():
    """Ray Train V2 raises TrainingFailedError around the workers' errors: the line names
    the error inside (with Ray's own exception types, as pickled back from workers)."""
    import ray  # noqa: F401  (a hard dependency: a broken install fails, never skips)
    from ray.exceptions import ActorDiedError
    from ray.train.v2._internal.exceptions import UserExceptionWithTraceback, WorkerHealthCheckFailedError
    from ray.train.v2.api.exceptions import WorkerGroupError

    full = WorkerGroupError("rank 0 failed", {0: UserExceptionWithTraceback(OSError(28, "No space left"), "Traceback …")})
    assert describe_failure(full) == (7, "disk full (OSError: [Errno 28] No space left)")
    bug = WorkerGroupError("rank 1 failed", {1: UserExceptionWithTraceback(KeyError("beta"), "Traceback …")})
    assert describe_failure(bug) == (1, "KeyError: 'beta'")
    died = WorkerGroupError("lost", {1: WorkerHealthCheckFailedError("A worker health check failed.\nWorker info: …",
                                                                     ActorDiedError())})
    assert describe_failure(died) == (1, "a worker process died (WorkerHealthCheckFailedError: A worker health check failed.)")


def test_classification_of_real_errors(tmp_path, s3_server):
    import s3fs

    with pytest.raises(StorageError) as full:
        with storage_errors(str(tmp_path)):
            raise OSError(28, "No space left on device")
    assert full.value.kind == "disk_full" and full.value.exit_status == 7
    fs = s3fs.S3FileSystem(**s3_server.storage_options)
    with pytest.raises(FileNotFoundError) as missing:
        fs.cat_file("no-such-bucket-here/x")
    assert describe_failure(missing.value)[0] in (1, 5)  # s3fs maps it to FileNotFoundError: the caller decides
    status, line = describe_failure(RuntimeError("wrapper"))
    assert status == 1 and line == "RuntimeError: wrapper"
    with pytest.raises(CheckpointError):
        load_checkpoint(str(tmp_path / "nothing"))
