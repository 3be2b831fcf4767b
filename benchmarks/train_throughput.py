"""Training throughput through the real Ray Train path: images/s in total and per
worker for 1 and 2 CPU workers (DDP over gloo) and, when a GPU is present,
single-GPU fp32 and bf16.

Each configuration runs `--steps` steps of `python -m genesis_dist.train`'s
trainer; the rate is that of the second logging window (the first holds the
warm-up). A generated Multi-dSprites shard set is made in a temporary folder.

    python benchmarks/train_throughput.py [--steps 40] [--batch-size 32] [--model-size paper|reduced]
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import ray
import torch

from genesis_dist.config import load_config
from genesis_dist.training.run_folder import ensure_dataset
from genesis_dist.training.worker import build_trainer

REDUCED = ["model.encoder_filters=32", "model.head_filters=32", "model.decoder_filters=32", "model.prior_hidden=128"]


def run_once(root: Path, data_url: str, name: str, overrides: list[str], steps: int) -> float:
    """Total img/s of the second logging window of a `steps`-step run."""
    cfg = load_config([
        f"data.url={data_url}", f"run.storage_path={root / 'runs'}", f"run.name={name}",
        f"optim.steps={steps}", f"run.log_every={steps // 2}", f"run.checkpoint_every={steps}",
        f"run.image_every={10 * steps}", "run.eval_images=16", *overrides,
    ])
    result = build_trainer(cfg).fit()
    if result.error is not None:
        raise RuntimeError(f"{name} failed: {result.error}")
    history = [json.loads(l) for l in (root / "runs" / name / "metrics.jsonl").read_text().splitlines()]
    return history[-1]["img_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--model-size", choices=["paper", "reduced"], default="paper")
    parser.add_argument("--slots", type=int, default=7)
    args = parser.parse_args()
    base = [f"optim.batch_size={args.batch_size}", f"model.num_slots={args.slots}", "data.num_workers=1",
            "data=multi_dsprites"] + (REDUCED if args.model_size == "reduced" else [])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data_url = str(root / "multi_dsprites")
        ensure_dataset(load_config(["data=multi_dsprites", f"data.url={data_url}", "data.generate_if_missing=true",
                                    "data.generate_train=2000", "data.generate_test=64"]))
        ray.init(include_dashboard=False, log_to_driver=False)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        for workers in (1, 2):
            cpus_each = max(cpus // workers, 1)
            rate = run_once(root, data_url, f"cpu{workers}", base + [
                f"scaling.num_workers={workers}", "scaling.use_gpu=false", f"scaling.cpus_per_worker={cpus_each}",
            ], args.steps)
            rows.append((f"CPU × {workers} ({cpus_each} cores each)", "fp32", workers, rate))
        if torch.cuda.is_available():
            for precision in ("fp32", "bf16"):
                rate = run_once(root, data_url, f"gpu-{precision}", base + [
                    "scaling.num_workers=1", "scaling.use_gpu=true", f"optim.precision={precision}",
                    "data.num_workers=4",
                ], max(args.steps, 200))
                rows.append((torch.cuda.get_device_name(), precision, 1, rate))
        ray.shutdown()
    print(f"GENESIS-V2 ({args.model_size}), K={args.slots}, 64 px, global batch {args.batch_size}")
    print("| device | precision | workers | img/s total | img/s per worker |")
    print("|---|---|---|---|---|")
    for device, precision, workers, rate in rows:
        print(f"| {device} | {precision} | {workers} | {rate:.1f} | {rate / workers:.1f} |")


if __name__ == "__main__":
    main()
