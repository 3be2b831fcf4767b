"""Drain this Ray node as a preemption when EC2 announces a spot interruption or the
machine sends SIGTERM (shutdown), so Ray Train sees a preemption rather than a lost node.

    python cluster/spot_watcher.py --address HEAD_IP:6379 [--node-id HEX] [--pidfile FILE]

cluster/aws.yaml starts it on every worker node after `ray start`. It polls the instance
metadata service (IMDSv2: a session token from PUT /latest/api/token, then GET
/latest/meta-data/spot/instance-action, 404 until an interruption is scheduled, then
{"action": "terminate", "time": "2026-01-01T12:02:00Z"}) every `--poll` seconds (AWS
recommends 5; the notice comes two minutes ahead). On a notice it runs

    ray drain-node --address ADDR --node-id NODE --reason DRAIN_NODE_REASON_PREEMPTION
                   --reason-message "spot interruption: ..." --deadline-remaining-seconds S

with S the seconds left until the announced time, and exits. SIGTERM drains the same way
with `--sigterm-deadline` seconds. Ray Train then lets the run's surviving workers go on
until the deadline and restarts the worker group from the latest checkpoint (a preemption
counts against FailureConfig.max_preemption_failures, unlimited by default, not against
run.max_failures); an elastic run (scaling.num_workers=[MIN, MAX]) continues smaller.

The metadata service is --imds, else AWS_EC2_METADATA_SERVICE_ENDPOINT (botocore's
variable for it), else http://169.254.169.254 (tools/local_cluster.py points each rehearsal
node's watcher at a stand-in). The node is found by `--node-id`, else as the one alive Ray node whose address is this
instance's private IP (IMDS local-ipv4). Standard library only, besides the `ray` CLI and
Ray's GCS client for the node lookup. Exit status: 0 drained (or already running: see
--pidfile), 2 a usage error (one line on stderr).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

IMDS = "http://169.254.169.254"
TOKEN_TTL_S = 21600


class WatcherError(RuntimeError):
    """A condition the watcher reports in one line and exits on."""


class Metadata:
    """The EC2 instance metadata service, IMDSv2 (session token in every request)."""

    def __init__(self, base: str = IMDS, timeout: float = 2.0):
        self.base, self.timeout, self.token = base.rstrip("/"), timeout, None

    def _token(self) -> str:
        request = urllib.request.Request(f"{self.base}/latest/api/token", method="PUT",
                                         headers={"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL_S)})
        with urllib.request.urlopen(request, timeout=self.timeout) as reply:
            return reply.read().decode()

    def get(self, path: str) -> str | None:
        """The text at /latest/meta-data/`path`, or None when it is absent (404)."""
        for attempt in range(2):
            if self.token is None:
                self.token = self._token()
            request = urllib.request.Request(f"{self.base}/latest/meta-data/{path}",
                                             headers={"X-aws-ec2-metadata-token": self.token})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as reply:
                    return reply.read().decode()
            except urllib.error.HTTPError as error:
                if error.code == 404:
                    return None
                if error.code == 401 and attempt == 0:  # the token expired: get a new one
                    self.token = None
                    continue
                raise
        return None

    def interruption(self) -> dict | None:
        """{"action", "time"} once a spot interruption is scheduled, else None."""
        text = self.get("spot/instance-action")
        return json.loads(text) if text else None


def seconds_until(timestamp: str, now: float | None = None) -> int:
    """Whole seconds from `now` (default: the clock) to an IMDS time such as
    2026-01-01T12:02:00Z; 0 when it has passed."""
    when = dt.datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)
    return max(0, int(when.timestamp() - (time.time() if now is None else now)))


def find_node_id(address: str, ip: str) -> str:
    """Hex id of the one alive Ray node at `ip` in the cluster at `address` (GCS)."""
    import ray._raylet
    from ray.core.generated.gcs_pb2 import GcsNodeInfo

    client = ray._raylet.GcsClient(address=address)
    nodes = [node_id.hex() for node_id, info in client.get_all_node_info(timeout=30).items()
             if info.state == GcsNodeInfo.ALIVE and info.node_manager_address == ip]
    if len(nodes) != 1:
        raise WatcherError(f"{len(nodes)} alive Ray nodes at {ip} in the cluster at {address}; pass --node-id")
    return nodes[0]


def drain(address: str, node_id: str, message: str, deadline_s: int) -> None:
    """`ray drain-node` this node as a preemption, `deadline_s` seconds before it goes."""
    ray_cli = shutil.which("ray", path=os.path.dirname(sys.executable)) or shutil.which("ray") or "ray"
    command = [ray_cli, "drain-node", "--address", address, "--node-id", node_id,
               "--reason", "DRAIN_NODE_REASON_PREEMPTION", "--reason-message", message,
               "--deadline-remaining-seconds", str(deadline_s)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise WatcherError(f"ray drain-node failed: {last}")
    print(f"[spot-watcher] drained node {node_id} as a preemption: {message} "
          f"(deadline in {deadline_s} s)", flush=True)


def already_running(pidfile: str | None) -> bool:
    """True when `pidfile` names a live process (another watcher); else claim it."""
    if not pidfile:
        return False
    try:
        with open(pidfile) as f:
            os.kill(int(f.read().strip()), 0)
        return True
    except (OSError, ValueError):
        with open(pidfile, "w") as f:
            f.write(str(os.getpid()))
        return False


def watch(metadata: Metadata, address: str, node_id: str, poll_s: float, sigterm_deadline_s: int) -> str:
    """Poll until an interruption notice or SIGTERM, drain, and say which it was."""
    terminated = []
    signal.signal(signal.SIGTERM, lambda signum, frame: terminated.append(signum))
    while not terminated:
        try:
            notice = metadata.interruption()
        except (urllib.error.URLError, OSError, ValueError) as error:
            print(f"[spot-watcher] metadata unavailable ({error}); retrying", file=sys.stderr, flush=True)
            notice = None
        if notice is not None:
            deadline = seconds_until(notice["time"])
            drain(address, node_id, f"spot interruption: {notice.get('action', 'terminate')} at {notice['time']}",
                  deadline)
            return "notice"
        deadline_at = time.monotonic() + poll_s
        while not terminated and time.monotonic() < deadline_at:
            time.sleep(min(0.1, poll_s))
    drain(address, node_id, "SIGTERM (instance shutting down)", sigterm_deadline_s)
    return "sigterm"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", required=True, help="the cluster's GCS address, HEAD_IP:6379")
    parser.add_argument("--node-id", help="this node's hex id (default: the alive node at this instance's IP)")
    parser.add_argument("--imds", default=os.environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT") or IMDS,
                        help="the instance metadata service (default: AWS_EC2_METADATA_SERVICE_ENDPOINT, "
                             "as in botocore, else the EC2 link-local address)")
    parser.add_argument("--poll", type=float, default=5.0, help="seconds between polls")
    parser.add_argument("--sigterm-deadline", type=int, default=30, help="drain deadline on SIGTERM, seconds")
    parser.add_argument("--pidfile", help="exit at once when the process it names still runs")
    args = parser.parse_args(argv)
    if already_running(args.pidfile):
        print(f"[spot-watcher] already running ({args.pidfile})", flush=True)
        return 0
    metadata = Metadata(args.imds)
    try:
        node_id = args.node_id or find_node_id(args.address, metadata.get("local-ipv4") or "")
        print(f"[spot-watcher] watching node {node_id} (IMDS {args.imds}, every {args.poll:g} s)", flush=True)
        watch(metadata, args.address, node_id, args.poll, args.sigterm_deadline)
    except (WatcherError, urllib.error.URLError) as error:
        print(f"spot_watcher: error: {error}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
