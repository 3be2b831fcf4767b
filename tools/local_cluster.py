#!/usr/bin/env python
"""Rehearse cluster/aws.yaml on this machine: the same node types, autoscaled by Ray's own
autoscaler, as local Ray nodes (Ray's `fake_multinode` provider), before paying for AWS.

    python tools/local_cluster.py up                 # head + autoscaling worker types of cluster/aws.yaml
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python -m genesis_dist.train ...
    python tools/local_cluster.py down               # stop it; no process is left behind
    python tools/local_cluster.py config             # print the derived cluster file and what it left out

What is carried over from the cloud file: the node type names of the workers, their
`min_workers`/`max_workers`, the cluster's `max_workers`, `idle_timeout_minutes` and
`upscaling_speed`. Each GPU worker type becomes nodes with one CPU and one `rehearsal_gpu`
resource per GPU of its instance type (EC2's catalogue as moto ships it), so a job asks
for `scaling.resources_per_worker.rehearsal_gpu=1` where on AWS it would use the GPU; the
head keeps its vCPUs up to this machine's cores. What cannot be carried over (the AMI,
instance profile, setup commands, SSH, EC2 spot markets) is printed with the reason.

Everything lives in one private folder (`--dir`): Ray's temp dir (sessions, logs,
sockets; no /tmp/ray/ray_current_cluster is written, so a bare `ray.init()` elsewhere on
the machine never joins this cluster), the derived cluster file and `rehearsal.json`, which
`down` reads to stop exactly the processes `up` started (their sessions), never any other
Ray on the machine. Every node inherits the environment of `up`: S3 credentials and
`AWS_ENDPOINT_URL` given there stand in for the nodes' instance profile.

Spot interruptions: with `--imds URL`, `up` runs cluster/spot_watcher.py for every worker
node as cluster/aws.yaml's worker_start_ray_commands do, pointing node N's watcher at the
instance metadata service `URL/N` (AWS_EC2_METADATA_SERVICE_ENDPOINT), so a stand-in
server can announce an interruption to one node.

Exit status: 0 done, 1 the cluster did not come up (the log's tail is printed and what
started is stopped), 2 a usage error (one line).
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CLOUD_FILE = ROOT / "cluster" / "aws.yaml"
SPOT_WATCHER = ROOT / "cluster" / "spot_watcher.py"
DEFAULT_DIR = f"/tmp/genesis-rehearsal-{os.getuid()}"  # short: Ray's Unix socket paths are limited
GPU_RESOURCE = "rehearsal_gpu"
PROVIDER = "rehearsal_provider.RehearsalNodeProvider"  # tools/rehearsal_provider.py
# The name Ray's fake provider tags its head node with; the head node type must carry it.
FAKE_HEAD_TYPE = "ray.head.default"
NODE_OBJECT_STORE_BYTES = 200 * 1024**2  # per node: Ray's default (30 % of memory) would be per node too
STATE_FILE = "rehearsal.json"
NODE_TYPE_LABEL = "rehearsal-node-type"
CARRIED = ("cluster_name", "max_workers", "idle_timeout_minutes", "upscaling_speed")
WHY_LEFT_OUT = {
    "provider": "replaced by Ray's fake_multinode provider: nodes are Ray processes on this machine, each with "
                "a folder of its own",
    "auth": "no SSH: nodes are local processes",
    "file_mounts": "jobs get the repository through `ray job submit --working-dir .`; all nodes share this machine's files",
    "setup_commands": "no installation: every node runs the Python environment that ran `up`",
    "head_setup_commands": "no installation: every node runs the Python environment that ran `up`",
    "worker_setup_commands": "no installation: every node runs the Python environment that ran `up`",
    "initialization_commands": "no instance to initialise",
    "head_start_ray_commands": "`up` starts the head itself (private temp dir, free ports, dashboard on 127.0.0.1)",
    "worker_start_ray_commands": "Ray's fake provider starts each worker's raylet; `up --imds URL` runs the spot "
                                 "watcher on every worker node, as these commands do",
    "docker": "no containers",
    "cluster_synced_files": "nothing to sync: one machine",
    "rsync_exclude": "nothing to sync: one machine",
    "rsync_filter": "nothing to sync: one machine",
}


class RehearsalError(RuntimeError):
    """A problem reported in one line."""


# --- the rehearsal cluster file ---------------------------------------------------------------

def instance_catalogue() -> dict:
    """EC2 instance types (vCPUs, GPUs) from the describe-instance-types data moto ships."""
    try:
        import moto.ec2
    except ImportError:
        raise RehearsalError("the EC2 instance-type catalogue comes with moto: pip install -e '.[dev]'") from None
    path = Path(moto.ec2.__file__).parent / "resources" / "instance_types.json.gz"
    with gzip.open(path) as f:
        return json.load(f)


def instance_shape(instance_type: str, catalogue: dict) -> tuple[int, int, str]:
    """(vCPUs, GPUs, GPU model) of an EC2 instance type, e.g. (8, 1, "A10G") for g5.2xlarge."""
    info = catalogue.get(instance_type)
    if info is None:
        raise RehearsalError(f"unknown EC2 instance type {instance_type!r}")
    gpus = info.get("GpuInfo", {}).get("Gpus", [])
    return (info["VCpuInfo"]["DefaultVCpus"], sum(g["Count"] for g in gpus),
            "+".join(g["Name"] for g in gpus))


def rehearsal_config(cloud: dict, cores: int, gcs_address: str, nodes_dir: str, catalogue: dict,
                     idle_timeout_minutes: float | None = None) -> tuple[dict, list[str]]:
    """The rehearsal cluster file for the cloud cluster file `cloud` (a parsed
    cluster/aws.yaml) on a machine with `cores` cores whose head's GCS listens at
    `gcs_address`, worker nodes keeping their files under `nodes_dir`, and the lines
    saying what was left out or changed and why."""
    notes: list[str] = []
    config = {key: cloud[key] for key in CARRIED if key in cloud}
    if idle_timeout_minutes is not None:
        notes.append(f"idle_timeout_minutes: {idle_timeout_minutes:g} instead of {cloud.get('idle_timeout_minutes')} "
                     "(--idle-timeout-minutes)")
        config["idle_timeout_minutes"] = idle_timeout_minutes
    # Ray's fake_multinode provider, each node with a folder of its own (tools/rehearsal_provider.py).
    config["provider"] = {"type": "external", "module": PROVIDER, "nodes_dir": nodes_dir,
                          "gcs_address": gcs_address, "use_node_id_as_ip": True,
                          "disable_node_updaters": True, "disable_launch_config_check": True,
                          # Without it the fake provider starts one node per launch request, whatever the count.
                          "launch_multiple": True}
    types: dict[str, dict] = {}
    head_name = cloud["head_node_type"]
    for name, node_type in cloud["available_node_types"].items():
        instance = node_type.get("node_config", {}).get("InstanceType")
        vcpus, gpus, model = instance_shape(instance, catalogue) if instance else (cores, 0, "")
        left = ", ".join(k for k in node_type.get("node_config", {}) if k != "InstanceType")
        if name == head_name:
            cpus = min(vcpus, cores)
            types[FAKE_HEAD_TYPE] = {"resources": {"CPU": cpus}, "node_config": {}, "max_workers": 0}
            notes.append(f"{name} ({instance}): the head, named {FAKE_HEAD_TYPE} (the name Ray's fake provider "
                         f"gives its head node), {cpus} CPUs of this machine's {cores}")
        else:
            resources = ({"CPU": gpus, GPU_RESOURCE: gpus} if gpus else {"CPU": min(vcpus, cores)})
            types[name] = {"resources": {**resources, "object_store_memory": NODE_OBJECT_STORE_BYTES},
                           "node_config": {}, "min_workers": node_type.get("min_workers", 0),
                           "max_workers": node_type.get("max_workers", cloud.get("max_workers", 0))}
            if "idle_timeout_s" in node_type:
                types[name]["idle_timeout_s"] = node_type["idle_timeout_s"]
            # Ray labels each node with this (dashboard, state API): which type the autoscaler started.
            types[name]["labels"] = {**node_type.get("labels", {}), NODE_TYPE_LABEL: name}
            shape = (f"{gpus} × {model}: {gpus} CPU(s) and {GPU_RESOURCE}: {gpus}, one per GPU (the training "
                     f"workers run on the CPU and ask for {GPU_RESOURCE})" if gpus else
                     f"{resources['CPU']} CPUs")
            notes.append(f"{name} ({instance}, {shape}), {types[name]['min_workers']} to "
                         f"{types[name]['max_workers']} nodes")
        if left:
            notes.append(f"{name}: node_config {left} not carried over: EC2 launch settings (the AMI, the instance "
                         "profile's S3 access, disks, the spot market); nodes get S3 access from the environment of `up`")
    config["available_node_types"] = types
    config["head_node_type"] = FAKE_HEAD_TYPE
    for key, why in WHY_LEFT_OUT.items():
        if key == "provider":
            notes.append(f"provider {cloud['provider'].get('type')} ({cloud['provider'].get('region', '')}): {why}")
        elif cloud.get(key):
            notes.append(f"{key}: not carried over: {why}")
    for key in sorted(set(cloud) - set(CARRIED) - set(WHY_LEFT_OUT) - {"available_node_types", "head_node_type"}):
        notes.append(f"{key}: not carried over: not used by the rehearsal")
    # The keys `ray up` fills in before the autoscaler reads the file (the monitor reads it as is).
    for key in ("file_mounts", "docker", "auth"):
        config[key] = {}
    for key in ("cluster_synced_files", "rsync_exclude", "rsync_filter", "initialization_commands",
                "setup_commands", "head_setup_commands", "worker_setup_commands", "head_start_ray_commands",
                "worker_start_ray_commands"):
        config[key] = []
    config["file_mounts_sync_continuously"] = False
    return config, notes


# --- processes ----------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_taken(port: int) -> bool:
    """True when something listens on 127.0.0.1:`port` (closed connections do not count)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def processes_of(sessions: list[int], folder: str) -> list[int]:
    """Process ids in the given sessions or whose command line names `folder` (the
    rehearsal's private folder: every Ray process of the cluster has its session path
    in its arguments), this process excepted. Zombies are left out: they have exited and
    hold nothing (their parent reaps them; `stop_processes` reaps `up`'s own)."""
    listing = subprocess.run(["ps", "-A", "-ww", "-o", "pid=,stat=,args="], capture_output=True, text=True,
                             check=True).stdout
    found = []
    for line in listing.splitlines():
        pid_text, _, rest = line.strip().partition(" ")
        stat, _, args = rest.strip().partition(" ")
        pid = int(pid_text)
        if pid == os.getpid() or stat.startswith("Z"):
            continue
        try:
            in_session = os.getsid(pid) in sessions
        except OSError:  # gone meanwhile
            continue
        if in_session or (folder in args and "ray" in args):
            found.append(pid)
    return found


