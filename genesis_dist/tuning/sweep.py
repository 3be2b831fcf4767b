"""Ray Tune around training runs: each trial is a Tune function trainable that builds and
fits one TorchTrainer (Ray Train V2 refuses `Tuner(TorchTrainer)`), named after the trial
id so a resumed sweep continues each trial from its own latest checkpoint.

Facts this relies on (Ray 2.60): only rank 0's `ray.train.report` reaches Tune, through
`TuneReportCallback`; every report is one `training_iteration` for the scheduler;
stopping a trial kills its driver and with it the Train controller and workers; the
trial's driver runs in Tune's placement group (`driver_cpus`) and the workers in their
own, so Tune cannot see the workers' resources and concurrency is capped explicitly.
"""
from __future__ import annotations

import math
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..config import worker_range
from ..storage import AWS_CREDENTIAL_VARIABLES, join
from ..training.run import storage_options as run_storage_options
from ..training.worker import describe_failure, ray_storage
from .space import Dimension, apply_params

RUNS_FOLDER = "runs"  # {sweep}/runs/{trial id}: each trial's training run folder


def trial_runs_url(sweep_url: str) -> str:
    return join(sweep_url, RUNS_FOLDER)


def run_trial(params: dict[str, Any], base: dict[str, Any], runs_url: str) -> None:
    """One trial: the base config with this trial's `params`, trained as a normal run in
    `{runs_url}/{trial id}` (so evaluate and decompose accept it)."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from ..training.run_folder import prepare_run
    from ..training.worker import build_trainer

    cfg = apply_params(OmegaConf.create(base), params)
    cfg.run.name = tune.get_context().get_trial_id()
    cfg.run.storage_path = runs_url
    OmegaConf.set_readonly(cfg, True)
    build_trainer(prepare_run(cfg).cfg, callbacks=[TuneReportCallback()]).fit()


def tune_domain(dimension: Dimension):
    """The Ray Tune search domain of a dimension."""
    from ray import tune

    if dimension.kind == "grid":
        return tune.grid_search(list(dimension.values))
    if dimension.kind == "choice":
        return tune.choice(list(dimension.values))
    low, high = dimension.values
    return tune.uniform(low, high) if dimension.kind == "uniform" else tune.loguniform(low, high)


def reports_per_trial(base: DictConfig) -> int:
    """Checkpoints (= reports to Tune) a full trial makes."""
    return math.ceil(base.optim.steps / base.run.checkpoint_every)


def trial_cpus(scaling: DictConfig, driver_cpus: float, workers: int) -> float:
    """CPUs one trial reserves on CPU workers: `workers` × `scaling.cpus_per_worker` plus its driver's."""
    return workers * scaling.cpus_per_worker + driver_cpus


def default_concurrency(base: DictConfig, driver_cpus: float) -> int:
    """Trials that fit the cluster at once: its CPUs (or GPUs) over what one trial takes
    (its driver's `driver_cpus` and its workers)."""
    import ray

    resources = ray.cluster_resources()
    gpus = resources.get("GPU", 0)
    use_gpu = base.scaling.use_gpu if base.scaling.use_gpu is not None else gpus > 0
    workers = worker_range(base.scaling)[1]  # an elastic trial may grow to its maximum
    if use_gpu:
        return max(1, int(gpus // workers))
    return max(1, int(resources.get("CPU", 1) // trial_cpus(base.scaling, driver_cpus, workers)))


def keep_credentials_out_of_trials() -> None:
    """Stop Ray Tune from copying the driver's AWS credentials into every trial's runtime
    environment (Ray 2.60's ray/tune/execution/class_cache.py propagates AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY and the session tokens), where the dashboard and the state API
    show them to anyone who reaches them; the trials' processes get credentials as
    training's workers do (the instance profile, the environment of each node's `ray start`,
    which a local cluster inherits from this process). Found by tests/test_rehearsal.py."""
    from ray.tune.execution import class_cache

    class_cache.ENV_VARS_TO_PROPAGATE = set(class_cache.ENV_VARS_TO_PROPAGATE) - set(AWS_CREDENTIAL_VARIABLES)


def run_sweep(base: DictConfig, sweep: DictConfig, dimensions: list[Dimension], sweep_url: str,
              max_concurrent: int):
    """Run (or resume, when the sweep folder holds Tune's state) every trial; returns
    Tune's ResultGrid."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    keep_credentials_out_of_trials()
    storage_options = run_storage_options(base)
    runs_url = trial_runs_url(sweep_url)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=OmegaConf.to_container(base, resolve=True), runs_url=runs_url),
        {"cpu": sweep.driver_cpus},
    )
    storage_path, storage_fs = ray_storage(base.run.storage_path, storage_options)
    experiment_path = join(storage_path, sweep.name) if storage_fs is None else f"{storage_path}/{sweep.name}"
    if tune.Tuner.can_restore(experiment_path, storage_filesystem=storage_fs):
        tuner = tune.Tuner.restore(experiment_path, trainable, resume_unfinished=True, resume_errored=True,
                                   storage_filesystem=storage_fs)
    else:
        if sweep.scheduler == "asha":
            scheduler = ASHAScheduler(time_attr="training_iteration", max_t=reports_per_trial(base),
                                      grace_period=sweep.grace_period, reduction_factor=sweep.reduction_factor)
        else:
            scheduler = FIFOScheduler()
        tuner = tune.Tuner(
            trainable,
            param_space={d.key: tune_domain(d) for d in dimensions},
            tune_config=tune.TuneConfig(
                metric=sweep.metric, mode=sweep.mode, scheduler=scheduler, num_samples=sweep.num_samples,
                max_concurrent_trials=max_concurrent, trial_dirname_creator=lambda trial: trial.trial_id,
            ),
            run_config=tune.RunConfig(name=sweep.name, storage_path=storage_path, storage_filesystem=storage_fs,
                                      verbose=1),
        )
    return tuner.fit()


def trial_records(results, base: DictConfig, sweep_url: str) -> list[dict[str, Any]]:
    """One record per trial: id, params, status (finished / stopped early / failed),
    steps reached, last reported metrics, run folder."""
    records = []
    for result in results:
        metrics = dict(result.metrics or {})
        trial_id = metrics.get("trial_id") or result.path.rstrip("/").rsplit("/", 1)[-1]
        step = metrics.get("step", 0)
        if result.error is not None:
            status = "failed"
        elif step >= base.optim.steps:
            status = "finished"
        else:
            status = "stopped early"
        records.append({
            "trial": trial_id,
            "params": {k: v for k, v in (result.config or {}).items()},
            "status": status,
            "step": step,
            "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
            "run": join(trial_runs_url(sweep_url), trial_id),
            "error": None if result.error is None else describe_failure(result.error)[1],  # the cause, one line
        })
    return sorted(records, key=lambda r: r["trial"])
