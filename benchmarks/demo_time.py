"""Where the embedded demo's wall time goes, measured on this machine in one process.

Each part of `python -m genesis_dist.train` on the demo that is not a training step is
timed as the run does it, with the demo's own config, beside the steps:

    generating the data        the 2,000 + 256 Multi-dSprites images (first run only)
    starting Ray               a local cluster as the command starts it (ray_cluster.connect)
    starting the workers       a one-worker TorchTrainer's start and end around an empty loop
    training steps             `--steps` timed steps × optim.steps (the demo's batch and curriculum)
    held-out scoring           `evaluate_batch` on run.eval_images test images × checkpoints
    figures                    decomposition + samples figures × their steps
    checkpoints                state + meta written × checkpoints

then, with `--run`, the whole command as a user runs it, for the total the parts should
add up to. Prints a table; the raw numbers go to benchmarks/results/ (record.py).

With `--run` the record also keeps the run's held-out scores at every checkpoint (its
`metrics.jsonl` lines with `eval_*` values) and the command's last lines; `--run-only` skips
the parts (a seed of the demo, recorded).

    python benchmarks/demo_time.py [--steps 30] [--run | --run-only] [-- key=value ...]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from record import Recorder  # noqa: E402


def timed(fn, repeat: int = 1) -> float:
    """Median seconds of `repeat` calls of fn()."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="training steps timed (after 5 untimed)")
    parser.add_argument("--run", action="store_true", help="also run the whole demo command and time it")
    parser.add_argument("--run-only", action="store_true", help="only the whole command, recorded with its scores")
    parser.add_argument("overrides", nargs="*", help="key=value passed to the demo config (after --)")
    args = parser.parse_args()
    recorder = Recorder("demo_time")

    from genesis_dist.config import load_config
    from genesis_dist.data.convert import convert_dataset
    from genesis_dist.data.formats.multi_dsprites import MultiDSprites
    from genesis_dist.figures import decomposition_figure, generation_figure
    from genesis_dist.training.checkpoint import save_checkpoint
    from genesis_dist.training.loop import evaluate_batch, train_step
    from genesis_dist.training.run import RankPlan, build_state, heldout_batch, make_train_loader
    from genesis_dist.data import ShardSet

    work = Path(tempfile.mkdtemp(prefix="demo-time-"))
    cfg = load_config([f"data.url={work / 'data'}", f"run.storage_path={work / 'runs'}", *args.overrides])
    rows: list[dict] = []
    if args.run_only:
        return run_whole_command(recorder, work, args.overrides, rows, None)

    def row(part: str, count: int, seconds_each: float) -> None:
        rows.append({"part": part, "count": count, "seconds_each": round(seconds_each, 3),
                     "seconds": round(count * seconds_each, 1)})
        print(f"  {part}: {count} × {seconds_each:.3f} s", flush=True)

    sizes = {cfg.data.train_split: cfg.data.generate_train, cfg.data.eval_split: cfg.data.generate_test}
    row("generating the data (first run only)", 1, timed(lambda: convert_dataset(
        MultiDSprites(sizes, img_size=cfg.model.img_size, seed=cfg.run.seed), cfg.data.url, progress=False)))

    import ray

    from genesis_dist.ray_cluster import connect

    start = time.perf_counter()
    connect({}, verbose=False, num_cpus=os.cpu_count())
    row("starting Ray", 1, time.perf_counter() - start)

    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer

    empty = TorchTrainer(lambda config: None, scaling_config=ScalingConfig(num_workers=1, resources_per_worker={
        "CPU": cfg.scaling.cpus_per_worker}), run_config=ray.train.RunConfig(storage_path=str(work / "ray")))
    row("starting and ending the workers (empty loop)", 1, timed(empty.fit))
    ray.shutdown()

    device = torch.device("cpu")
    torch.set_num_threads(int(cfg.scaling.cpus_per_worker))
    plan = RankPlan.single(cfg, device)
    data = ShardSet.open(cfg.data.url)
    state = build_state(cfg, plan)
    batches = make_train_loader(cfg, data, plan).forever()
    images = [next(batches)["image"] for _ in range(args.steps + 5)]

    def step(i: int) -> None:
        train_step(state.model, state.objective, state.optimizer, images[i], step=i + 1,
                   channels_last=cfg.optim.channels_last)

    for i in range(5):
        step(i)
    start = time.perf_counter()
    for i in range(5, args.steps + 5):
        step(i)
    row(f"training steps (batch {plan.batch}, {args.steps} timed)", cfg.optim.steps,
        (time.perf_counter() - start) / args.steps)

    held_images, held_masks = heldout_batch(cfg, data, device)
    checkpoints = cfg.optim.steps // cfg.run.checkpoint_every + (cfg.optim.steps % cfg.run.checkpoint_every > 0)
    row(f"held-out scoring ({len(held_images)} images)", checkpoints,
        timed(lambda: evaluate_batch(state.model, held_images, held_masks), repeat=3))

    def figures() -> None:
        model = state.model.eval()
        with torch.no_grad():
            out = model(held_images[:8])
            samples = model.sample(8)
        decomposition_figure(held_images[:8], out.recon, out.log_masks, out.components, out.log_att_masks, "t")
        generation_figure(samples.images, samples.components, samples.log_masks, "t")
        model.train()

    figure_steps = cfg.optim.steps // cfg.run.image_every + (cfg.optim.steps % cfg.run.image_every > 0)
    row("figures (decomposition + samples)", figure_steps, timed(figures, repeat=3))
    row("checkpoints (state.pt + meta.json)", checkpoints, timed(
        lambda: save_checkpoint(str(work / "ckpt"), state.state_dict(), {"step": 1}), repeat=3))

    total_parts = sum(r["seconds"] for r in rows)
    print("\n| part | count | s each | s | share |\n|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['part']} | {r['count']} | {r['seconds_each']:.3f} | {r['seconds']:.1f} | "
              f"{r['seconds'] / total_parts:.0%} |")
    print(f"| sum of the parts | | | {total_parts:.1f} ({total_parts / 60:.1f} min) | |")
    if args.run:
        return run_whole_command(recorder, work, args.overrides, rows, total_parts)
    path = recorder.save({"rows": rows, "sum_of_parts_s": round(total_parts, 1), "whole_command_s": None,
                          "overrides": args.overrides})
    print(f"raw output: {path}")
    return 0


