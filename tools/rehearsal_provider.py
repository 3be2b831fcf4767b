"""The node provider of the cluster rehearsal (tools/local_cluster.py): Ray's
`fake_multinode` provider, except that every node it starts gets a temp dir of its own
(`provider.nodes_dir`/n<N>), as every machine of a real cluster has its own disk, and that
a node whose raylet has exited (drained at a spot interruption's deadline, killed) is no
longer listed, as EC2 stops listing a terminated instance: Ray's fake provider keeps
listing it, so the autoscaler counted the dead node as capacity and never replaced it.

Ray's fake provider starts each node with the head's temp dir, so all nodes share one
session folder, and with it the unpacked `--working-dir` of jobs: a node that joins unpacks
the package again in place (Ray's working_dir plugin overwrites what it has not unpacked
itself), deleting the folder a running job's driver has as its working directory
(`os.getcwd()` then fails: a sweep's driver died this way when its trials' nodes joined).

The autoscaler loads this class by `provider: {type: external, module:
rehearsal_provider.RehearsalNodeProvider}`, which needs this folder on the PYTHONPATH of
the head's processes (`up` puts it there) and RAY_FAKE_CLUSTER=1.
"""
from __future__ import annotations

import itertools
import os

import ray._private.node
from ray._private import ray_constants
from ray.autoscaler._private.fake_multi_node.node_provider import FakeMultiNodeProvider


class RehearsalNodeProvider(FakeMultiNodeProvider):
    """FakeMultiNodeProvider whose nodes each have their own temp dir."""

    def __init__(self, provider_config: dict, cluster_name: str):
        super().__init__(provider_config, cluster_name)
        self._nodes_dir = provider_config["nodes_dir"]
        self._node_numbers = itertools.count(1)

    def _create_node_with_resources_and_labels(self, node_config, tags, count, resources, labels):
        folder = os.path.join(self._nodes_dir, f"n{next(self._node_numbers)}")  # short: socket paths are limited
        start_node = ray._private.node.Node

        def node_in_own_folder(ray_params, *args, **kwargs):
            ray_params.temp_dir = folder
            return start_node(ray_params, *args, **kwargs)

        with self.lock:  # the provider starts one node at a time under this lock
            ray._private.node.Node = node_in_own_folder
            try:
                super()._create_node_with_resources_and_labels(node_config, tags, count, resources, labels)
            finally:
                ray._private.node.Node = start_node

    def non_terminated_nodes(self, tag_filters):
        with self.lock:
            for node_id, record in list(self._nodes.items()):
                node = record.get("node")  # None for the head, which this provider did not start
                if node is not None and _raylet_exited(node):
                    del self._nodes[node_id]
                    self._terminate_node(record)  # whatever of the node is left goes with it
        return super().non_terminated_nodes(tag_filters)


def _raylet_exited(node: "ray._private.node.Node") -> bool:
    return any(info.process.poll() is not None
               for info in node.all_processes.get(ray_constants.PROCESS_TYPE_RAYLET, []))
