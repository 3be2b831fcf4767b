"""Raw results of a benchmark run, committed under `benchmarks/results/` so every table in
RESULTS.md can be re-derived: the command, git sha, date, the machine (CPU model, cores,
memory, load average before and after) and library versions, then the script's own rows.

Torch-only at import (the GPU machine has no Ray): versions of other libraries are read
from package metadata, never imported.

    from record import Recorder          # benchmarks/ is the script's folder
    recorder = Recorder("vs_authors")
    ...
    recorder.save({"rows": rows})        # → benchmarks/results/vs_authors-<date>.json

`--results-dir` style overrides: set `GENESIS_BENCH_RESULTS` to write elsewhere.

A script that keeps no record of its own runs under this one, which saves its whole output
(stdout and stderr, as printed) and exit status beside the same context:

    python benchmarks/record.py python benchmarks/data_throughput.py [ARGS...]
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages (None where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def git_sha() -> str | None:
    """HEAD of the repository the script runs from, with `+dirty` when files differ."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def versions() -> dict[str, str | None]:
    """Installed versions of the libraries whose speed the numbers depend on."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for package in ("torch", "torchvision", "ray", "numpy", "webdataset", "pillow", "s3fs"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


def gpu_name() -> str | None:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001 - a description, never a failure
        return None


class Recorder:
    """Collects the context of one benchmark run at its start; `save` adds the results and the
    load average at the end and writes `results/<name>-<UTC timestamp>.json`."""

    def __init__(self, name: str, argv: list[str] | None = None):
        self.name = name
        argv = sys.argv if argv is None else argv
        self.started = _dt.datetime.now(_dt.timezone.utc)
        self.context: dict[str, Any] = {
            "benchmark": name,
            "command": "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(argv[0])] + list(argv[1:])),
            "git_sha": git_sha(),
            "date": self.started.isoformat(timespec="seconds"),
            "machine": {"cpu": cpu_model(), "cores": usable_cores(), "memory_gib": memory_gib(),
                        "gpu": gpu_name(), "platform": platform.platform(),
                        "load_average_before": load_average()},
            "versions": versions(),
        }

    def save(self, results: dict[str, Any], out_dir: str | os.PathLike | None = None) -> Path:
        """Write the record; returns its path (printed by the caller so a reader can find it)."""
        record = dict(self.context)
        record["machine"] = dict(record["machine"], load_average_after=load_average())
        record["seconds"] = round((_dt.datetime.now(_dt.timezone.utc) - self.started).total_seconds(), 1)
        record["results"] = results
        folder = Path(out_dir or os.environ.get("GENESIS_BENCH_RESULTS") or RESULTS_DIR)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.name}-{self.started.strftime('%Y%m%dT%H%M%SZ')}.json"
        path.write_text(json.dumps(record, indent=1, default=str) + "\n")
        return path


def record_command(command: list[str]) -> int:
    """Run `command`, echoing its output line by line, and save that output and its exit status
    as the results of a record named after the script (`data_throughput-<date>.json`)."""
    if "-m" in command[:-1]:  # python -m pytest tests/test_x.py: the module, then the first file it is given
        module = command[command.index("-m") + 1].split(".")[-1]
        files = [Path(a).stem for a in command[command.index("-m") + 2:] if a.endswith(".py")]
        script = "-".join([module, *files[:1]])
    else:
        script = next((Path(a).stem for a in command if a.endswith(".py")), Path(command[0]).name)
    recorder = Recorder(script, argv=command)
    recorder.context["command"] = " ".join(shlex.quote(a) for a in command)
    lines: list[str] = []
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as process:
        for line in process.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            lines.append(line.rstrip("\n"))
    path = recorder.save({"exit_status": process.returncode, "output": lines})
    print(f"[record] raw output: {path}", flush=True)
    return process.returncode


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python benchmarks/record.py COMMAND [ARGS...]")
    sys.exit(record_command(sys.argv[1:]))
