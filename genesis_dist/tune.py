"""`python -m genesis_dist.tune [space=NAME] [sweep.KEY=VALUE ...] [training overrides ...]`:
hyperparameter sweeps with Ray Tune.

    python -m genesis_dist.tune                                   # the demo's colour hint × IC-SBP kernels
    python -m genesis_dist.tune data=shapestacks data.url=s3://bucket/shapestacks \\
        run.storage_path=s3://bucket/runs scaling.num_workers=4 sweep.max_concurrent_trials=2
    python -m genesis_dist.tune sweep.metric=eval_elbo sweep.scheduler=fifo optim.steps=1000

`space=NAME` picks `configs/tune/NAME.yaml` (default: geco_kernels, the papers' GECO goals ×
IC-SBP kernels, when a model, dataset or experiment is named; demo_aids on the demo): its `sweep:` section
(metric, mode, scheduler, grace_period, reduction_factor, num_samples,
max_concurrent_trials, driver_cpus, name) and its `space:` (the swept keys). The other
words compose the trials' training config exactly as `python -m genesis_dist.train` does
(no group named: the demo). Each trial is a full distributed training run in
`{run.storage_path}/{sweep name}/runs/{trial id}`; the sweep folder also holds Tune's
state and TensorBoard logs (`tensorboard --logdir {sweep folder}`), `sweep.md` (the table
of trials) and `best.yaml` (`python -m genesis_dist.train --config best.yaml` continues
the best trial's run). Re-running the same command resumes an interrupted sweep: only
unfinished trials run, each from its own latest checkpoint.

Exit status (one line on stderr for each failure): 0 every trial finished or was stopped
early by the scheduler, 1 some trial failed, 2 a usage or config error (reported before any
trial starts), 3 no credentials, 4 access denied, 5 a missing bucket or object, 6 the object
store unreachable (or failing after retries), 7 disk full.
`--debug` (or GENESIS_DIST_DEBUG=1) prints a failure's traceback before its line.
"""
from __future__ import annotations

import sys

from omegaconf import DictConfig, OmegaConf

from .config import GROUPS, MAY_CHANGE_ON_RESUME, ConfigError, load_config
from .storage import aws_environment, filesystem, join, warn_secrets_on_command_line, without_secrets
from .training.run import storage_options as run_storage_options
from .training.run_folder import stored_conflicts
from .command import run_command

PAPER_SPACE = "geco_kernels"  # the default when a model, dataset or experiment is named
DEMO_SPACE = "demo_aids"  # the default on the demo (no group named)
SWEEP_FILE = "sweep.yaml"


def _parse(argv: list[str]) -> tuple[str, list[str], list[str]]:
    """(space name, sweep overrides, training overrides)."""
    space, sweep_overrides, train_overrides = None, [], []
    for item in argv:
        if item.startswith("space="):
            space = item.split("=", 1)[1]
        elif item.startswith("sweep."):
            sweep_overrides.append(item.removeprefix("sweep."))
        elif item.startswith("-"):
            raise ConfigError(f"unknown option {item}; usage: python -m genesis_dist.tune [space=NAME] "
                              "[sweep.KEY=VALUE ...] [training overrides ...]")
        else:
            train_overrides.append(item)
    if space is None:
        named = any(item.split("=", 1)[0] in GROUPS for item in train_overrides)
        space = PAPER_SPACE if named else DEMO_SPACE
    return space, sweep_overrides, train_overrides


def plan(argv: list[str]):
    """Everything checked before Ray starts: (base training config, sweep config,
    dimensions, sweep folder URL). Generates the demo data if the config asks."""
    from .training.run_folder import ensure_dataset, only_generate_where_configured, with_absolute_paths
    from .tuning.space import check_metric, load_space_file, merge_sweep, resolve_space

    space_name, sweep_overrides, train_overrides = _parse(argv)
    warn_secrets_on_command_line("genesis_dist.tune", train_overrides)
    base = only_generate_where_configured(with_absolute_paths(load_config(train_overrides)), train_overrides)
    sweep, raw_space = load_space_file(space_name)
    sweep = merge_sweep(sweep, sweep_overrides, "override")
    dimensions = resolve_space(raw_space, base)
    if not sweep.name:
        sweep.name = f"tune-{space_name}-{base.run.name}"
    check_metric(sweep.metric, base, ensure_dataset(base).has_mask)
    return base, sweep, dimensions, join(base.run.storage_path, sweep.name)


def check_sweep_identity(sweep_url: str, record: dict, storage_options: dict | None) -> None:
    """A sweep folder keeps what it sweeps (`sweep.yaml`); re-running it with another
    space or base config is refused with one line naming what differs."""
    url = join(sweep_url, SWEEP_FILE)
    ignore = ("sweep.max_concurrent_trials",) + tuple(f"base.{k}" for k in MAY_CHANGE_ON_RESUME)
    _, conflicts = stored_conflicts(url, record, ignore, storage_options)
    if conflicts:
        raise ConfigError(f"sweep folder {sweep_url} holds another sweep (differs in {', '.join(conflicts[:4])}); "
                          "set sweep.name to start a new one")
    fs, path = filesystem(url, storage_options)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    fs.pipe_file(path, OmegaConf.to_yaml(OmegaConf.create(record)).encode())


