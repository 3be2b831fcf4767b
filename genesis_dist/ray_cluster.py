"""Joining or starting the Ray cluster a command runs on (command layer).

With `RAY_ADDRESS` set (as `ray job submit` does) the command joins that cluster.
Otherwise it starts a local one whose dashboard port it chooses itself and announces
to every process of the cluster through `RAY_API_SERVER_ADDRESS`: Ray Train's
placement-group cleaner queries the state API without an address and, when another
Ray instance runs on the same machine, fails ("Found multiple active Ray instances")
and leaks the placement group of a finished or stopped run, so the next run of a
sweep waits for resources forever.

Quiet unless `verbose`: Ray's INFO lines and its processes' output stay out of the
command's output (the command shows its own progress); Ray Train does not route the
workers' `print` through its logger (which printed every line twice); Ray's notice that
it turned token authentication on by default is dropped (that one message); and a local
cluster runs without Ray Train's preemption
watcher (a single machine has no spot notices; its actor logged an error-level line at
every start, Ray issue 53727). A cluster joined through `RAY_ADDRESS` keeps its watcher.
"""
from __future__ import annotations

import logging
import os
import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Ray Train settings for this job's processes: print once (Train's print patch sent every
# line through its logger and to stdout).
TRAIN_ENVIRONMENT = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}
# And on a local cluster: no preemption watcher (see the module docstring).
LOCAL_TRAIN_ENVIRONMENT = {**TRAIN_ENVIRONMENT, "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


# Ray 2.60 announces at every local start that it turned token authentication on by default
# (README, "Authentication in Ray 2.60"); that one notice is dropped unless verbose.
TOKEN_LOGGER = "ray._private.authentication.authentication_token_setup"
TOKEN_NOTICE = "Token authentication is enabled for this Ray cluster."


def _drop_token_default_notice(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(TOKEN_NOTICE)


def connect(env_vars: dict[str, str] | None = None, verbose: bool = True, **init_kwargs) -> str | None:
    """`ray.init` once: join `RAY_ADDRESS`, or start a local cluster (see module doc).
    `env_vars` go to every task and actor of this job (its runtime environment); `verbose`
    False keeps Ray's own lines and its processes' output out of this command's output.
    Returns the dashboard's URL when this call connected and the cluster has one."""
    import ray

    if ray.is_initialized():
        return None
    joining = bool(os.environ.get("RAY_ADDRESS"))
    runtime_env = {"env_vars": {**(TRAIN_ENVIRONMENT if joining else LOCAL_TRAIN_ENVIRONMENT), **(env_vars or {})}}
    if not verbose:
        init_kwargs = {"log_to_driver": False, "logging_level": logging.WARNING, **init_kwargs}
        logging.getLogger(TOKEN_LOGGER).addFilter(_drop_token_default_notice)
    if joining:
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
