"""`python -m genesis_dist.evaluate`: evaluate a run's checkpoints with a pool of Ray actors.

    python -m genesis_dist.evaluate --run RUN_URL [--watch] [key=value ...]
    python -m genesis_dist.evaluate compare RUN_URL [RUN_URL ...]

RUN_URL is a run folder, `{run.storage_path}/{run.name}` (local path or s3://). Every
checkpoint not yet evaluated is scored (ELBO, segmentation, FID; see `eval_checkpoint`)
by one of `actors` Ray actors, and the results go to `RUN_URL/eval/` (see `eval_report`).
With `--watch` the pool keeps polling for new checkpoints every `poll_seconds` until the
run writes `finished.json` and everything is evaluated. Keys (configs/eval.yaml):
actors, cpus_per_actor, gpus_per_actor, batch_size, fid_samples, segmentation_images,
elbo_images, stop_pixels, stats_cache, poll_seconds, seed, start_timeout_s,
checkpoint_timeout_s, storage_options.

`compare` prints a Markdown table of each run's best and latest evaluated checkpoint
beside the papers' numbers for its dataset.

One evaluator per run: a lease in `RUN/eval/lease/` (see evaluation/lease.py) keeps a
second evaluator of the same run from starting (exit status 8) while the first runs; an
evaluator killed on this machine frees it at once, elsewhere after 5 minutes. Checkpoints
that training deleted (run.keep_checkpoints) before they were evaluated are warned about.

Joins the Ray cluster in RAY_ADDRESS (set by `ray job submit`) or starts a local one.
Exit status (one line on stderr for each failure): 0 done, 1 some checkpoint failed (the
rest were evaluated), 2 usage error, 3 no credentials, 4 access denied, 5 a missing bucket
or object, 6 the object store unreachable (or failing after retries), 7 disk full,
8 another evaluator is evaluating this run.
`--debug` (or GENESIS_DIST_DEBUG=1) prints a failure's traceback before its line.
"""
from __future__ import annotations

import sys
import time
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .config import load_eval_config
from .evaluation.discovery import CheckpointInfo, CheckpointScanner, missed_steps, run_exists, run_finished
from .evaluation.lease import EvalLease, LeaseBusy, LeaseLost
from .evaluation.report import EvalReport
from .command import run_command
from .training.layout import checkpoint_step
from .storage import filesystem, warn_secrets_on_command_line

LEASE_BUSY_STATUS = 8

SUMMARY_KEYS = (("elbo", ".1f"), ("ari_fg", ".3f"), ("one_slot_ari_fg", ".3f"), ("msc_fg", ".3f"),
                ("one_slot_msc_fg", ".3f"), ("att_ari_fg", ".3f"), ("flex_mean_slots", ".2f"), ("fid", ".1f"))


class EvaluationError(RuntimeError):
    """A user-fixable problem (bad run URL, no checkpoints, no resources); one line."""


def progress_line(record: dict[str, Any], done: int, left: int) -> str:
    """One driver line for a finished checkpoint."""
    scores = " ".join(f"{k} {record[k]:{spec}}" for k, spec in SUMMARY_KEYS if isinstance(record.get(k), (int, float)))
    name = record["checkpoint"].rstrip("/").rsplit("/", 1)[-1]
    return (f"[eval] step {record['step']} ({name}): {scores} — {record['eval_seconds']:.1f} s on {record['actor']} "
            f"[{done} evaluated, {left} left]")


