"""Elastic training: the data position survives a change of world size (plan, loader,
checkpoint restore), the config maps to Ray Train's elastic policy, and a real
multi-node local Ray cluster that loses and regains a node trains every sample of
every epoch exactly once with GECO's β continuous."""
from __future__ import annotations

import random
from collections import Counter

import pytest

from genesis_dist.config import ConfigError, load_config, worker_range
from genesis_dist.data import make_loader
from genesis_dist.data.plan import EpochOrder, merge, phase_batches, plan_epoch, prefix
from genesis_dist.data.reader import read_shard
from genesis_dist.data.manifest import read_manifest, split_shards


# --- the plan: phases of an epoch under changing world sizes (pure arithmetic) ---------------

pytestmark = pytest.mark.integration  # the Ray-heavy tier: python -m pytest --integration


def consumed_after(plans, steps_done):
    """Positions a rank's plan workers have read after `steps_done` batches of the phase
    (worker w has read the batches of its steps < steps_done, in order)."""
    read = []
    for plan in plans:
        count = sum(size for step, size in zip(plan.steps, plan.batch_sizes) if step < steps_done)
        read.extend(prefix(plan.ranges, count))
    return read


def run_phases(counts, window, phases, seed=3, epoch=1):
    """Positions of one epoch read by every (phase, rank), each phase interrupted after
    `stop` steps (None: runs to the epoch's end). Returns (Counter of positions, last phase's
    (world, batch) when it ended the epoch)."""
    seen, consumed = Counter(), []
    for world, workers, batch, stop in phases:
        batches = phase_batches(sum(counts), consumed, world, batch, True)
        if batches == 0:
            return seen, (world, batch)
        steps = batches if stop is None else min(stop, batches)
        read = []
        for rank in range(world):
            plans = plan_epoch(counts, epoch=epoch, seed=seed, shuffle=True, rank=rank, world_size=world,
                               num_workers=workers, batch_size=batch, drop_last=True, window=window,
                               consumed=merge(consumed))
            assert sorted(s for p in plans for s in p.steps) == list(range(batches))  # equal batches per rank
            read += consumed_after(plans, steps)
        seen.update(p for a, b in read for p in range(a, b))
        consumed = list(merge(consumed + read))
        if stop is None or stop >= batches:
            return seen, (world, batch)
    return seen, None


def test_every_position_is_read_at_most_once_across_resizes_and_the_epoch_loses_less_than_a_batch():
    rng = random.Random(0)
    for _ in range(300):
        counts = [rng.randint(0, 60) for _ in range(rng.randint(1, 6))]
        if sum(counts) < 40:
            continue
        phases = [(rng.randint(1, 4), rng.randint(0, 3), rng.randint(1, 6), rng.randint(0, 5)) for _ in range(rng.randint(0, 3))]
        phases.append((rng.randint(1, 4), rng.randint(0, 3), rng.randint(1, 6), None))
        seen, ended = run_phases(counts, rng.choice([0, 1, 7, 50]), phases)
        assert not seen or max(seen.values()) == 1, (counts, phases)
        world, batch = ended
        assert sum(counts) - len(seen) < world * (batch + 1), (counts, phases)  # what the last phase left out
        assert all(0 <= p < sum(counts) for p in seen)


def test_a_resize_that_divides_the_rest_loses_nothing():
    # 240 samples, batch 10: 2 ranks read 5 steps (100), 1 rank reads the remaining 140 exactly.
    seen, ended = run_phases([40] * 6, 30, [(2, 2, 10, 5), (1, 2, 10, None)])
    assert len(seen) == 240 and set(seen.values()) == {1} and ended == (1, 10)


