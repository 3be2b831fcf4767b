"""Conversion throughput: `tools/shard.py images` on 640×480 JPEGs → 64 px and → 128 px, local
disk and S3 (moto), beside the paper datasets' converters, all measured in the same run.

    python benchmarks/convert_throughput.py                 # prints a markdown table, saves the raw record
    python benchmarks/convert_throughput.py --images 200 --rounds 1

Inputs are made from the repository's real photographs (tests/fixtures): 640×480 JPEGs
(quality 90) cut from the APC frame and the Sketchy camera frames, shifted and mirrored so
no two are alike, in nested folders. The paper converters run on copies of their fixture
samples: APC (640×480 PNG + mask → 128 px), ShapeStacks (224×224 PNG → 64 px), Sketchy
(episode records of two 960×600 JPEGs → 14 crops of 128 px) and Multi-dSprites (generated,
64 px). Every conversion writes a fresh shard set through `convert_dataset` (the CLI's path).

"per core" = source images / CPU-seconds of the conversion (this process and its worker
processes; the S3 server excluded): robust to other jobs on a shared machine, unlike the
wall-clock rate, which is printed beside it. Rows run in `--rounds` interleaved rounds
(every configuration once per round, the order reversed every other round); the table
holds the median. A "decode only" pair times `decode_photo` + the crop in this process,
full-resolution against the reduced-scale JPEG decode the converter uses.

The raw rows go to benchmarks/results/convert_throughput-<UTC time>.json (record.py).
"""
from __future__ import annotations

import argparse
import io
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the moto server helper lives with the tests
sys.path.insert(0, str(REPO / "benchmarks"))

from record import Recorder, load_average  # noqa: E402
from s3_server import MotoServer  # noqa: E402

from genesis_dist.data.convert import ConversionReport, convert_dataset  # noqa: E402
from genesis_dist.data.formats.apc import APC  # noqa: E402
from genesis_dist.data.formats.images import ImageFolder  # noqa: E402
from genesis_dist.data.formats.imaging import decode_photo, shorter_side_centre_crop  # noqa: E402
from genesis_dist.data.formats.multi_dsprites import MultiDSprites  # noqa: E402
from genesis_dist.data.formats.shapestacks import ShapeStacks  # noqa: E402
from genesis_dist.data.formats.sketchy import Sketchy  # noqa: E402
from genesis_dist.data.tfrecord import iter_records, parse_example  # noqa: E402
from genesis_dist.storage import filesystem  # noqa: E402

FIXTURES = REPO / "tests" / "fixtures"
APC_SCENE = FIXTURES / "apc" / "scene-0000"
SCENARIO = "env_ccs-easy-h=5-vcom=2-vpsf=0-v=1"


def cpu_seconds() -> float:
    """CPU time of this process and its reaped children (the conversion's worker processes)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def real_frames() -> list[np.ndarray]:
    """The repository's real photographs as RGB arrays: the APC frame and the Sketchy front cameras."""
    frames = [np.asarray(Image.open(APC_SCENE / "frame-000000.color.png").convert("RGB"))]
    for record in iter_records(str(FIXTURES / "sketchy" / "example_data.tfrecords")):
        features = parse_example(record)
        for camera in ("front_left", "front_right"):
            frames.append(np.asarray(Image.open(io.BytesIO(features[f"pixels/basket_{camera}"][0])).convert("RGB")))
    return frames


