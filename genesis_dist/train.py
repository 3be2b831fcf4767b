"""`python -m genesis_dist.train [--print-config] [--config FILE] [group=name ...] [key=value ...]`:
distributed training with Ray Train.

    python -m genesis_dist.train                                  # the embedded demo: local Ray, CPU
    python -m genesis_dist.train model=genesis data=shapestacks   # GENESIS as published, ShapeStacks' settings
    python -m genesis_dist.train data=objects_room data.url=s3://bucket/objects_room scaling.num_workers=8
    python -m genesis_dist.train --config runs/NAME/config.yaml optim.steps=1000000   # train a run longer
    python -m genesis_dist.train model=genesis --print-config     # print the resolved config and exit
    python -m genesis_dist.train --verbose                        # the resolved config and Ray's own output too

Groups: model=genesis_v2|genesis|genesis_s|..., data=multi_dsprites|objects_room|
shapestacks|gqn|sketchy|apc|..., experiment=demo|... (files under configs/). No group
named: the demo. The run is named {model}-{data}[-{experiment}] unless run.name is set.

Joins the Ray cluster in RAY_ADDRESS (set by `ray job submit`) or starts a local
one. Re-running with the same `run.name` and `run.storage_path` resumes from the
latest checkpoint; a run folder whose stored config.yaml differs in anything but
optim.steps and the keys listed in config.MAY_CHANGE_ON_RESUME is refused.

Data: `data.generate_if_missing` (the demo's data group sets it) generates a small
Multi-dSprites set only at the data.url the composed config names; a data.url typed on the
command line that holds no dataset is an error unless the same command line says
data.generate_if_missing=true (a typo never silently becomes a new dataset).

Credentials come from the standard AWS chain (instance profile, AWS_PROFILE, or the
environment of this command and of each node's `ray start`); only the endpoint, region,
profile name and retry settings are passed to Ray. Secrets in data.storage_options are
shown as <redacted> and never stored in the run folder.

Exit status (one line on stderr for each failure): 0 finished, 1 the run failed (after
run.max_failures restarts), 2 a usage or config error, 3 no credentials, 4 access denied,
5 a missing bucket or object, 6 the object store unreachable (or failing after retries),
7 disk full.
`--debug` (or GENESIS_DIST_DEBUG=1) prints a failure's traceback before its line.
"""
from __future__ import annotations

import sys

from omegaconf import DictConfig, OmegaConf

from .command import run_command
from .config import ConfigError, load_config
from .console import Follower, ProgressView, closing_lines, header
from .ray_cluster import connect
from .storage import aws_environment, join, redacted, warn_secrets_on_command_line
from .training.layout import FIGURES_FOLDER, TENSORBOARD_FOLDER, figure_name
from .training.progress import heldout_line
from .training.run_folder import only_generate_where_configured, prepare_run, run_url, with_absolute_paths
from .training.worker import build_trainer, describe_failure



def train_with_progress(prepared, dashboard: str | None, verbose: bool):
    """Fit the run with its header, progress bar (or lines) and held-out lines on this
    terminal (module console.py); returns Ray's Result."""
    import torch

    from .config import worker_range
    from .models import build_model, count_parameters
    from .training.checkpoint import latest_complete_checkpoint
    from .training.run import resolve_precision, storage_options
    from .training.worker import start_progress_board, uses_gpu

    cfg, data = prepared.cfg, prepared.data
    gpu = uses_gpu(cfg)
    low, high = worker_range(cfg.scaling)
    workers = f"{low} worker{'s' * (low > 1)}" if low == high else f"{low}–{high} workers (elastic)"
    latest = latest_complete_checkpoint(run_url(cfg), storage_options(cfg)) if prepared.resuming else None
    splits = data.manifest.get("splits", {})
    lines = header(cfg, parameters=count_parameters(build_model(cfg.model)),
                   train_images=splits.get(cfg.data.train_split, {}).get("count"),
                   test_images=splits.get(cfg.data.eval_split, {}).get("count"), has_mask=data.has_mask,
                   workers=workers, precision=resolve_precision(cfg.optim.precision, torch.device("cuda" if gpu else "cpu")),
                   device="GPUs" if gpu else "CPUs", resuming=latest is not None, folder=run_url(cfg),
                   dashboard=dashboard)
    if latest is not None:
        lines[3] = lines[3].replace("(resuming)", f"(resuming from step {latest[0]:,})")
    print("\n".join(lines), flush=True)
    if verbose:  # Ray's own output and the workers' lines as they print them
        return build_trainer(cfg).fit()
    import ray

    board = start_progress_board()
    follower = Follower(lambda: ray.get(board.take.remote()),
                        ProgressView(cfg.optim.steps, start=latest[0] if latest else 0))
    try:
        return build_trainer(cfg, progress_board=board).fit()
    finally:
        follower.stop()


