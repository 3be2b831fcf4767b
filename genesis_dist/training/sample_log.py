"""`run.log_sample_keys=true` (a debugging aid): which samples each rank trained on.

Every (re)start of a run is an attempt; each rank of an attempt appends one line per step
to `{run}/sample_keys/<attempt>-rank<r>.jsonl`: {"step", "epoch", "world", "keys"}, written
before the step trains on them. `<attempt>` is rank 0's start time in nanoseconds (the
same for all ranks of an attempt), so attempts sort by when they began.

A restart resumes from the latest checkpoint and repeats the steps after it, so a step may
appear in several attempts: the one that counts is the latest (`trained_keys`), since a
later attempt always resumed from a checkpoint at or after every step an earlier attempt
had checkpointed.
"""
from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from typing import Any, Iterator

from .layout import SAMPLE_KEYS_FOLDER as FOLDER


def attempt_token() -> int:
    """Rank 0's clock in ns, shared with every rank when torch.distributed is up."""
    token = [time.time_ns()]
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.broadcast_object_list(token, src=0)
    return int(token[0])


def logged_batches(batches: Iterator[dict[str, Any]], loader, run_folder: str, rank: int, world: int,
                   start_step: int) -> Iterator[dict[str, Any]]:
    """`batches` unchanged, each one's keys appended (and flushed) to this attempt's file
    of this rank before it is handed on; the first batch is step `start_step + 1`."""
    folder = os.path.join(run_folder, FOLDER)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{attempt_token():020d}-rank{rank}.jsonl")
    step = start_step
    with open(path, "a") as out:
        for batch in batches:
            step += 1
            out.write(json.dumps({"step": step, "epoch": loader.epoch, "world": world, "keys": list(batch["key"])}) + "\n")
            out.flush()
            yield batch


def read_attempts(run_folder: str) -> dict[int, dict[int, list[dict[str, Any]]]]:
    """{attempt: {rank: records}} of a run folder's sample-key logs."""
    attempts: dict[int, dict[int, list[dict[str, Any]]]] = defaultdict(dict)
    folder = os.path.join(run_folder, FOLDER)
    for name in sorted(os.listdir(folder)):
        attempt, rank = name.removesuffix(".jsonl").split("-rank")
        with open(os.path.join(folder, name)) as f:
            attempts[int(attempt)][int(rank)] = [json.loads(line) for line in f if line.strip()]
    return dict(attempts)


def trained_keys(run_folder: str) -> dict[int, dict[str, Any]]:
    """{step: {"epoch", "world", "keys" (all ranks', rank order)}} of the steps that made
    the run's final model: for each step, the latest attempt that logged it."""
    steps: dict[int, dict[str, Any]] = {}
    for attempt, ranks in sorted(read_attempts(run_folder).items()):
        per_step: dict[int, dict[str, Any]] = {}
        for rank in sorted(ranks):
            for record in ranks[rank]:
                entry = per_step.setdefault(record["step"], {"epoch": record["epoch"], "world": record["world"],
                                                             "keys": [], "attempt": attempt})
                entry["keys"].extend(record["keys"])
        steps.update(per_step)
    return steps
