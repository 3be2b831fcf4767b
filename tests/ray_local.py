"""A local Ray cluster for a test module, started the way the commands start one
(`genesis_dist.ray_cluster.connect`: its own dashboard port, announced to every process
of the cluster), so that other Ray instances on the machine do not confuse Ray Train."""
from __future__ import annotations

import os

import ray

from genesis_dist.ray_cluster import connect


def start(num_cpus: int, env_vars: dict[str, str] | None = None) -> str:
    """Start the cluster (RAY_ADDRESS unset for the call); returns its GCS address."""
    saved = os.environ.pop("RAY_ADDRESS", None)
    try:
        connect(env_vars, num_cpus=num_cpus, log_to_driver=False)
    finally:
        if saved is not None:
            os.environ["RAY_ADDRESS"] = saved
    return ray.get_runtime_context().gcs_address


def stop() -> None:
    ray.shutdown()
    os.environ.pop("RAY_API_SERVER_ADDRESS", None)
