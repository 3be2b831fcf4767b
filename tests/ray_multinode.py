"""A multi-node Ray cluster on this machine for a test module: a head node without CPUs
(it runs the dashboard, GCS and Ray Train's controller) and worker nodes with their own
CPU resources, added, drained and removed like cloud nodes.

It keeps to itself beside other Ray instances on the machine: `RAY_TMPDIR` points to a
private folder (sessions, sockets and the "current cluster" file that a bare `ray.init()`
would otherwise pick up), and `RAY_API_SERVER_ADDRESS` announces its own dashboard to every
process of the cluster (Ray Train's placement-group cleaner asks the state API, which
without it fails when several Ray instances run here; see genesis_dist/ray_cluster.py).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

from genesis_dist.ray_cluster import free_port


class LocalCluster:
    """`with LocalCluster(env) as cluster:` start the head; `add_node()`, `drain(node)`,
    `remove(node)`. `env` is set for the test process and inherited by every node."""

    def __init__(self, env: dict[str, str] | None = None):
        self.extra_env = dict(env or {})
        self.saved: dict[str, str | None] = {}
        self.cluster = None

    def __enter__(self) -> "LocalCluster":
        from ray.cluster_utils import Cluster

        self.tmp = tempfile.mkdtemp(prefix="gdr", dir="/tmp")  # short: Unix socket paths are limited
        self.dashboard_port = free_port()
        env = {"RAY_TMPDIR": self.tmp, "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{self.dashboard_port}",
               "RAY_ADDRESS": "", **self.extra_env}
        for key, value in env.items():
            self.saved[key] = os.environ.get(key)
            os.environ[key] = value
        self.cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "include_dashboard": True, "dashboard_host": "127.0.0.1",
            "dashboard_port": self.dashboard_port,
            # A killed node is declared dead after ~1.5 s rather than Ray's default ~15 s.
            "_system_config": {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
                               "health_check_failure_threshold": 3},
        })
        return self

    @property
    def address(self) -> str:
        return self.cluster.address

    def add_node(self, cpus: int = 1):
        return self.cluster.add_node(num_cpus=cpus)

    def drain(self, node, deadline_s: int = 3, message: str = "spot") -> None:
        """`ray drain-node` the node as a preemption (what a spot interruption does)."""
        ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
        subprocess.run([ray_cli, "drain-node", "--address", self.address, "--node-id", node.node_id,
                        "--reason", "DRAIN_NODE_REASON_PREEMPTION", "--reason-message", message,
                        "--deadline-remaining-seconds", str(deadline_s)], check=True, capture_output=True, timeout=60)

    def remove(self, node) -> str:
        """Kill the node's processes without warning (a lost machine); returns its death
        reason once the GCS has noticed."""
        self.cluster.remove_node(node, allow_graceful=False)
        return self.wait_dead(node.node_id)

    def node_state(self, node_id: str) -> tuple[str, str]:
        """(state, death reason) of a node as the GCS records it, e.g. ("DEAD", "AUTOSCALER_DRAIN_PREEMPTED")."""
        import ray._raylet
        from ray.core.generated.common_pb2 import NodeDeathInfo
        from ray.core.generated.gcs_pb2 import GcsNodeInfo

        infos = ray._raylet.GcsClient(address=self.address).get_all_node_info(timeout=30)
        for key, info in infos.items():
            if key.hex() == node_id:
                return (GcsNodeInfo.GcsNodeState.Name(info.state),
                        NodeDeathInfo.Reason.Name(info.death_info.reason))
        return ("UNKNOWN", "")

    def wait_dead(self, node_id: str, timeout: float = 60) -> str:
        """Wait for the node to be dead; returns its death reason."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state, reason = self.node_state(node_id)
            if state == "DEAD":
                return reason
            time.sleep(0.5)
        raise TimeoutError(f"node {node_id} still {state} after {timeout} s")

    def __exit__(self, *exc) -> None:
        try:
            if self.cluster is not None:
                self.cluster.shutdown()
        finally:
            for key, value in self.saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            shutil.rmtree(self.tmp, ignore_errors=True)
