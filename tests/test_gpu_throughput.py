"""benchmarks/gpu_throughput.py runs with torch alone (the GPU machines have no Ray, OmegaConf
or webdataset): a CPU row, in a fresh interpreter where importing those fails."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROGRAM = """
import importlib.abc, sys
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("omegaconf", "ray", "webdataset", "fsspec", "s3fs", "yaml"):
            raise ImportError("not on the GPU machine: " + name)
sys.meta_path.insert(0, Refuse())
sys.argv = ["gpu_throughput.py", "--device", "cpu", "--models", "genesis_v2", "--modes", "eager",
            "--batches", "2", "--steps", "1", "--warmup", "1", "--markdown"]
import runpy
runpy.run_path(sys.argv_path, run_name="__main__")
"""


def test_cpu_row_runs_with_torch_alone():
    program = PROGRAM.replace("sys.argv_path", repr(str(ROOT / "benchmarks" / "gpu_throughput.py")))
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    row = [line for line in result.stdout.splitlines() if line.startswith("| genesis_v2 | fp32 | eager | 2 |")]
    assert len(row) == 1, result.stdout
    img_per_s = float(row[0].split("|")[5].replace(",", ""))
    assert img_per_s > 0
    assert "GPU busy" in result.stdout and "CPU only" in result.stdout