def _merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = _merged(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def _data_spec(meta: dict[str, Any], storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The test data of a checkpoint's run: its config's data (whose stored storage_options
    hold no secrets) with the evaluation's `storage_options` merged over them."""
    data = meta["config"]["data"]
    options = _merged(dict(data.get("storage_options") or {}), dict(storage_options or {}))
    return {"url": data["url"], "split": data["eval_split"], "storage_options": options}


def _check(cfg: DictConfig) -> None:
    if not cfg.run:
        raise EvaluationError("no run given: use --run RUN_URL (a run folder, {run.storage_path}/{run.name})")
    if cfg.fid_samples == 1:
        raise EvaluationError("fid_samples=1: FID needs at least 2 samples (0 turns it off)")
    for key in ("batch_size", "segmentation_images", "poll_seconds", "cpus_per_actor"):
        if cfg[key] < (0 if key == "segmentation_images" else 1e-9):
            raise EvaluationError(f"{key}={cfg[key]}: must be > 0")


class Evaluation:
    """The driver loop: discover checkpoints, dispatch them to the pool, record results."""

    def __init__(self, cfg: DictConfig, log=print):
        self.cfg = cfg
        self.log = log
        self.run_url = cfg.run.rstrip("/")
        self.storage_options = dict(cfg.storage_options) or None
        self.scanner = CheckpointScanner(self.run_url, self.storage_options)
        self.report = EvalReport(self.run_url, self.storage_options)
        self.pool = None
        self.queue: list[CheckpointInfo] = []
        self.failed: set[str] = set()  # checkpoint URLs@step not retried in this invocation
        self.evaluated_now = 0
        self.lease = EvalLease(self.run_url, self.storage_options)
        self.warned_missing: set[int] = set()

    def _busy_steps(self) -> set[int]:
        running = {c.step for _, c, _ in self.pool.running.values()} if self.pool else set()
        return running | {c.step for c in self.queue}

    def discover(self) -> list[CheckpointInfo]:
        """Queue every ready checkpoint whose step is neither evaluated, queued, running nor
        failed; returns all checkpoints found."""
        found = self.scanner.scan()
        done, busy = self.report.evaluated_steps(), self._busy_steps()
        self._warn_deleted(found, done, busy)
        for c in found:
            if c.ready and c.step not in done and c.step not in busy and f"{c.url}@{c.step}" not in self.failed:
                self.queue.append(c)
                busy.add(c.step)
        return found

    def _warn_deleted(self, found: list[CheckpointInfo], done: set[int], busy: set[int]) -> None:
        """Warn (once per step) about checkpoints training deleted before they were evaluated."""
        lost = {step for name, step in self.scanner.vanished if step is not None and step not in done | busy}
        present = {c.step for c in found if c.step is not None}
        present |= {checkpoint_step(c.name) for c in found if checkpoint_step(c.name) is not None}
        lost |= set(missed_steps(self.run_url, present, done, self.storage_options))
        lost -= self.warned_missing
        if lost:
            self.warned_missing |= lost
            self.log(f"[eval] WARNING: training deleted the checkpoints of steps {', '.join(map(str, sorted(lost)))} "
                     "before they were evaluated (it keeps run.keep_checkpoints); evaluate alongside training "
                     "with --watch, or keep more")

    def _vanished(self, checkpoint: CheckpointInfo) -> bool:
        fs, path = filesystem(checkpoint.url, self.storage_options)
        fs.invalidate_cache()
        return not fs.exists(path)

    def _start_pool(self) -> None:
        from .evaluation.pool import EvalPool, PoolError

        _init_ray()
        size = self.cfg.actors if self.cfg.watch else min(self.cfg.actors, len(self.queue))
        config = OmegaConf.to_container(self.cfg, resolve=True)
        try:
            self.pool = EvalPool(config, _data_spec(self.queue[0].meta, self.storage_options), size, self.log)
        except PoolError as err:
            raise EvaluationError(str(err)) from None

    def _dispatch(self) -> None:
        from .evaluation.pool import PoolError

        if self.queue and self.pool is None:
            self._start_pool()
        while self.queue and self.pool.has_capacity():
            self.pool.submit(self.queue.pop(0), self.run_url)
        if self.queue and not (self.pool.idle or self.pool.running or self.pool.starting):
            raise EvaluationError(str(PoolError("no evaluation actor is left alive")))

    def _record(self, outcome) -> None:
        checkpoint, result = outcome.checkpoint, outcome.result
        left = len(self.queue) + (self.pool.busy if self.pool else 0)
        self.lease.check()  # a lost lease records nothing more
        if not result.get("ok") and checkpoint.name != "best" and self._vanished(checkpoint):
            self.warned_missing.add(checkpoint.step)
            self.log(f"[eval] WARNING: {checkpoint.name} (step {checkpoint.step}) was deleted by training before "
                     "it was evaluated (it keeps run.keep_checkpoints); evaluate alongside with --watch, or keep more")
            return
        if result.get("ok"):
            self.report.add(result["record"])
            self.evaluated_now += 1
            self.log(progress_line(result["record"], self.evaluated_now, left))
            return
        self.failed.add(f"{checkpoint.url}@{checkpoint.step}")
        self.report.add_failure({"step": checkpoint.step, "checkpoint": checkpoint.url, "error": result["error"],
                                 "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        self.log(f"[eval] step {checkpoint.step} ({checkpoint.name}): FAILED, skipped: {result['error']}")

    def _note_incomplete(self, found: list[CheckpointInfo]) -> None:
        for c in found:
            if not c.ready:
                self.log(f"[eval] {c.name}: incomplete ({c.reason}), skipped")

    def run(self) -> int:
        """Evaluate until done (see module docstring); returns the exit status."""
        cfg = self.cfg
        if not run_exists(self.run_url, self.storage_options):
            if not cfg.watch:
                raise EvaluationError(f"run folder not found: {self.run_url}")
            self.log(f"[eval] waiting for {self.run_url} to appear")
        self.lease.acquire()
        try:
            return self._run_leased()
        finally:
            self.lease.release()

    def _run_leased(self) -> int:
        cfg = self.cfg
        self.lease.start_renewing()
        finished = run_finished(self.run_url, self.storage_options)
        found = self.discover()
        if not cfg.watch and not found:
            raise EvaluationError(f"no checkpoints in {self.run_url} (expected checkpoint_* folders written by genesis_dist.train)")
        already = len(self.report.evaluated_steps())
        self.log(f"[eval] {self.run_url}: {len(found)} checkpoints, {already} evaluated before, {len(self.queue)} to evaluate"
                 + (" (watching)" if cfg.watch else ""))
        next_scan = time.monotonic() + cfg.poll_seconds
        try:
            while True:
                self._dispatch()
                idle = not self.queue and (self.pool is None or self.pool.busy == 0)
                if idle and (not cfg.watch or finished):
                    break
                if self.pool is not None and (self.pool.busy or self.pool.starting):
                    wait = max(0.0, next_scan - time.monotonic()) if cfg.watch else None
                    for outcome in self.pool.wait(wait):
                        self._record(outcome)
                else:
                    time.sleep(max(0.0, next_scan - time.monotonic()))
                if cfg.watch and time.monotonic() >= next_scan:
                    next_scan = time.monotonic() + cfg.poll_seconds
                    try:
                        seen_finished = run_finished(self.run_url, self.storage_options)  # before the scan: it sees the last checkpoint
                        found = self.discover()
                        finished = seen_finished
                    except OSError as err:  # a storage hiccup while watching for hours: try again next poll
                        self.log(f"[eval] scanning {self.run_url} failed ({err.__class__.__name__}: {err}); retrying")
        finally:
            if self.pool is not None:
                self.pool.shutdown()
            self.report.close()
        self._note_incomplete(found)
        total = len(self.report.evaluated_steps())
        self.log(f"[eval] done: {self.evaluated_now} evaluated now, {total} in all, {len(self.failed)} failed; "
                 f"results in {self.run_url}/eval/ (metrics.md, metrics.jsonl, metrics.png, figures/)")
        return 1 if self.failed else 0


def _init_ray() -> None:
    from .evaluation.pool import actor_environment
    from .ray_cluster import connect

    connect(actor_environment())


def _parse(argv: list[str]) -> list[str]:
    """`--run URL`, `--run=URL` and `--watch` as config overrides; the rest pass through."""
    overrides, items = [], list(argv)
    while items:
        item = items.pop(0)
        if item == "--run":
            if not items:
                raise EvaluationError("--run needs a run folder URL")
            overrides.append(f"run={items.pop(0)}")
        elif item.startswith("--run="):
            overrides.append("run=" + item.split("=", 1)[1])
        elif item == "--watch":
            overrides.append("watch=true")
        elif item.startswith("-"):
            raise EvaluationError(f"unknown option {item}; usage: --run RUN_URL [--watch] [key=value ...]")
        else:
            overrides.append(item)
    return overrides


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if argv and argv[0] in ("compare", "--compare"):
        from .evaluation.published import compare_main

        return compare_main(argv[1:])

    def evaluate(args: list[str]) -> int:
        overrides = _parse(args)
        warn_secrets_on_command_line("genesis_dist.evaluate", overrides)
        cfg = load_eval_config(overrides)
        _check(cfg)
        return Evaluation(cfg, log=lambda line: print(line, flush=True)).run()

    return run_command("genesis_dist.evaluate", evaluate, argv, usage_errors=(EvaluationError,),
                       statuses={LeaseBusy: LEASE_BUSY_STATUS, LeaseLost: LEASE_BUSY_STATUS})


if __name__ == "__main__":
    sys.exit(main())