def test_the_epoch_sequence_is_a_permutation_that_depends_on_seed_and_epoch_only():
    counts = (13, 0, 40, 7, 40)
    order = EpochOrder(counts, seed=2, epoch=5, shuffle=True, window=16)
    everything = list(order.samples([(0, order.total)]))
    assert sorted(everything) == [(s, i) for s, c in enumerate(counts) for i in range(c)]  # a bijection
    assert everything != sorted(everything)
    assert list(EpochOrder(counts, 2, 6, True, 16).samples([(0, order.total)])) != everything
    # Any layout of a fresh epoch cuts that one sequence into consecutive pieces, in rank order.
    for world, workers, batch in [(1, 0, 5), (3, 2, 4), (2, 4, 7)]:
        pieces = [r for rank in range(world) for p in plan_epoch(
            list(counts), epoch=5, seed=2, shuffle=True, rank=rank, world_size=world, num_workers=workers,
            batch_size=batch, drop_last=True, window=16) for r in p.ranges]
        flat = [pos for a, b in pieces for pos in range(a, b)]
        assert flat == list(range(len(flat)))
    # Windows keep reads local: a window's samples come from at most the shards it spans.
    for index in range(-(-order.total // 16)):
        shards = {order.locate(p)[0] for p in order.window_order(index)}
        assert len(shards) <= 3


# --- the loader on real shards ----------------------------------------------------------------

@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    """Multi-dSprites train: 240 images in 6 shards of 40."""
    from genesis_dist.data.convert import convert_dataset
    from genesis_dist.data.formats.multi_dsprites import MultiDSprites

    out = str(tmp_path_factory.mktemp("elastic") / "shards")
    convert_dataset(MultiDSprites({"train": 240}, img_size=32), out, shard_samples=40, progress=False)
    return out


def keys_of(loader, steps):
    out = []
    for _, batch in zip(range(steps), loader.forever()):
        out.extend(batch["key"])
    return out


def test_the_loader_reads_the_planned_samples(shards):
    # Oracle: the (shard, index) → key table read straight from the tars.
    table = {}
    for number, (url, count) in enumerate(split_shards(read_manifest(shards), shards, "train")):
        for index, raw in enumerate(read_shard(url, None, 0, count)):
            table[number, index] = raw["__key__"]
    loader = make_loader(shards, "train", 8, rank=1, world_size=2, num_workers=2, seed=4, shuffle_buffer=25)
    plans = loader.layout.plans(0)
    expected = {w: [table[s] for s in p.order.samples(p.ranges)] for w, p in enumerate(plans)}
    got = keys_of(loader, len(loader))
    # DataLoader order: batch s from plan worker s mod 2, each worker in its ranges' order.
    batches = [got[i:i + 8] for i in range(0, len(got), 8)]
    assert [k for b in batches[0::2] for k in b] == expected[0]
    assert [k for b in batches[1::2] for k in b] == expected[1]


def loaders(shards, world, workers, batch=10):
    return [make_loader(shards, "train", batch, rank=r, world_size=world, num_workers=workers, seed=5,
                        shuffle_buffer=30) for r in range(world)]


def test_a_resized_restart_reads_the_rest_of_the_epoch_once(shards):
    before = loaders(shards, 2, 2)
    seen = Counter(k for loader in before for k in keys_of(loader, 5))  # 2 ranks × 5 steps × 10
    states = [loader.state_dict() for loader in before]
    assert states[0]["epoch"] == 0 and before[0].epoch_position() == {"epoch": 0, "trained": 100}

    # 3 ranks now: each takes a third of the 140 left (4 batches of 10; 20 left out).
    middle = loaders(shards, 3, 1)
    for loader in middle:
        loader.resume(states)
    firsts = [keys_of(loader, 2) for loader in middle]  # 2 steps: 60 more
    seen.update(k for keys in firsts for k in keys)
    states = [loader.state_dict() for loader in middle]
    assert middle[0].epoch_position() == {"epoch": 0, "trained": 160}

    # Back to 1 rank: the 80 left fill 8 batches; then the next epoch starts whole.
    after = loaders(shards, 1, 2)[0]
    after.resume(states)
    rest = keys_of(after, 8)
    seen.update(rest)
    assert len(seen) == 240 and set(seen.values()) == {1}
    assert after.epoch_position() == {"epoch": 0, "trained": 240}
    next_epoch = keys_of(after, 24)
    assert after.epoch == 1 and sorted(next_epoch) == sorted(seen)


def test_resume_with_the_same_world_is_exact_and_needs_only_its_own_state(shards):
    reference = [keys_of(loader, 20) for loader in loaders(shards, 2, 2)]  # crosses the epoch (12 batches)
    first = loaders(shards, 2, 2)
    head = [keys_of(loader, 7) for loader in first]
    states = [loader.state_dict() for loader in first]
    again = loaders(shards, 2, 2)
    for rank, loader in enumerate(again):
        loader.resume(states if rank == 0 else [states[1]])
        assert head[rank] + keys_of(loader, 13) == reference[rank]


def test_incomplete_saved_positions_are_refused(shards):
    from genesis_dist.data import DataError

    states = [loader.state_dict() for loader in loaders(shards, 2, 0)]
    loader = loaders(shards, 3, 0)[0]
    with pytest.raises(DataError, match=r"incomplete \(ranks \[1\] of world size \[2\]\)"):
        loader.resume(states[1:])


def test_restore_reads_the_worker_files_of_the_world_that_wrote_the_checkpoint(tmp_path):
    import torch

    from genesis_dist.training.checkpoint import CheckpointError
    from genesis_dist.training.run import saved_worker_states

    # checkpoint_<step> written by 2 ranks, then again by 1 rank after a restart from an
    # earlier checkpoint: rank 1's file of the first world is still there.
    for rank, world in ((0, 2), (1, 2), (0, 1)):
        torch.save({"data": {"world_size": world, "rank": rank}, "rng": {}}, tmp_path / f"worker_{rank}.pt")
    assert list(saved_worker_states(str(tmp_path))) == [0]
    torch.save({"data": {"world_size": 2, "rank": 0}, "rng": {}}, tmp_path / "worker_0.pt")
    assert list(saved_worker_states(str(tmp_path))) == [0, 1]
    torch.save({"data": {"world_size": 3, "rank": 0}, "rng": {}}, tmp_path / "worker_0.pt")
    with pytest.raises(CheckpointError, match=r"written by 3 ranks but worker_2\.pt missing"):
        saved_worker_states(str(tmp_path))


# --- config → Ray Train ------------------------------------------------------------------------

def test_num_workers_takes_a_number_or_a_range():
    assert worker_range(load_config(["scaling.num_workers=8"]).scaling) == (8, 8)
    assert worker_range(load_config(["scaling.num_workers=[2,8]"]).scaling) == (2, 8)
    for value, message in [("[3,1]", "need 1 ≤ MIN ≤ MAX"), ("0", "must be ≥ 1"), ("[1,2,3]", "expected a number"),
                           ("two", "expected a number"), ("[1.5,2]", "expected a number")]:
        with pytest.raises(ConfigError, match=message) as info:
            load_config([f"scaling.num_workers={value}"])
        assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match=r"every world size from 2 to 4; 3 does not divide it"):
        load_config(["optim.global_batch_size=32", "scaling.num_workers=[2,4]"])
    load_config(["optim.global_batch_size=24", "scaling.num_workers=[2,4]"])  # 2, 3 and 4 divide 24


def test_build_trainer_selects_rays_elastic_policy(tmp_path):
    import ray  # noqa: F401  (a hard dependency: a broken install fails, never skips)
    from genesis_dist.training.worker import build_trainer

    common = ["scaling.use_gpu=false", f"run.storage_path={tmp_path}"]
    elastic = build_trainer(load_config(common + ["scaling.num_workers=[1,4]", "scaling.resize_interval_s=5"]))
    assert elastic.scaling_config.num_workers == (1, 4) and elastic.scaling_config.elasticity_enabled
    assert elastic.scaling_config.elastic_resize_monitor_interval_s == 5
    fixed = build_trainer(load_config(common + ["scaling.num_workers=3"]))
    assert fixed.scaling_config.num_workers == 3 and not fixed.scaling_config.elasticity_enabled


def test_loader_workers_follow_the_cores_per_training_worker():
    import os

    from genesis_dist.training.run import loader_workers

    cores = len(os.sched_getaffinity(0))
    assert loader_workers(3) == 3 and loader_workers(0) == 0
    assert loader_workers(None, local_world=1) == max(1, cores - 1)
    assert loader_workers(None, local_world=8) == max(1, cores // 8 - 1)
    assert load_config(["data.num_workers=null"]).data.num_workers is None


# --- a real multi-node cluster: lose a node (preempted, then killed), get it back ---------------

def _refresh_autoscaling_view():
    """Make Ray's autoscaling coordinator look at the cluster now rather than at its next
    20-second tick (what a real autoscaler's view would catch up with anyway): it is what
    Ray Train's elastic policy counts workers from."""
    import ray

    try:
        coordinator = ray.get_actor("AutoscalingCoordinator", namespace="AutoscalingCoordinator")
    except ValueError:
        return
    ray.get(coordinator.get_reserved_resources.remote("genesis-dist-test", recompute=True), timeout=30)


@pytest.mark.timeout(420)
def test_elastic_run_survives_a_preempted_and_a_killed_node_and_trains_every_sample_once(tmp_path):
    import json
    import math
    import os
    import subprocess
    import sys
    import time

    import ray
    import torch

    from elastic_checks import attempt_worlds, check_every_sample_once, progress
    from ray_multinode import LocalCluster
    from tiny_config import TINY

    from genesis_dist.training.checkpoint import load_checkpoint
    from genesis_dist.training.run_folder import ensure_dataset

    data = str(tmp_path / "data")
    ensure_dataset(load_config(TINY + [f"data.url={data}", "data.generate_if_missing=true",
                                       "data.generate_train=96", "data.generate_test=16"]))
    run = tmp_path / "runs" / "elastic"
    log_path = tmp_path / "train.log"
    steps = 150
    # 96 samples, 8 per worker: 6 steps an epoch at 2 workers, 12 at 1; a checkpoint every
    # 4 steps always falls where the epoch's rest divides by either global batch, so no
    # phase leaves a sample out and every epoch must be seen whole.
    # --verbose: Ray Train's own lines (its preemption notice, asserted below) reach the output.
    command = [sys.executable, "-m", "genesis_dist.train", "--verbose", *TINY, f"data.url={data}",
               f"run.storage_path={tmp_path / 'runs'}", "run.name=elastic", f"optim.steps={steps}",
               "scaling.num_workers=[1,2]", "scaling.resize_interval_s=2", "run.checkpoint_every=4",
               "run.keep_checkpoints=1000", "run.log_sample_keys=true", "run.max_failures=4"]
    # Ray Train may first try the old size once after a node goes (its resource view lags):
    # that attempt waits for the start timeout, 60 s by default, before the smaller start.
    env = {"RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S": "1", "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "10"}
    started = time.monotonic()
    with LocalCluster(env) as cluster:
        nodes = [cluster.add_node(), cluster.add_node()]
        ray.init(address=cluster.address, log_to_driver=False)
        with open(log_path, "w") as log:
            trainer = subprocess.Popen(command, env={**os.environ, "RAY_ADDRESS": cluster.address},
                                       stdout=log, stderr=subprocess.STDOUT)
        try:
            def wait_for(world, new_steps, after_attempts):
                """Until an attempt later than `after_attempts` with `world` workers has logged
                `new_steps` steps; returns the number of attempts then."""
                while time.monotonic() - started < 360:
                    count, current, first, last = progress(run)
                    if count > after_attempts and current == world and last - first + 1 >= new_steps:
                        return count
                    assert trainer.poll() is None, f"training ended early:\n{log_path.read_text()[-3000:]}"
                    time.sleep(0.3)
                raise TimeoutError(f"no attempt with {world} workers: {progress(run)}\n{log_path.read_text()[-3000:]}")

            seen = wait_for(2, 5, 0)
            # A spot interruption: the node is drained as a preemption, then goes at the deadline.
            drained = nodes.pop()
            cluster.drain(drained, deadline_s=3)
            time.sleep(3)
            drained_reason = cluster.remove(drained)  # the instance goes at the deadline
            _refresh_autoscaling_view()
            seen = wait_for(1, 5, seen)
            nodes.append(cluster.add_node())  # a replacement node joins
            _refresh_autoscaling_view()
            seen = wait_for(2, 5, seen)
            cluster.remove(nodes.pop(0))  # a machine lost without warning
            _refresh_autoscaling_view()
            seen = wait_for(1, 5, seen)
            nodes.append(cluster.add_node())
            _refresh_autoscaling_view()
            wait_for(2, 1, seen)
            assert trainer.wait(timeout=240) == 0, log_path.read_text()[-3000:]
        finally:
            if trainer.poll() is None:
                trainer.kill()
            ray.shutdown()
    output = log_path.read_text()
    assert drained_reason == "AUTOSCALER_DRAIN_PREEMPTED"
    assert "Training was interrupted by node preemption" in output  # Ray Train saw a preemption

    # Worker counts of the attempts: 2, then 1 after the preemption, 2, 1 after the kill, 2.
    assert attempt_worlds(run) == [2, 1, 2, 1, 2]

    # Every step of the final model's history, each epoch's 96 samples exactly once.
    history = check_every_sample_once(run, steps, samples=96, batch=8)
    restarts = sorted({entry["attempt"] for entry in history.values()})
    assert len(restarts) >= 5  # the final model went through every resize

    # GECO's β: at each restart the checkpointed β is where the next attempt continued from,
    # and the first step after it moves β no more than ordinary steps do (GECO eq.: a
    # factor exp(λ·Δ·s) per step), not back to its initial value.
    records = {r["step"]: r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}
    assert sorted(records) == list(range(1, steps + 1))
    starts = sorted({min(s for s, e in history.items() if e["attempt"] == a) for a in restarts})[1:]
    jumps = {s: abs(math.log(records[s]["beta"] / records[s - 1]["beta"])) for s in range(2, steps + 1)}
    ordinary = max(v for s, v in jumps.items() if s not in starts)
    for start in starts:
        state, meta = load_checkpoint(str(run / f"checkpoint_{start - 1:08d}"))
        assert state["objective"]["beta"] == pytest.approx(records[start - 1]["beta"], rel=1e-12)
        assert jumps[start] <= 1.5 * ordinary, (start, jumps[start], ordinary)
        assert meta["data_position"]["world_size"] in (1, 2)
    final = [torch.load(run / f"checkpoint_{steps:08d}" / f"worker_{r}.pt", weights_only=True) for r in (0, 1)]
    assert final[0]["beta"] == final[1]["beta"] and final[0]["params_sha256"] == final[1]["params_sha256"]
