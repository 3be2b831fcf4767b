"""cluster/aws.yaml validates against Ray's own cluster-config schema, offline; its GPU
worker types; cluster/spot_watcher.py drains a real Ray node as a preemption when an
IMDSv2 stand-in on loopback announces a spot interruption, or on SIGTERM."""
import datetime as dt
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest
import yaml

import ray.autoscaler

from imds_server import InstanceMetadata

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = Path(ray.autoscaler.__file__).parent / "ray-schema.json"


@pytest.fixture(scope="module")
def cluster():
    return yaml.safe_load((ROOT / "cluster" / "aws.yaml").read_text())


def test_cluster_file_matches_rays_schema(cluster):
    jsonschema.validate(cluster, json.loads(SCHEMA.read_text()))


def test_schema_rejects_unknown_keys(cluster):
    broken = {**cluster, "head_node_typo": "head"}
    with pytest.raises(jsonschema.ValidationError, match="Additional properties"):
        jsonschema.validate(broken, json.loads(SCHEMA.read_text()))


def test_no_credentials_and_s3_through_instance_profile(cluster):
    text = (ROOT / "cluster" / "aws.yaml").read_text()
    assert "aws_access_key_id" not in text.lower() and "aws_secret_access_key" not in text.lower()
    for node_type in cluster["available_node_types"].values():
        assert "IamInstanceProfile" in node_type["node_config"]
    assert cluster["head_node_type"] in cluster["available_node_types"]


def test_dashboard_not_exposed(cluster):
    # Ray's default security group admits SSH and intra-cluster traffic; no extra
    # ingress rules, and the dashboard binds to localhost (reached via `ray dashboard`).
    assert "security_group" not in cluster["provider"] or not cluster["provider"]["security_group"].get("IpPermissions")
    assert any("--dashboard-host=127.0.0.1" in c for c in cluster["head_start_ray_commands"])


def test_setup_installs_this_package(cluster):
    assert any("pip install" in c and "genesis-dist" in c for c in cluster["setup_commands"])
    gpu_workers = [t for t in cluster["available_node_types"].values() if t.get("max_workers", 0) > 0]
    assert gpu_workers and gpu_workers[0]["min_workers"] == 0


