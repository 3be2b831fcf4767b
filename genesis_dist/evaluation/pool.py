"""A pool of Ray actors, each a `CheckpointEvaluator` (Inception and the test set loaded once).

The driver hands out one checkpoint per idle actor and collects results as they finish.
Nothing can hang it: actors that do not start within `start_timeout_s` are an error, an
evaluation running past `checkpoint_timeout_s` is killed and reported, and a dead actor is
replaced (its checkpoint is reported as failed).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from .checkpoint_eval import CheckpointEvaluator
from ..storage import aws_environment


class PoolError(RuntimeError):
    """The pool cannot work (no actor starts, the test data can't be loaded); one line."""


@dataclass
class Outcome:
    """A finished evaluation: `result` is CheckpointEvaluator.evaluate's dict."""

    checkpoint: Any  # the CheckpointInfo submitted
    result: dict[str, Any]


def actor_environment() -> dict[str, str]:
    """Variables the actors need from the driver: AWS settings and TORCH_HOME (where the
    FID Inception weights are cached)."""
    env = aws_environment()
    if os.environ.get("TORCH_HOME"):
        env["TORCH_HOME"] = os.environ["TORCH_HOME"]
    return env


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{err.__class__.__name__}: {text[-1] if text else ''}"


class EvalPool:
    """`size` evaluation actors for one run's test data `data = {url, split, storage_options}`.

    The first actor loads the test set and computes (or reads) the FID statistics before
    the others start theirs, so the statistics are computed once.
    """

    def __init__(self, config: dict[str, Any], data: dict[str, Any], size: int, log=print):
        import ray

        self.ray = ray
        self.config, self.data, self.log = config, data, log
        self.actor_class = ray.remote(CheckpointEvaluator).options(
            num_cpus=config["cpus_per_actor"], num_gpus=config["gpus_per_actor"],
            max_restarts=0, runtime_env={"env_vars": actor_environment()},
        )
        self.idle: list[Any] = []
        self.starting: dict[Any, Any] = {}  # prepare ref -> actor
        self.running: dict[Any, tuple[Any, Any, float]] = {}  # evaluate ref -> (actor, checkpoint, start time)
        self.replacements_left = 2 * size
        actors = [self.actor_class.remote(config) for _ in range(size)]
        try:
            self._start_first(actors[0])
        except PoolError:
            for actor in actors:
                ray.kill(actor)
            raise
        for actor in actors[1:]:
            self.starting[actor.prepare.remote(data)] = actor

    def _start_first(self, actor) -> None:
        ray = self.ray
        timeout = self.config["start_timeout_s"]
        try:
            identity = ray.get(actor.identity.remote(), timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            ray.kill(actor)
            raise PoolError(
                f"no evaluation actor started within {timeout:g} s: each needs {self.config['cpus_per_actor']:g} CPUs "
                f"and {self.config['gpus_per_actor']:g} GPUs (cluster: {ray.cluster_resources()})"
            ) from None
        except ray.exceptions.RayError as err:
            raise PoolError(f"the evaluation actor failed to start: {_one_line(err)}") from None
        self.log(f"[eval] actor {identity}: loading the test split {self.data['url']} ({self.data['split']}) "
                 f"and its FID statistics")
        try:
            info = ray.get(actor.prepare.remote(self.data))
        except ray.exceptions.RayTaskError as err:
            raise PoolError(_one_line(err.cause if err.cause is not None else err)) from None
        except ray.exceptions.RayError as err:
            raise PoolError(f"the evaluation actor died while loading the test data: {_one_line(err)}") from None
        self.log(f"[eval] test set: {info['test_images']} images{' with masks' if info['has_masks'] else ''}; "
                 f"FID reference: {info['fid_test_images']} test images")
        self.idle.append(actor)

    @property
    def busy(self) -> int:
        return len(self.running)

    def has_capacity(self) -> bool:
        return bool(self.idle)

    def submit(self, checkpoint, run_url: str) -> None:
        """Start evaluating `checkpoint` (a CheckpointInfo) on an idle actor."""
        actor = self.idle.pop()
        self.running[actor.evaluate.remote(checkpoint.url, run_url)] = (actor, checkpoint, time.monotonic())

    def wait(self, timeout: float | None) -> list[Outcome]:
        """Wait up to `timeout` seconds (None: until something finishes) and return the
        finished evaluations; also admits newly started actors and enforces timeouts."""
        refs = list(self.running) + list(self.starting)
        if not refs:
            return []
        limit = self.config["checkpoint_timeout_s"]
        if self.running:
            oldest = min(start for _, _, start in self.running.values())
            until_timeout = max(0.1, oldest + limit - time.monotonic())
            timeout = until_timeout if timeout is None else min(timeout, until_timeout)
        ready, _ = self.ray.wait(refs, num_returns=1, timeout=timeout)
        ready, _ = self.ray.wait(refs, num_returns=len(refs), timeout=0) if ready else (ready, None)
        outcomes = []
        for ref in ready:
            if ref in self.starting:
                self._admit(ref)
            else:
                outcomes.append(self._collect(ref))
        outcomes += self._expire(limit)
        return outcomes

    def _admit(self, ref) -> None:
        actor = self.starting.pop(ref)
        try:
            self.ray.get(ref)
            self.idle.append(actor)
        except self.ray.exceptions.RayError as err:
            self.log(f"[eval] an actor failed to load the test data and is dropped: {_one_line(err)}")
            self.ray.kill(actor)

    def _collect(self, ref) -> Outcome:
        actor, checkpoint, _ = self.running.pop(ref)
        try:
            result = self.ray.get(ref)
        except self.ray.exceptions.RayError as err:
            result = {"ok": False, "error": f"actor lost: {_one_line(err)}"}
            self._replace(actor)
            return Outcome(checkpoint, result)
        self.idle.append(actor)
        return Outcome(checkpoint, result)

    def _expire(self, limit: float) -> list[Outcome]:
        now, outcomes = time.monotonic(), []
        for ref, (actor, checkpoint, start) in list(self.running.items()):
            if now - start > limit:
                del self.running[ref]
                self.ray.kill(actor)
                outcomes.append(Outcome(checkpoint, {"ok": False, "error": f"timed out after {limit:g} s (actor killed)"}))
                self._replace(actor)
        return outcomes

    def _replace(self, actor) -> None:
        try:
            self.ray.kill(actor)
        except Exception:  # already gone
            pass
        if self.replacements_left <= 0:
            if not (self.idle or self.running or self.starting):
                raise PoolError("evaluation actors keep dying; giving up (see the failures above)")
            return
        self.replacements_left -= 1
        fresh = self.actor_class.remote(self.config)
        self.starting[fresh.prepare.remote(self.data)] = fresh

    def shutdown(self) -> None:
        """Kill every actor of the pool."""
        for actor in [*self.idle, *self.starting.values(), *(a for a, _, _ in self.running.values())]:
            try:
                self.ray.kill(actor)
            except Exception:
                pass
        self.idle, self.starting, self.running = [], {}, {}
