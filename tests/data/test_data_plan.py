"""The epoch plan: equal batches per rank, disjoint ranges, every sample at most (or exactly) once."""
from __future__ import annotations

import itertools
from collections import Counter

from genesis_dist.data.errors import DataError
from genesis_dist.data.plan import batches_per_epoch, plan_epoch, shard_order


def samples_of(plan, counts):
    """(shard, position) of every sample a WorkerPlan reads, in order."""
    return [(seg.shard, i) for seg in plan.segments for i in range(seg.start, seg.stop)]


CASES = list(itertools.product(
    [[40] * 6, [40, 10], [500, 500, 123], [7, 0, 3, 11, 2]],  # shard counts (last shards short, an empty one)
    [1, 2, 3, 8],  # world size
    [0, 1, 2, 4],  # DataLoader workers
    [1, 4, 10],  # batch size
    [True, False],  # drop_last
))


def test_plan_gives_equal_batches_and_disjoint_samples():
    for case in CASES:
        check_plan(*case)


def check_plan(counts, world, workers, batch, drop_last):
    total = sum(counts)
    try:
        expected_batches = batches_per_epoch(total, world, batch, drop_last)
    except DataError:
        assert drop_last and total // world < batch
        return
    seen = Counter()
    for rank in range(world):
        plans = plan_epoch(counts, epoch=3, seed=1, shuffle=True, rank=rank, world_size=world,
                           num_workers=workers, batch_size=batch, drop_last=drop_last)
        assert len(plans) == max(1, workers)
        steps = sorted(s for p in plans for s in p.steps)
        assert steps == list(range(expected_batches))  # every rank: the same number of batches
        for plan in plans:
            assert len(samples_of(plan, counts)) == plan.samples
            assert all(0 <= seg.start < seg.stop <= counts[seg.shard] for seg in plan.segments)
            assert all(size == batch for size in plan.batch_sizes[:-1])
            seen.update(samples_of(plan, counts))
    everything = {(shard, i) for shard, count in enumerate(counts) for i in range(count)}
    if drop_last:
        assert max(seen.values()) == 1  # never twice
        assert total - len(seen) < world * (batch + 1)  # little left out
    else:
        assert set(seen) == everything  # everything, padding repeats a few
        assert sum(seen.values()) - total < world


def test_shard_order_changes_with_epoch_and_seed_only_when_shuffling():
    assert shard_order(10, seed=0, epoch=0, shuffle=False) == list(range(10))
    orders = {tuple(shard_order(10, seed=0, epoch=e, shuffle=True)) for e in range(5)}
    assert len(orders) == 5
    assert shard_order(10, 0, 2, True) == shard_order(10, 0, 2, True) != shard_order(10, 1, 2, True)
