"""The user's cluster path, rehearsed on this machine (tools/local_cluster.py): the cluster
file derived from cluster/aws.yaml; then (integration tier) `up`, data converted to S3
(moto on loopback), training, evaluation and a sweep submitted as jobs with `ray job submit
--working-dir .` onto worker nodes the autoscaler starts and removes, a spot interruption
during an elastic run, and `down`, which leaves no process behind."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import jsonschema
import pytest
import yaml

import ray.autoscaler

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
PYTHON_DIR = os.path.dirname(sys.executable)
# Stand-ins for secrets: the submitting shell's and the one the cluster's nodes hold
# (where an instance profile would be on AWS). Neither may appear in Ray's job records.
SUBMITTER_SECRET = "submitter-secret-5b7e1c"
CLUSTER_SECRET = "cluster-secret-9d2f4a"


def _tool():
    spec = importlib.util.spec_from_file_location("local_cluster", ROOT / "tools" / "local_cluster.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tool():
    return _tool()


# --- the rehearsal cluster file (no Ray started) ---------------------------------------------

def test_the_rehearsal_file_keeps_the_cloud_files_node_types_and_scaling(tool):
    cloud = yaml.safe_load((ROOT / "cluster" / "aws.yaml").read_text())
    cloud["upscaling_speed"] = 2.0  # carried over when the cloud file sets it
    config, notes = tool.rehearsal_config(cloud, 2, "127.0.0.1:6380", "/tmp/r/nodes", tool.instance_catalogue())
    jsonschema.validate(config, json.loads(SCHEMA.read_text()))  # what Ray's autoscaler accepts
    provider = config["provider"]
    assert (provider["type"], provider["module"]) == ("external", "rehearsal_provider.RehearsalNodeProvider")
    assert provider["gcs_address"] == "127.0.0.1:6380" and provider["nodes_dir"] == "/tmp/r/nodes"
    for key in ("cluster_name", "max_workers", "idle_timeout_minutes", "upscaling_speed"):
        assert config[key] == cloud[key], key
    workers = {name: t for name, t in cloud["available_node_types"].items() if name != cloud["head_node_type"]}
    rehearsal = config["available_node_types"]
    assert set(rehearsal) == set(workers) | {config["head_node_type"]}
    for name, node_type in workers.items():
        assert (rehearsal[name]["min_workers"], rehearsal[name]["max_workers"]) == (
            node_type["min_workers"], node_type["max_workers"])
    # GPUs per instance as AWS lists them: g5.2xlarge has 1 A10G, p4d.24xlarge 8 A100s; each
    # becomes a CPU and a rehearsal_gpu, one training worker each.
    assert {k: v for k, v in rehearsal["gpu_worker"]["resources"].items() if k != "object_store_memory"} == {
        "CPU": 1, tool.GPU_RESOURCE: 1}
    assert rehearsal["gpu8_worker"]["resources"][tool.GPU_RESOURCE] == 8
    assert rehearsal[config["head_node_type"]]["resources"] == {"CPU": 2}  # m6i.2xlarge's 8 vCPUs, 2 cores here
    assert all(t["node_config"] == {} for t in rehearsal.values())
    said = "\n".join(notes)
    for left_out in ("ImageId", "IamInstanceProfile", "InstanceMarketOptions", "setup_commands", "file_mounts",
                     "provider aws", "head_start_ray_commands", "worker_start_ray_commands", "auth"):
        assert left_out in said, left_out


def test_a_shorter_idle_timeout_is_said_and_an_unknown_instance_type_is_one_line(tool, capsys):
    cloud = yaml.safe_load((ROOT / "cluster" / "aws.yaml").read_text())
    config, notes = tool.rehearsal_config(cloud, 2, "127.0.0.1:1", "/tmp/r/nodes", tool.instance_catalogue(),
                                          idle_timeout_minutes=0.5)
    assert config["idle_timeout_minutes"] == 0.5 and any("instead of 10" in n for n in notes)
    cloud["available_node_types"]["gpu_worker"]["node_config"]["InstanceType"] = "g5.3xhuge"
    bad = Path(tempfile.mkdtemp()) / "bad.yaml"
    bad.write_text(yaml.safe_dump(cloud))
    assert tool.main(["config", "--cluster", str(bad)]) == 2
    assert capsys.readouterr().err.strip() == "local_cluster: error: unknown EC2 instance type 'g5.3xhuge'"
    shutil.rmtree(bad.parent)


# --- the rehearsal itself (integration tier) ---------------------------------------------------

class JobAPI:
    """Ray's job REST API (what `ray job` talks to), with the cluster's token."""

    def __init__(self, url: str):
        self.url = url
        token = os.environ.get("RAY_AUTH_TOKEN") or Path("~/.ray/auth_token").expanduser().read_text().strip()
        self.headers = {"Authorization": f"Bearer {token}"}

    def get(self, path: str):
        request = urllib.request.Request(f"{self.url}{path}", headers=self.headers)
        with urllib.request.urlopen(request, timeout=30) as reply:
            return json.loads(reply.read())

    def text(self, path: str) -> str:
        return json.dumps(self.get(path))

    def stop(self, job: str) -> None:
        request = urllib.request.Request(f"{self.url}/api/jobs/{job}/stop", method="POST", headers=self.headers)
        try:
            urllib.request.urlopen(request, timeout=30).close()
        except OSError:
            pass

    def nodes(self) -> list[dict]:
        """Every node the cluster has had (state API), with labels and state."""
        return self.get("/api/v0/nodes?detail=1&limit=1000")["data"]["result"]["result"]


class Rehearsal:
    """`up` / `down` of tools/local_cluster.py as a user runs them, a job API, and what to
    print when a wait fails."""

    def __init__(self, folder: Path, cluster_env: dict[str, str], imds_url: str):
        self.folder, self.env, self.imds_url = folder, cluster_env, imds_url
        self.port = _tool().free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api: JobAPI | None = None
        self.sessions: list[int] = []

    def run_tool(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(ROOT / "tools" / "local_cluster.py"), *args, "--dir", str(self.folder)],
                              env=self.env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)

    def up(self) -> str:
        done = self.run_tool("up", "--dashboard-port", str(self.port), "--idle-timeout-minutes", "0.5",
                             "--imds", self.imds_url)
        self.sessions = json.loads((self.folder / "rehearsal.json").read_text())["sessions"] if (
            self.folder / "rehearsal.json").exists() else []
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        self.api = JobAPI(self.url)
        return done.stdout

    def down(self) -> str:
        done = self.run_tool("down", timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def diagnosis(self, job: str | None = None) -> str:
        """monitor.err / monitor.out / monitor.log tails (the autoscaler), the nodes, the job's log."""
        logs = self.folder / "session_latest" / "logs"
        parts = [f"--- {name}:\n{_tail(logs / name)}" for name in ("monitor.err", "monitor.out", "monitor.log")]
        try:
            parts.append("--- nodes: " + json.dumps([(n["node_id"][-5:], n["state"], n["labels"].get("rehearsal-node-type"))
                                                      for n in self.api.nodes()]))
            if job:
                parts.append(f"--- job {job}:\n" + self.api.get(f"/api/jobs/{job}/logs")["logs"][-4000:])
        except Exception as err:  # noqa: BLE001 - a diagnosis must not hide the failure it explains
            parts.append(f"--- (job API: {err})")
        return "\n".join(parts)

    def submit(self, name: str, command: list[str], env_vars: dict[str, str] | None = None) -> str:
        """`ray job submit --working-dir . -- COMMAND` from the repository root, as a user
        does, from a shell that holds an AWS secret; returns the job's id."""
        shell = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "RAY_AUTH_MODE": "token",
                 "AWS_ACCESS_KEY_ID": "AKIASUBMITTER", "AWS_SECRET_ACCESS_KEY": SUBMITTER_SECRET,
                 "PATH": PYTHON_DIR + os.pathsep + os.environ.get("PATH", "")}
        runtime_env = ["--runtime-env-json", json.dumps({"env_vars": env_vars})] if env_vars else []
        submit = [shutil.which("ray", path=PYTHON_DIR), "job", "submit", "--address", self.url, "--submission-id", name,
                  "--no-wait", "--working-dir", ".", *runtime_env, "--", *command]
        done = subprocess.run(submit, env=shell, cwd=ROOT, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:] + self.diagnosis()
        return name

    def wait_job(self, job: str, timeout: float) -> dict:
        """The job's record once it ended; on a timeout the job is stopped and the test fails
        with the autoscaler's logs."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            record = self.api.get(f"/api/jobs/{job}")
            if record["status"] in ("SUCCEEDED", "FAILED", "STOPPED"):
                return record
            time.sleep(2)
        self.api.stop(job)
        pytest.fail(f"job {job} not done after {timeout:g} s\n{self.diagnosis(job)}")

    def wait_for(self, what: str, check, timeout: float, job: str | None = None):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = check()
            if value:
                return value
            time.sleep(1)
        pytest.fail(f"{what}: not after {timeout:g} s\n{self.diagnosis(job)}")

    def autoscaler_pid(self) -> int:
        """The process id of the cluster's autoscaler (Ray's monitor.py on the head)."""
        listing = subprocess.run(["ps", "-A", "-ww", "-o", "pid=,args="], capture_output=True, text=True,
                                 check=True).stdout
        pids = [int(line.split()[0]) for line in listing.splitlines()
                if "autoscaler/_private/monitor.py" in line and str(self.folder) in line]
        assert len(pids) == 1, f"autoscaler processes: {pids}\n{self.diagnosis()}"
        return pids[0]

    def worker_nodes(self, node_type: str = "gpu_worker", state: str | None = "ALIVE") -> list[dict]:
        return [n for n in self.api.nodes() if n["labels"].get("rehearsal-node-type") == node_type
                and (state is None or n["state"] == state)]


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as err:
        return f"({err})"


@pytest.fixture(scope="module")
def rehearsal(s3_server):
    from imds_server import InstanceMetadata

    bucket = s3_server.create_bucket("rehearsal")
    folder = Path(tempfile.mkdtemp(prefix="gdr", dir="/tmp"))  # short: Ray's socket paths are limited
    # The environment of `up` is the nodes' (their S3 access, as an instance profile would give).
    cluster_env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, **s3_server.env,
                   "AWS_SECRET_ACCESS_KEY": CLUSTER_SECRET}
    metadata = InstanceMetadata()
    cluster = Rehearsal(folder / "cluster", cluster_env, metadata.url)
    cluster.bucket, cluster.metadata, cluster.s3 = bucket, metadata, s3_server
    started = time.monotonic()
    try:
        # Data: tools/shard.py writes a small Multi-dSprites set to S3 (96 train, 16 test images).
        shard = subprocess.run([sys.executable, str(ROOT / "tools" / "shard.py"), "multi_dsprites", "--out",
                                f"{bucket}/data", "--train", "96", "--val", "0", "--test", "16", "--img-size", "32",
                                "--shard-size", "16", "--quiet"], env=cluster_env, capture_output=True, text=True,
                               timeout=300)
        assert shard.returncode == 0, shard.stderr[-3000:]
        cluster.up_output = cluster.up()
        yield cluster
    finally:
        try:
            if cluster.api is not None or (folder / "cluster" / "rehearsal.json").exists():
                cluster.down_output = cluster.down()
        finally:
            left = _tool().processes_of(cluster.sessions, str(folder)) if cluster.sessions else []
            metadata.close()
            shutil.rmtree(folder, ignore_errors=True)
            print(f"[rehearsal] wall time {time.monotonic() - started:.0f} s (load average "
                  f"{Path('/proc/loadavg').read_text().split()[:3]})")
        assert not left, f"processes left after down: {left}"


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_train_evaluate_and_tune_run_as_jobs_on_nodes_the_autoscaler_starts_and_removes(rehearsal):
    from tiny_config import TINY

    from genesis_dist.evaluation.report import read_records
    from genesis_dist.storage import filesystem, join
    from genesis_dist.training.checkpoint import latest_complete_checkpoint
    from genesis_dist.training.hooks import read_history

    api, s3 = rehearsal.api, rehearsal.s3.storage_options
    assert "ray.head.default" in rehearsal.up_output and "IamInstanceProfile" in rehearsal.up_output
    assert not rehearsal.worker_nodes(state=None)  # the head alone: min_workers is 0
    data, runs = f"{rehearsal.bucket}/data", f"{rehearsal.bucket}/runs"
    on_gpu_nodes = ["scaling.cpus_per_worker=1", "scaling.resources_per_worker.rehearsal_gpu=1"]

    # Training with 2 workers: they need 2 rehearsal GPUs, which only gpu_worker nodes have.
    train = rehearsal.submit("train", ["python", "-m", "genesis_dist.train", *TINY, f"data.url={data}",
                                       f"run.storage_path={runs}", "run.name=rehearsal", "optim.steps=6",
                                       "scaling.num_workers=2", *on_gpu_nodes])
    record = rehearsal.wait_job(train, 420)
    assert record["status"] == "SUCCEEDED", rehearsal.diagnosis(train)
    started = rehearsal.worker_nodes(state=None)
    assert len(started) >= 2, rehearsal.diagnosis(train)  # the autoscaler added them for this job
    workers = [a for a in api.get("/api/v0/actors?detail=1&limit=10000")["data"]["result"]["result"]
               if a["class_name"] == "RayTrainWorker"]
    assert len(workers) == 2 and {a["node_id"] for a in workers} <= {n["node_id"] for n in started}
    run_url = join(runs, "rehearsal")
    assert latest_complete_checkpoint(run_url, s3)[0] == 6
    history = read_history(join(run_url, "metrics.jsonl"), s3, upto_step=10**9)
    assert [r["step"] for r in history] == [1, 2, 3, 4, 5, 6]
    # The job ran the uploaded repository without the ignored folders (.venv, runs/, data/).
    packages = [p for p in (rehearsal.folder / "session_latest" / "runtime_resources" / "working_dir_files").iterdir()
                if p.is_dir()]
    assert packages and all((p / "genesis_dist").is_dir() for p in packages)
    assert not [p / ignored for p in packages for ignored in (".venv", ".git", "runs", "data") if (p / ignored).exists()]

    # Evaluation of every checkpoint (on the head's CPUs: no GPU asked for).
    evaluate = rehearsal.submit("evaluate", ["python", "-m", "genesis_dist.evaluate", "--run", run_url, "actors=1",
                                             "fid_samples=0", "segmentation_images=8", "elbo_images=16", "batch_size=8"])
    assert rehearsal.wait_job(evaluate, 300)["status"] == "SUCCEEDED", rehearsal.diagnosis(evaluate)
    scored = read_records(run_url, s3)
    assert {2, 4, 6} <= set(scored) and all(r["elbo"] == r["elbo"] for r in scored.values())

    # A 2-trial sweep: its space file reaches the job through GENESIS_DIST_CONFIGS.
    configs = rehearsal.folder / "configs"
    shutil.copytree(ROOT / "configs", configs)
    (configs / "tune" / "two_kernels.yaml").write_text(
        "sweep: {metric: eval_elbo, mode: max, scheduler: fifo}\nspace:\n  model.kernel: {grid: [gaussian, laplacian]}\n")
    tune = rehearsal.submit("tune", ["python", "-m", "genesis_dist.tune", "space=two_kernels", *TINY, f"data.url={data}",
                                     f"run.storage_path={runs}", "optim.steps=4", "scaling.num_workers=1",
                                     *on_gpu_nodes, "sweep.name=sweep", "sweep.max_concurrent_trials=2"],
                            env_vars={"GENESIS_DIST_CONFIGS": str(configs)})
    assert rehearsal.wait_job(tune, 420)["status"] == "SUCCEEDED", rehearsal.diagnosis(tune)
    fs, sweep = filesystem(join(runs, "sweep"), s3)
    table = fs.cat_file(f"{sweep}/sweep.md").decode()
    assert len([line for line in table.splitlines() if line.startswith("| ") and "| finished | 4 |" in line]) == 2
    best = yaml.safe_load(fs.cat_file(f"{sweep}/best.yaml"))
    assert best["model"]["kernel"] in ("gaussian", "laplacian") and best["optim"]["steps"] == 4

    # No secret in any job record (entrypoint, runtime environment, metadata) nor in the
    # runtime environments of the jobs' actors and tasks.
    records = api.text("/api/jobs/") + api.text("/api/v0/actors?detail=1&limit=10000") + api.text(
        "/api/v0/tasks?detail=1&limit=10000")
    assert "genesis_dist.tune" in records and "GENESIS_DIST_CONFIGS" in records  # the records were read
    assert SUBMITTER_SECRET not in records and CLUSTER_SECRET not in records

    # Idle worker nodes go (idle_timeout_minutes 0.5 here).
    rehearsal.wait_for("idle worker nodes removed", lambda: not rehearsal.worker_nodes(), 180)


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_a_spot_interruption_drains_one_node_and_the_elastic_job_shrinks_grows_back_and_trains_every_sample_once(
        rehearsal):
    from elastic_checks import attempt_worlds, check_every_sample_once, progress
    from tiny_config import TINY

    steps = 360
    run = rehearsal.folder / "runs" / "spot"  # local: sample-key logs are local files (every node shares them)
    # 96 samples, 8 per worker: 6 steps an epoch at 2 workers, 12 at 1; a checkpoint every 4
    # steps falls where the epoch's rest divides by either global batch (tests/test_elastic.py).
    job = rehearsal.submit("spot", [  # --verbose: Ray Train's preemption notice reaches the job's logs
        "python", "-m", "genesis_dist.train", "--verbose", *TINY, f"data.url={rehearsal.bucket}/data",
        f"run.storage_path={run.parent}", "run.name=spot", f"optim.steps={steps}", "scaling.num_workers=[1,2]",
        "scaling.resize_interval_s=2", "run.checkpoint_every=4", "run.keep_checkpoints=1000", "run.log_sample_keys=true",
        "run.max_failures=4", "scaling.cpus_per_worker=1", "scaling.resources_per_worker.rehearsal_gpu=1"],
        # Ray Train may first try the old size once after a node goes; that attempt waits for
        # the worker-group start timeout (60 s by default) before the smaller start.
        env_vars={"RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S": "1", "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "10"})

    def attempt_with(world, new_steps, after_attempts):
        """An attempt later than `after_attempts` with `world` workers that has logged
        `new_steps` steps: its number, else None (fails when the job ended)."""
        count, current, first, last = progress(run)
        if count > after_attempts and current == world and last - first + 1 >= new_steps:
            return count
        status = rehearsal.api.get(f"/api/jobs/{job}")["status"]
        assert status in ("PENDING", "RUNNING"), f"the job ended early ({status}): {progress(run)}\n" + rehearsal.diagnosis(job)
        return None

    seen = rehearsal.wait_for("2 workers training", lambda: attempt_with(2, 5, 0), 360, job)
    # Two gpu_worker nodes, each with a training worker (an extra idle one goes after 0.5 min).
    first_nodes = rehearsal.wait_for("two gpu_worker nodes", lambda: [n for n in [rehearsal.worker_nodes()]
                                                                      if len(n) == 2], 120, job)[0]
    doomed = first_nodes[-1]["node_id"]
    rehearsal.wait_for("the spot watcher polling", lambda: rehearsal.metadata.polled_by(doomed), 60, job)
    # Nodes start here in seconds, before Ray Train would restart smaller; as when EC2 has no
    # spot capacity for a while, the autoscaler is paused until the run goes on with one worker.
    monitor = rehearsal.autoscaler_pid()
    os.kill(monitor, signal.SIGSTOP)
    try:
        # EC2 announces the interruption two minutes ahead; here 10 s.
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 10))
        rehearsal.metadata.notices[doomed] = {"action": "terminate", "time": when}
        rehearsal.wait_for("the drained node gone",
                           lambda: not any(n["node_id"] == doomed for n in rehearsal.worker_nodes()), 120, job)
        seen = rehearsal.wait_for("1 worker training on", lambda: attempt_with(1, 3, seen), 240, job)
    finally:
        os.kill(monitor, signal.SIGCONT)
    replacement = rehearsal.wait_for(
        "a replacement node", lambda: [n for n in rehearsal.worker_nodes() if n["node_id"] not in
                                       {m["node_id"] for m in first_nodes}], 240, job)
    rehearsal.wait_for("2 workers again", lambda: attempt_with(2, 1, seen), 240, job)
    record = rehearsal.wait_job(job, 420)
    assert record["status"] == "SUCCEEDED", rehearsal.diagnosis(job)

    logs = rehearsal.api.get(f"/api/jobs/{job}/logs")["logs"]
    assert "Training was interrupted by node preemption" in logs  # Ray Train saw a preemption
    watcher_log = (rehearsal.folder / f"spot-watcher-{doomed}.log").read_text()
    assert f"drained node {doomed} as a preemption: spot interruption" in watcher_log
    dead = next(n for n in rehearsal.api.nodes() if n["node_id"] == doomed)
    print(f"[rehearsal] the drained node: {dead}")
    assert dead["state"] == "DEAD", dead
    assert attempt_worlds(run) == [2, 1, 2]
    check_every_sample_once(run, steps, samples=96, batch=8)
    assert replacement[0]["labels"]["rehearsal-node-type"] == "gpu_worker"


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_an_up_that_fails_midway_stops_everything_it_started(tool):
    """`ray start` cut short by `up`'s own timeout: `up` reports it in one line, status 1,
    and leaves no process of its folder behind; `down` then has nothing left to stop."""
    folder = Path(tempfile.mkdtemp(prefix="gdr", dir="/tmp")) / "cluster"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    command = [sys.executable, str(ROOT / "tools" / "local_cluster.py")]
    try:
        done = subprocess.run([*command, "up", "--dir", str(folder), "--dashboard-port", str(tool.free_port()),
                               "--timeout", "3"], env=env, capture_output=True, text=True, timeout=240)
        assert done.returncode == 1, done.stdout + done.stderr
        assert done.stderr.strip().splitlines()[-1] == (
            "local_cluster: error: the cluster did not come up: `ray start --head` did not finish within 3 s")
        sessions = json.loads((folder / "rehearsal.json").read_text())["sessions"]
        assert sessions and not tool.processes_of(sessions, str(folder))
        down = subprocess.run([*command, "down", "--dir", str(folder)], env=env, capture_output=True, text=True,
                              timeout=120)
        assert down.returncode == 0 and "0 processes stopped" in down.stdout, down.stdout + down.stderr
    finally:
        shutil.rmtree(folder.parent, ignore_errors=True)