def reap_children() -> None:
    """Collect the exit status of this process's children that have exited."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def stop_processes(sessions: list[int], folder: str, grace_s: float = 10.0) -> int:
    """SIGTERM the rehearsal's processes, SIGKILL what is left after `grace_s`; returns
    how many there were. Raises RehearsalError when some survive."""
    reap_children()
    pids = processes_of(sessions, folder)
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        for pid in processes_of(sessions, folder):
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + wait_s
        while processes_of(sessions, folder) and time.monotonic() < deadline:
            time.sleep(0.2)
            reap_children()
    left = processes_of(sessions, folder)
    if left:
        raise RehearsalError(f"processes {left} survived SIGKILL")
    return len(pids)


def read_state(folder: Path) -> dict | None:
    try:
        return json.loads((folder / STATE_FILE).read_text())
    except FileNotFoundError:
        return None


def write_state(folder: Path, state: dict) -> None:
    (folder / STATE_FILE).write_text(json.dumps(state, indent=1))


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"({path} unreadable)"


def cluster_logs(folder: Path) -> Path:
    """The logs folder of the cluster's (latest) Ray session."""
    return folder / "session_latest" / "logs"


def ensure_token(python_dir: str) -> None:
    """Make Ray's authentication token (~/.ray/auth_token) if there is none; never print it."""
    ray_cli = shutil.which("ray", path=python_dir) or "ray"
    subprocess.run([ray_cli, "get-auth-token", "--generate"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=True, timeout=60)


def wait_for_dashboard(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/api/version", timeout=2).close()
            return
        except urllib.error.HTTPError:  # it answers (401 under token authentication)
            return
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    raise RehearsalError(f"the dashboard at {url} did not answer within {timeout_s:g} s")


# --- commands -----------------------------------------------------------------------------------

def load_cloud_file(path: str) -> dict:
    try:
        cloud = yaml.safe_load(Path(path).read_text())
    except OSError as err:
        raise RehearsalError(f"{path}: {err.strerror or err}") from None
    if not isinstance(cloud, dict) or "available_node_types" not in cloud or "head_node_type" not in cloud:
        raise RehearsalError(f"{path}: not a Ray cluster file with available_node_types and head_node_type")
    return cloud


def up(args: argparse.Namespace) -> int:
    folder = Path(args.dir)
    previous = read_state(folder)
    if previous is not None and processes_of(previous["sessions"], str(folder)):
        raise RehearsalError(f"a rehearsal cluster already runs from {folder} (dashboard {previous['dashboard']}); "
                             f"stop it with: python tools/local_cluster.py down --dir {folder}")
    if port_taken(args.dashboard_port):
        raise RehearsalError(f"port {args.dashboard_port} is taken on 127.0.0.1; choose another with --dashboard-port")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    gcs_port = free_port()
    gcs_address = f"127.0.0.1:{gcs_port}"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    config, notes = rehearsal_config(load_cloud_file(args.cluster), cores, gcs_address, str(folder / "nodes"),
                                     instance_catalogue(), args.idle_timeout_minutes)
    (folder / "cluster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    print(f"[rehearsal] {args.cluster} → {folder / 'cluster.yaml'}")
    for line in notes:
        print(f"[rehearsal]   {line}")
    dashboard = f"http://127.0.0.1:{args.dashboard_port}"
    head_cpus = config["available_node_types"][FAKE_HEAD_TYPE]["resources"]["CPU"]
    python_dir = os.path.dirname(sys.executable)
    env = {**os.environ,
           "RAY_FAKE_CLUSTER": "1",  # lets the autoscaler load the fake_multinode provider
           # Token authentication (the token in ~/.ray/auth_token, made if missing, as ray.init() does):
           # the job API listens on this machine's loopback, which other users of the machine reach too.
           "RAY_AUTH_MODE": "token",
           "RAY_TMPDIR": str(folder),
           # Every process of the cluster asks this dashboard for state (see genesis_dist/ray_cluster.py).
           "RAY_API_SERVER_ADDRESS": dashboard,
           # Jobs run `python` from the environment that runs `up`.
           "PATH": python_dir + os.pathsep + os.environ.get("PATH", ""),
           # The autoscaler imports the rehearsal's node provider from this folder.
           "PYTHONPATH": os.pathsep.join(p for p in (str(Path(__file__).resolve().parent),
                                                     os.environ.get("PYTHONPATH")) if p),
           "RAY_ADDRESS": ""}
    command = [shutil.which("ray", path=python_dir) or "ray", "start", "--head", f"--port={gcs_port}",
               f"--temp-dir={folder}", f"--num-cpus={head_cpus}", f"--object-store-memory={NODE_OBJECT_STORE_BYTES}",
               "--dashboard-host=127.0.0.1", f"--dashboard-port={args.dashboard_port}",
               f"--autoscaling-config={folder / 'cluster.yaml'}", f"--ray-client-server-port={free_port()}",
               f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
               f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
               "--disable-usage-stats"]
    ensure_token(python_dir)
    state = {"dashboard": dashboard, "gcs_address": gcs_address, "sessions": []}
    try:
        with open(folder / "up.log", "w") as log:
            head = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            state["sessions"].append(head.pid)
            write_state(folder, state)
            try:
                status = head.wait(timeout=args.timeout)
            except subprocess.TimeoutExpired:
                raise RehearsalError(f"`ray start --head` did not finish within {args.timeout:g} s") from None
            if status != 0:
                raise RehearsalError(f"`ray start --head` failed (status {status})")
        if args.imds:
            with open(folder / "spot-watchers.log", "w") as watcher_log:
                agent = subprocess.Popen([sys.executable, __file__, "watch-nodes", "--dir", str(folder),
                                          "--imds", args.imds], env=env, stdout=watcher_log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
            state["sessions"].append(agent.pid)
            write_state(folder, state)
        wait_for_dashboard(dashboard, args.timeout)
    except BaseException as err:  # Ctrl-C included: what started is stopped
        print(f"[rehearsal] {folder / 'up.log'}:\n{tail(folder / 'up.log')}", file=sys.stderr)
        stop_processes(state["sessions"], str(folder))
        if isinstance(err, (RehearsalError, OSError)):
            raise RehearsalError(f"the cluster did not come up: {err}") from None
        raise
    print(f"[rehearsal] up: dashboard and job API at {dashboard} (GCS {gcs_address}); logs in "
          f"{cluster_logs(folder)} (monitor.out/.err: the autoscaler)")
    print(f"[rehearsal] submit: RAY_AUTH_MODE=token ray job submit --address {dashboard} --working-dir . -- python -m genesis_dist.train "
          f"scaling.cpus_per_worker=1 scaling.resources_per_worker.{GPU_RESOURCE}=1 ...")
    print("[rehearsal] stop: python tools/local_cluster.py down" + (f" --dir {folder}" if args.dir != DEFAULT_DIR else ""))
    return 0


def down(args: argparse.Namespace) -> int:
    folder = Path(args.dir)
    state = read_state(folder)
    if state is None:
        print(f"[rehearsal] no rehearsal cluster in {folder}")
        return 0
    count = stop_processes(state["sessions"], str(folder))
    if not args.keep_logs:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"[rehearsal] down: {count} processes stopped" + ("" if args.keep_logs else f", {folder} removed"))
    return 0


def show_config(args: argparse.Namespace) -> int:
    config, notes = rehearsal_config(load_cloud_file(args.cluster), os.cpu_count() or 1, "127.0.0.1:GCS_PORT",
                                     f"{args.dir}/nodes", instance_catalogue(), args.idle_timeout_minutes)
    print(yaml.safe_dump(config, sort_keys=False), end="")
    for line in notes:
        print(f"# {line}")
    return 0


def watch_nodes(args: argparse.Namespace) -> int:
    """Run cluster/spot_watcher.py for every worker node that joins (what each node's
    worker_start_ray_commands do on AWS), node N's against the metadata service URL/N.
    Exits when the GCS has been unreachable for a minute."""
    import ray._raylet
    from ray.core.generated.gcs_pb2 import GcsNodeInfo

    folder = Path(args.dir)
    state = read_state(folder)
    client = ray._raylet.GcsClient(address=state["gcs_address"])
    watchers: dict[str, subprocess.Popen] = {}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    last_seen = time.monotonic()
    try:
        while time.monotonic() - last_seen < 60:
            try:
                nodes = client.get_all_node_info(timeout=10)
                last_seen = time.monotonic()
            except Exception:  # noqa: BLE001 - the GCS restarting or gone; decided by the timeout above
                time.sleep(1)
                continue
            for node_id, info in nodes.items():
                hex_id = node_id.hex()
                if info.state != GcsNodeInfo.ALIVE or info.is_head_node or hex_id in watchers:
                    continue
                env = {**os.environ, "AWS_EC2_METADATA_SERVICE_ENDPOINT": f"{args.imds.rstrip('/')}/{hex_id}"}
                with open(folder / f"spot-watcher-{hex_id}.log", "w") as log:
                    watchers[hex_id] = subprocess.Popen(
                        [sys.executable, str(SPOT_WATCHER), f"--address={state['gcs_address']}", f"--node-id={hex_id}"],
                        env=env, stdout=log, stderr=subprocess.STDOUT)
                print(f"[rehearsal] spot watcher for node {hex_id} ({info.node_name or 'worker'})", flush=True)
            for watcher in watchers.values():
                watcher.poll()
            time.sleep(1)
    finally:
        for watcher in watchers.values():
            if watcher.poll() is None:
                watcher.terminate()
    return 0


def parser() -> argparse.ArgumentParser:
    main_parser = argparse.ArgumentParser(prog="python tools/local_cluster.py", description=__doc__.split("\n\n")[0])
    commands = main_parser.add_subparsers(dest="command", required=True)
    for name, helptext in (("up", "start the rehearsal cluster"), ("down", "stop it and every process it started"),
                           ("config", "print the derived cluster file and what it leaves out"),
                           ("watch-nodes", argparse.SUPPRESS)):
        sub = commands.add_parser(name, help=helptext)
        sub.add_argument("--dir", default=DEFAULT_DIR, help=f"the rehearsal's private folder (default {DEFAULT_DIR})")
        if name in ("up", "config"):
            sub.add_argument("--cluster", default=str(CLOUD_FILE), help="the cloud cluster file (default cluster/aws.yaml)")
            sub.add_argument("--idle-timeout-minutes", type=float,
                             help="remove idle worker nodes after this long instead of the cluster file's time")
        if name == "up":
            sub.add_argument("--dashboard-port", type=int, default=8265, help="dashboard and job API port (default 8265)")
            sub.add_argument("--imds", help="instance metadata service base URL: run a spot watcher on every worker "
                                            "node against URL/NODE_ID")
            sub.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the head (default 120)")
        if name == "down":
            sub.add_argument("--keep-logs", action="store_true", help="keep the folder (Ray's logs) after stopping")
        if name == "watch-nodes":
            sub.add_argument("--imds", required=True)
    return main_parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    action = {"up": up, "down": down, "config": show_config, "watch-nodes": watch_nodes}[args.command]
    try:
        return action(args)
    except RehearsalError as err:
        print(f"local_cluster: error: {err}", file=sys.stderr)
        return 1 if args.command == "up" and "did not come up" in str(err) else 2


if __name__ == "__main__":
    sys.exit(main())