def failure_line(err: BaseException, cfg: DictConfig | None) -> tuple[int, str]:
    """(exit status, the line after the command's name) for a failed run (module docstring)."""
    status, line = describe_failure(err)
    training_failed = type(err).__name__ in ("TrainingFailedError", "WorkerGroupError", "ControllerError")
    if training_failed and cfg is not None:
        attempts = cfg.run.max_failures + 1
        return status, (f"the run failed after {attempts} attempt{'s' * (attempts > 1)}: {line}; its checkpoints "
                        f"are in {run_url(cfg)} (the same command resumes from the latest)")
    return status, f"error: {line}"


def _parse_args(argv: list[str]) -> tuple[list[str], str | None, bool, bool]:
    """(overrides, --config file, --print-config, --verbose)."""
    overrides, config_file, print_only, verbose = [], None, False, False
    items = iter(argv)
    for item in items:
        if item == "--print-config":
            print_only = True
        elif item == "--verbose":
            verbose = True
        elif item == "--config":
            config_file = next(items, None)
            if config_file is None:
                raise ConfigError("--config needs a file: --config runs/NAME/config.yaml")
        elif item.startswith("--config="):
            config_file = item.split("=", 1)[1]
        elif item.startswith("-"):
            raise ConfigError(f"unknown option {item}; options: --config FILE, --print-config, --verbose, --debug, "
                              "--help")
        else:
            overrides.append(item)
    return overrides, config_file, print_only, verbose


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    composed: list[DictConfig] = []  # the config, once composed: a failed run's line names its folder

    def train(args: list[str]) -> int:
        overrides, config_file, print_only, verbose = _parse_args(args)
        warn_secrets_on_command_line("genesis_dist.train", overrides)
        cfg = with_absolute_paths(load_config(overrides, base_file=config_file))
        composed.append(cfg)
        if print_only or verbose:
            print(OmegaConf.to_yaml(redacted(OmegaConf.to_container(cfg))), flush=True)
        if print_only:
            return 0
        prepared = prepare_run(only_generate_where_configured(cfg, overrides))
        dashboard = connect(aws_environment(), verbose=verbose)
        result = train_with_progress(prepared, dashboard, verbose)
        if result.error is not None:  # Ray Train V2 raises instead; kept for a Result that carries one
            raise result.error
        print("\n".join(result_lines(cfg, result)), flush=True)
        return 0

    return run_command("genesis_dist.train", train, list(argv),
                       describe=lambda err: failure_line(err, composed[-1] if composed else None))


def result_lines(cfg: DictConfig, result) -> list[str]:
    """The last lines of a finished run: where its folder, TensorBoard events, latest
    checkpoint and decomposition figure are, and its held-out numbers (the last line)."""
    folder = run_url(cfg)
    final = result.metrics or {}
    step = final.get("step")
    figure = join(folder, FIGURES_FOLDER, figure_name("decomposition", step)) if isinstance(step, int) else \
        join(folder, FIGURES_FOLDER)
    return closing_lines(folder, join(folder, TENSORBOARD_FOLDER), result.checkpoint.path if result.checkpoint else None,
                         figure, heldout_line(final), final.get("eval_images", cfg.run.eval_images))


if __name__ == "__main__":
    sys.exit(main())
