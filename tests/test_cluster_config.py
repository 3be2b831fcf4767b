"""cluster/aws.yaml validates against Ray's own cluster-config schema, offline."""
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

import ray.autoscaler

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