def write_jpegs(folder: Path, count: int) -> None:
    """`count` distinct 640×480 JPEGs (quality 90) in 10 nested folders."""
    frames = real_frames()
    for index in range(count):
        frame = frames[index % len(frames)]
        height, width = frame.shape[:2]
        top = (index * 7) % (height - 480 + 1) if height > 480 else 0
        left = (index * 13) % (width - 640 + 1) if width > 640 else 0
        crop = frame[top: top + 480, left: left + 640]
        if (index // len(frames)) % 2:
            crop = crop[:, ::-1]
        path = folder / f"session_{index % 10}" / f"day_{index % 3}" / f"{index:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(crop)).save(path, quality=90)


def apc_layout(root: Path, count: int) -> None:
    """`count` APC scenes, each the real frame with a mask cut from its segm.png."""
    segm = np.asarray(Image.open(APC_SCENE / "frame-000000.segm.png")) == 114
    colour = (APC_SCENE / "frame-000000.color.png").read_bytes()
    buffer = io.BytesIO()
    Image.fromarray(segm.astype(np.uint8) * 255).save(buffer, format="PNG")
    for index in range(count):
        scene = root / "shelf" / "kleenex_tissue_box" / f"scene-{index:04d}"
        (scene / "masks").mkdir(parents=True)
        (scene / "frame-000000.color.png").write_bytes(colour)
        (scene / "masks" / "frame-000000.mask.png").write_bytes(buffer.getvalue())


def shapestacks_layout(root: Path, count: int) -> None:
    """`count` scenarios, each the real one's two camera views."""
    source = FIXTURES / "shapestacks" / "recordings" / SCENARIO
    for index in range(count):
        target = root / "recordings" / SCENARIO.replace("v=1", f"v={index + 1}")
        target.mkdir(parents=True)
        for frame in source.glob("rgb-*-mono-0.png"):
            (target / frame.name).write_bytes(frame.read_bytes())


def sketchy_layout(root: Path, count: int) -> None:
    """`count` episode files, each the real 4-timestep excerpt."""
    root.mkdir(parents=True)
    data = (FIXTURES / "sketchy" / "example_data.tfrecords").read_bytes()
    for index in range(count):
        (root / f"episode_{index:04d}").write_bytes(data)


def timed(converter, out_url: str, workers: int, storage_options: dict | None) -> dict:
    """Convert into a fresh `out_url`: source items, samples, wall seconds, CPU seconds."""
    cpu_before, started = cpu_seconds(), time.perf_counter()
    report = ConversionReport()
    manifest = convert_dataset(converter, out_url, workers=workers, progress=False, storage_options=storage_options,
                               report=report, on_error="fail")
    wall, cpu = time.perf_counter() - started, cpu_seconds() - cpu_before
    samples = sum(record["count"] for record in manifest["splits"].values())
    return {"items": report.converted, "samples": samples, "wall_s": wall, "cpu_s": cpu}


def decode_only(jpegs: list[bytes], size: int, reduced: bool) -> float:
    """Images per CPU-second of decode_photo + crop in this process (one core)."""
    started = time.process_time()
    for data in jpegs:
        shorter_side_centre_crop(decode_photo(data, min_side=2 * size if reduced else None).rgb, size)
    return len(jpegs) / (time.process_time() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=400, help="640×480 JPEGs per own-images conversion")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)), help="conversion processes")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--paper-items", type=int, default=60, help="source items of each paper converter")
    args = parser.parse_args()
    recorder = Recorder("convert_throughput")

    with tempfile.TemporaryDirectory() as folder, MotoServer() as server:
        work = Path(folder)
        write_jpegs(work / "photos", args.images)
        apc_layout(work / "apc", args.paper_items)
        shapestacks_layout(work / "shapestacks", args.paper_items // 2)
        sketchy_layout(work / "sketchy", max(1, args.paper_items // 4))
        bucket = server.create_bucket("convert-bench")
        fs, _ = filesystem(bucket, server.storage_options)
        fs.put(str(work / "photos") + "/", "convert-bench/photos", recursive=True)
        options = server.storage_options

        configurations = [
            ("own images, 640×480 JPEG → 64 px", "local", lambda: ImageFolder(str(work / "photos"), 64), None),
            ("own images, 640×480 JPEG → 64 px", "S3 (moto) → S3",
             lambda: ImageFolder(f"{bucket}/photos", 64, storage_options=options), options),
            ("own images, 640×480 JPEG → 128 px", "local", lambda: ImageFolder(str(work / "photos"), 128), None),
            ("own images, 640×480 JPEG → 128 px", "S3 (moto) → S3",
             lambda: ImageFolder(f"{bucket}/photos", 128, storage_options=options), options),
            ("APC, 640×480 PNG + mask → 128 px", "local", lambda: APC(str(work / "apc")), None),
            ("ShapeStacks, 224×224 PNG → 64 px", "local",
             lambda: ShapeStacks(str(work / "shapestacks"), split_set=None), None),
            ("Sketchy, record of 2 × 960×600 JPEG → 14 × 128 px", "local", lambda: Sketchy(str(work / "sketchy")), None),
            ("Multi-dSprites, generated → 64 px", "local",
             lambda: MultiDSprites({"train": args.paper_items * 4}, img_size=64), None),
        ]
        for name, where, make, storage_options in configurations[:2]:  # imports and S3 clients warmed, untimed
            out = f"{bucket}/warm-up" if storage_options else str(work / "warm-up")
            convert_dataset(make(), out, workers=args.workers, limit=10, progress=False, storage_options=storage_options)
        rows: dict[tuple[str, str], list[dict]] = {(name, where): [] for name, where, _, _ in configurations}
        for round_index in range(args.rounds):
            order = configurations if round_index % 2 == 0 else configurations[::-1]
            for run_index, (name, where, make, storage_options) in enumerate(order):
                out = (f"{bucket}/out/{round_index}-{run_index}" if storage_options
                       else str(work / "out" / f"{round_index}-{run_index}"))
                result = timed(make(), out, args.workers, storage_options)
                rows[(name, where)].append(result)
                print(f"round {round_index + 1} {name} [{where}]: {result['items']} items, {result['wall_s']:.1f} s, "
                      f"{result['items'] / result['cpu_s']:.1f} per CPU-second", flush=True)

        jpegs = [p.read_bytes() for p in sorted((work / "photos").rglob("*.jpg"))[:100]]
        decode = {f"{size} px, {'reduced-scale' if reduced else 'full'} JPEG decode": decode_only(jpegs, size, reduced)
                  for size in (64, 128) for reduced in (False, True)}

    table = ["| conversion | storage | source items/s per core | images/s per core | wall-clock items/s "
             f"({args.workers} processes) |", "|---|---|---:|---:|---:|"]
    summary = []
    for (name, where), results in rows.items():
        per_core = statistics.median(r["items"] / r["cpu_s"] for r in results)
        samples_per_core = statistics.median(r["samples"] / r["cpu_s"] for r in results)
        wall = statistics.median(r["items"] / r["wall_s"] for r in results)
        table.append(f"| {name} | {where} | {per_core:,.0f} | {samples_per_core:,.0f} | {wall:,.0f} |")
        summary.append({"conversion": name, "storage": where, "items_per_cpu_s": per_core,
                        "samples_per_cpu_s": samples_per_core, "items_per_wall_s": wall, "runs": results})
    decode_table = ["| decode + crop, one core | images/s |", "|---|---:|",
                    *(f"| {name} | {rate:,.0f} |" for name, rate in decode.items())]
    print("\n".join(table) + "\n\n" + "\n".join(decode_table))
    print(f"load average at the end: {load_average()}")
    path = recorder.save({"images": args.images, "workers": args.workers, "rounds": args.rounds,
                          "paper_items": args.paper_items, "rows": summary, "decode_only": decode,
                          "table": "\n".join(table), "decode_table": "\n".join(decode_table)})
    print(f"raw record: {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