def _init_ray(sweep: DictConfig) -> str | None:
    import math
    import os

    from .ray_cluster import connect

    if os.environ.get("RAY_ADDRESS"):
        return connect(aws_environment())
    # A local cluster gets one logical CPU more than the machine has, for the trials'
    # drivers (`sweep.driver_cpus` each; they wait on their TorchTrainer): without it a
    # trial whose workers take every core could never start.
    extra = math.ceil((sweep.max_concurrent_trials or 1) * sweep.driver_cpus)
    return connect(aws_environment(), num_cpus=(os.cpu_count() or 1) + extra)


def check_fits(base: DictConfig, sweep: DictConfig) -> None:
    """One trial (its driver and its workers) must fit the cluster as it is now; on a
    local cluster that is final (ConfigError), on a remote one the autoscaler may add
    nodes (a warning)."""
    import os

    import ray

    from .config import worker_range
    from .tuning.sweep import trial_cpus

    resources = ray.cluster_resources()
    workers = worker_range(base.scaling)[0]
    needs = trial_cpus(base.scaling, sweep.driver_cpus, workers)
    if needs <= resources.get("CPU", 0):
        return
    message = (f"one trial needs {needs:g} CPUs ({workers} worker(s) × scaling.cpus_per_worker="
               f"{base.scaling.cpus_per_worker:g} + sweep.driver_cpus={sweep.driver_cpus:g}) but the cluster has "
               f"{resources.get('CPU', 0):g}; lower scaling.cpus_per_worker or scaling.num_workers")
    if os.environ.get("RAY_ADDRESS"):
        print(f"genesis_dist.tune: warning: {message} (waiting for the autoscaler)", file=sys.stderr)
    else:
        raise ConfigError(message)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0

    def tune(args: list[str]) -> int:
        base, sweep, dimensions, sweep_url = plan(args)
        storage_options = run_storage_options(base)
        record = {"base": without_secrets(OmegaConf.to_container(base, resolve=True)),
                  "sweep": OmegaConf.to_container(sweep, resolve=True),
                  "space": {d.key: {d.kind: list(d.values)} for d in dimensions}}
        check_sweep_identity(sweep_url, record, storage_options)
        return _run(base, sweep, dimensions, sweep_url, storage_options)

    return run_command("genesis_dist.tune", tune, argv)


def _run(base: DictConfig, sweep: DictConfig, dimensions, sweep_url: str, storage_options: dict) -> int:
    from .tuning.report import best_trial, heldout_curve, repeated_curves, repeats_note, trials_table, write_summary
    from .tuning.space import grid_size
    from .tuning.sweep import default_concurrency, run_sweep, trial_records

    dashboard = _init_ray(sweep)
    try:
        check_fits(base, sweep)
    except ConfigError as err:
        print(f"genesis_dist.tune: error: {err}", file=sys.stderr)
        return 2
    concurrent = sweep.max_concurrent_trials or default_concurrency(base, sweep.driver_cpus)
    swept = ", ".join(f"{d.key} {d.kind} {list(d.values)}" for d in dimensions)
    print(f"[genesis-dist] sweep {sweep.name}: {grid_size(dimensions, sweep.num_samples)} trials ({swept}), "
          f"{concurrent} at a time, {sweep.scheduler} on {sweep.metric} ({sweep.mode}); folder {sweep_url}", flush=True)
    print(f"[genesis-dist] watch: tensorboard --logdir {sweep_url}"
          + (f"  ·  Ray dashboard {dashboard}" if dashboard else ""), flush=True)
    results = run_sweep(base, sweep, dimensions, sweep_url, concurrent)
    records = trial_records(results, base, sweep_url)
    repeats = repeated_curves({r["trial"]: heldout_curve(r["run"], storage_options) for r in records})
    table = trials_table(records, sweep.metric, repeats)
    note = repeats_note(records, repeats)
    best = best_trial(records, sweep.metric, sweep.mode)
    best_url = write_summary(sweep_url, table, best, sweep.metric, storage_options, note)
    print(table, flush=True)
    if note:
        print(f"[genesis-dist] {note}", flush=True)
    if best is not None:
        print(f"[genesis-dist] best by {sweep.metric}: {best['trial']} → {best_url}; train it longer with "
              f"python -m genesis_dist.train --config {best_url} optim.steps=N")
    failed = [r for r in records if r["status"] == "failed"]
    for r in failed:
        print(f"genesis_dist.tune: trial {r['trial']} failed: {r['error']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
