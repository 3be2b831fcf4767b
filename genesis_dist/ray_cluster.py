"""Joining or starting the Ray cluster a command runs on (command layer).

With `RAY_ADDRESS` set (as `ray job submit` does) the command joins that cluster.
Otherwise it starts a local one whose dashboard port it chooses itself and announces
to every process of the cluster through `RAY_API_SERVER_ADDRESS`: Ray Train's
placement-group cleaner queries the state API without an address and, when another
Ray instance runs on the same machine, fails ("Found multiple active Ray instances")
and leaks the placement group of a finished or stopped run, so the next run of a
sweep waits for resources forever.
"""
from __future__ import annotations

import os
import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def connect(env_vars: dict[str, str] | None = None, **init_kwargs) -> str | None:
    """`ray.init` once: join `RAY_ADDRESS`, or start a local cluster (see module doc).
    `env_vars` go to every task and actor of this job (its runtime environment).
    Returns the dashboard's URL when this call connected and the cluster has one."""
    import ray

    if ray.is_initialized():
        return None
    runtime_env = {"env_vars": dict(env_vars or {})}
    if os.environ.get("RAY_ADDRESS"):
        context = ray.init(runtime_env=runtime_env, **init_kwargs)
    else:
        port = free_port()
        # Set before the cluster's processes start: they inherit this process's environment.
        os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
        # address="local": a new cluster even when a `ray start` cluster runs on this machine
        # (a bare ray.init() would silently join the last one started).
        context = ray.init(address="local", runtime_env=runtime_env, include_dashboard=True,
                           dashboard_host="127.0.0.1", dashboard_port=port, **init_kwargs)
    url = getattr(context, "dashboard_url", None)
    return f"http://{url}" if url and "://" not in url else url
