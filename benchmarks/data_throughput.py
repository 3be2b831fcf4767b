"""Data throughput: decoded 64 px images/s into batches, local disk vs an S3 server, 1/2/4 workers.

    python benchmarks/data_throughput.py                    # prints a markdown table
    python benchmarks/data_throughput.py --append-results   # and appends it to benchmarks/RESULTS.md

Shards: generated Multi-dSprites (64×64 PNG image + mask + meta per sample). The S3 rows
read from moto's standalone server on loopback, which runs on the same cores as the
loader (a real object store would not). "steady" counts batches after the first one
(the first waits for worker start-up and the shuffle buffer to fill); "epoch" includes it.
"per CPU-second" divides images by the CPU time the loader used (main process + its
DataLoader workers, not the S3 server): the per-core rate, robust to other jobs on the machine.
Goal: ≥ 15,000 img/s per 16-core node, i.e. ≥ 940 img/s per core.
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the moto server helper lives with the tests

from s3_server import MotoServer  # noqa: E402

from genesis_dist.data import make_loader  # noqa: E402
from genesis_dist.data.convert import convert_dataset
from genesis_dist.data.formats.multi_dsprites import MultiDSprites  # noqa: E402
from genesis_dist.storage import filesystem  # noqa: E402

GOAL_PER_NODE, NODE_CORES = 15_000, 16


def cpu_seconds() -> float:
    """CPU time of this process and its reaped children (finished DataLoader workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure(url: str, workers: int, batch_size: int, storage_options: dict | None, epochs: int) -> dict:
    """Images/s over `epochs` epochs of split train: steady, whole epoch, and per CPU-second."""
    cpu_before = cpu_seconds()
    loader = make_loader(url, "train", batch_size, rank=0, world_size=1, num_workers=workers, seed=0,
                         shuffle_buffer=1000, storage_options=storage_options)
    steady_images, steady_time, total_images, total_time = 0, 0.0, 0, 0.0
    for _ in range(epochs):
        started = time.perf_counter()
        first = None
        for batch in loader:
            count = batch["image"].shape[0]
            total_images += count
            if first is None:
                first = time.perf_counter()
            else:
                steady_images += count
        ended = time.perf_counter()
        steady_time += ended - first
        total_time += ended - started
    cpu = cpu_seconds() - cpu_before  # the workers of each epoch were joined when it ended
    return {"steady": steady_images / steady_time, "epoch": total_images / total_time, "cpu": total_images / cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=8000)
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--append-results", action="store_true")
    args = parser.parse_args()

    cores = os.cpu_count() or 1
    rows = []
    with tempfile.TemporaryDirectory() as folder, MotoServer() as server:
        local = str(Path(folder) / "mds")
        convert_dataset(MultiDSprites({"train": args.images}), local, shard_samples=args.shard_size,
                               workers=min(2, cores), progress=False)
        remote = server.create_bucket("bench") + "/mds"
        fs, path = filesystem(remote, server.storage_options)
        fs.put(local + "/", path, recursive=True)
        for source, url, options in (("local disk", local, None), ("S3 (moto, loopback)", remote,
                                                                   server.storage_options)):
            for workers in args.workers:
                rates = measure(url, workers, args.batch_size, options, args.epochs)
                rows.append((source, workers, rates["steady"], rates["epoch"], rates["cpu"]))
                print(f"{source:22s} workers={workers}: {rates['steady']:8.0f} img/s "
                      f"(epoch incl. start-up {rates['epoch']:.0f}), {rates['cpu']:.0f} img/s per CPU-second",
                      flush=True)

    per_core = min(row[4] for row in rows if row[1] > 1 or max(args.workers) <= 1)  # with workers: a trainer node
    table = "\n".join([
        "| source | DataLoader workers | img/s (steady) | img/s (whole epoch) | img/s per CPU-second |",
        "|---|---:|---:|---:|---:|",
        *(f"| {s} | {w} | {r:,.0f} | {e:,.0f} | {c:,.0f} |" for s, w, r, e, c in rows),
    ])
    section = f"""
## Data throughput

`python benchmarks/data_throughput.py` — decoded Multi-dSprites samples (64×64 image
float [3,H,W] in [0,1] + long mask + meta) into batches of {args.batch_size}, one rank,
{args.images} images in shards of {args.shard_size}, shuffle buffer 1000, {args.epochs} epochs.
Machine: {cores} cores ({platform.machine()}), no GPU, load average {os.getloadavg()[0]:.1f} at the end
(other jobs share the cores, so wall-clock rates are lower bounds). S3 = moto's standalone
server on 127.0.0.1, on the same cores. Per CPU-second = images / CPU time of the loader
(main process + DataLoader workers; the S3 server excluded).

{table}

Per core (the lowest per-CPU-second rate with ≥ 2 workers): {per_core:,.0f} img/s. Projection, not
measured: × {NODE_CORES} cores = {per_core * NODE_CORES:,.0f} img/s on a {NODE_CORES}-core node if the rate per core
held there (goal: ≥ {GOAL_PER_NODE:,} img/s per node, 5× what one GPU trainer consumes).
"""
    print(section)
    if args.append_results:
        with open(REPO / "benchmarks" / "RESULTS.md", "a") as handle:
            handle.write(section)


if __name__ == "__main__":
    main()