def run_whole_command(recorder: Recorder, work: Path, overrides: list[str], rows: list[dict],
                      total_parts: float | None) -> int:
    """`python -m genesis_dist.train *overrides` in a fresh folder, as a user runs it: its wall
    time, its held-out scores at every checkpoint and its last lines go into the record."""
    folder = work / "user"
    folder.mkdir()
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "genesis_dist.train", *overrides], cwd=folder,
                          capture_output=True, text=True)
    whole = time.perf_counter() - start
    if done.returncode != 0:
        print(done.stderr[-2000:], file=sys.stderr)
    last_lines = done.stdout.splitlines()[-8:]
    print("\n".join(last_lines), flush=True)
    heldout = []
    for history in sorted(folder.glob("runs/*/metrics.jsonl")):
        for line in history.read_text().splitlines():
            record = json.loads(line)
            if any(key.startswith("eval_") for key in record):
                heldout.append(record)
    print(f"| the whole command (`python -m genesis_dist.train`) | 1 | | {whole:.1f} ({whole / 60:.1f} min) | |")
    path = recorder.save({"rows": rows, "sum_of_parts_s": None if total_parts is None else round(total_parts, 1),
                          "whole_command_s": round(whole, 1), "exit_status": done.returncode,
                          "overrides": overrides, "heldout": heldout, "last_lines": last_lines})
    print(f"raw output: {path}")
    return done.returncode

if __name__ == "__main__":
    sys.exit(main())