def test_gpu_worker_types_single_and_eight_gpus_all_spot_and_watched(cluster):
    workers = {name: t for name, t in cluster["available_node_types"].items() if name != cluster["head_node_type"]}
    types = {t["node_config"]["InstanceType"] for t in workers.values()}
    assert "g5.2xlarge" in types and "p4d.24xlarge" in types  # 1 × A10G and 8 × A100 nodes
    assert all(t["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot" for t in workers.values())
    watcher = [c for c in cluster["worker_start_ray_commands"] if "spot_watcher.py" in c]
    assert len(watcher) == 1 and "--address=$RAY_HEAD_IP:6379" in watcher[0] and "--pidfile" in watcher[0]
    assert watcher[0].rstrip().endswith("&")  # runs beside the node, does not block `ray up`
    script = watcher[0].split("genesis-dist/", 1)[1].split()[0]
    assert (ROOT / script).is_file()  # the path the nodes run exists in the repository


# --- the spot watcher against an IMDSv2 stand-in and a real Ray node -------------------------

def _watcher_module():
    spec = importlib.util.spec_from_file_location("spot_watcher", ROOT / "cluster" / "spot_watcher.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def metadata():
    server = InstanceMetadata()
    yield server
    server.close()


def test_watcher_reads_the_interruption_notice_with_a_session_token(metadata):
    watcher = _watcher_module()
    client = watcher.Metadata(metadata.url)
    assert client.interruption() is None
    metadata.notice = {"action": "terminate", "time": "2026-01-01T12:02:00Z"}
    assert client.interruption() == {"action": "terminate", "time": "2026-01-01T12:02:00Z"}
    metadata.expire_tokens()  # tokens run out: the watcher asks for a new one once
    assert client.interruption()["action"] == "terminate"
    puts = [r for r in metadata.requests if r[0] == "PUT"]
    assert len(puts) == 2 and (("GET", "/latest/meta-data/spot/instance-action", 401) in metadata.requests)
    noon = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.timezone.utc).timestamp()
    assert watcher.seconds_until("2026-01-01T12:02:00Z", now=noon) == 120
    assert watcher.seconds_until("2026-01-01T11:59:00Z", now=noon) == 0


@pytest.mark.integration  # `ray drain-node` spends ~40 s failing to reach the address it is given
def test_watcher_finds_the_metadata_service_where_botocore_looks(metadata):
    """AWS_EC2_METADATA_SERVICE_ENDPOINT (botocore's setting) points the watcher at the
    service, here one instance's path on the stand-in: it reads that instance's notice and
    tries to drain (no cluster at the address: one line, status 2)."""
    metadata.notices["node-a"] = {"action": "terminate", "time": "2026-01-01T12:02:00Z"}
    env = {**os.environ, "AWS_EC2_METADATA_SERVICE_ENDPOINT": f"{metadata.url}/node-a/"}
    done = subprocess.run([sys.executable, str(ROOT / "cluster" / "spot_watcher.py"), "--address", "127.0.0.1:1",
                           "--node-id", "ab" * 28, "--poll", "0.1"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert metadata.polled_by("node-a") and not metadata.polled_by("node-b")
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("spot_watcher: error: ray drain-node failed")


def _start_watcher(cluster_address, metadata_url, node_id=None, log=None):
    command = [sys.executable, str(ROOT / "cluster" / "spot_watcher.py"), "--address", cluster_address,
               "--imds", metadata_url, "--poll", "0.2"] + (["--node-id", node_id] if node_id else [])
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_polls(metadata, seen: int, polls: int, timeout: float = 60.0) -> None:
    """Wait until the metadata server has answered `polls` notice requests after the first
    `seen` requests: a watcher polls only after installing its SIGTERM handler."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(1 for r in metadata.requests[seen:] if r[0] == "GET" and r[1].endswith("instance-action")) >= polls:
            return
        time.sleep(0.05)
    raise AssertionError(f"the watchers made fewer than {polls} notice requests within {timeout:g} s")


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_watcher_drains_its_ray_node_as_a_preemption_on_notice_and_on_sigterm(metadata):
    import ray  # noqa: F401  (a hard dependency: a broken install fails, never skips)
    sys.path.insert(0, str(ROOT / "tests"))
    from ray_multinode import LocalCluster

    with LocalCluster() as cluster:
        noticed, terminated = cluster.add_node(), cluster.add_node()
        # The three nodes share this machine's IP: looking the node up by IP is refused in one line.
        metadata.local_ipv4 = noticed.node_ip_address
        lookup = _start_watcher(cluster.address, metadata.url)
        out, _ = lookup.communicate(timeout=60)
        assert lookup.returncode == 2, out
        assert out.strip().splitlines()[-1].startswith(f"spot_watcher: error: 3 alive Ray nodes at {noticed.node_ip_address}")

        seen = len(metadata.requests)
        first = _start_watcher(cluster.address, metadata.url, noticed.node_id)
        second = _start_watcher(cluster.address, metadata.url, terminated.node_id)
        _wait_for_polls(metadata, seen, 4)  # both are polling (and found no notice)
        assert first.poll() is None and cluster.node_state(noticed.node_id)[0] == "ALIVE"  # no notice yet
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 5))
        metadata.notice = {"action": "terminate", "time": when}
        out, _ = first.communicate(timeout=60)
        assert first.returncode == 0, out
        assert f"drained node {noticed.node_id} as a preemption: spot interruption: terminate at {when}" in out
        assert cluster.wait_dead(noticed.node_id) == "AUTOSCALER_DRAIN_PREEMPTED"

        # The second watcher saw the same notice: it drained its node too. A fresh one on SIGTERM:
        second.communicate(timeout=60)
        assert cluster.wait_dead(terminated.node_id) == "AUTOSCALER_DRAIN_PREEMPTED"
        metadata.notice = None
        spare = cluster.add_node()
        seen = len(metadata.requests)
        third = _start_watcher(cluster.address, metadata.url, spare.node_id)
        _wait_for_polls(metadata, seen, 1)  # its SIGTERM handler is in place
        third.send_signal(signal.SIGTERM)
        out, _ = third.communicate(timeout=60)
        assert third.returncode == 0 and "SIGTERM (instance shutting down)" in out, out
        assert cluster.wait_dead(spare.node_id) == "AUTOSCALER_DRAIN_PREEMPTED"
