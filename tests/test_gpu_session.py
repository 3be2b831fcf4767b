"""benchmarks/gpu_session.sh, the one prepared GPU session, runs with torch alone (the GPU
machines have no Ray, OmegaConf or webdataset): its --smoke form on a CPU, where every Python
process it starts refuses to import those, prints the throughput row and the recipe's curve
and saves both scripts' raw JSON where $OUT points."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

REFUSE = """
import importlib.abc, sys
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("omegaconf", "ray", "webdataset", "s3fs", "yaml"):
            raise ImportError("not on the GPU machine: " + name)
sys.meta_path.insert(0, Refuse())
"""


@pytest.mark.integration  # a benchmark script, not a module of the package; ~16 s
def test_the_gpu_session_runs_with_torch_alone_and_saves_its_results(tmp_path):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(REFUSE)  # loaded by every python it starts
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "PYTHONPATH": str(tmp_path / "site")}
    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_session.sh"), "--smoke"], capture_output=True,
                            text=True, timeout=900, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    text = result.stdout
    assert "not on the GPU machine" not in text
    row = [line for line in text.splitlines() if line.startswith("| genesis_v2 | fp32 | eager | 2 |")]
    assert len(row) == 1, text
    assert float(row[0].split("|")[5].replace(",", "")) > 0  # img/s
    assert "GPU busy" in text and "CPU only" in text
    curve = [line for line in text.splitlines() if line.startswith("| 0.")]
    assert curve, text  # the recipe's table: one row per report
    saved = {p.name.split("-")[0]: p for p in out.iterdir()}
    assert set(saved) >= {"gpu_throughput", "gpu_recipe", "gpu_session"}
    throughput = json.loads(saved["gpu_throughput"].read_text())
    assert throughput["results"]["rows"][0]["img_per_s"] > 0 and throughput["machine"]["cores"] >= 1
    recipe = json.loads(saved["gpu_recipe"].read_text())["results"]
    assert recipe["settings"]["num_slots"] == 5 and recipe["settings"]["lr"] == 1e-4
    point = recipe["curve"][-1]
    for key in ("heldout_ari_fg_decoder", "heldout_ari_fg_attention", "heldout_elbo", "img_per_s"):
        assert key in point
    assert point["heldout_elbo"] == -(point["heldout_err"] + point["heldout_kl"]) or \
        abs(point["heldout_elbo"] + point["heldout_err"] + point["heldout_kl"]) < 1e-6 * abs(point["heldout_elbo"])
    assert set(recipe["trivial_answers"]) >= {"one_slot", "colour"}
    assert "gpu_recipe" in saved["gpu_session"].read_text()  # the log holds both scripts' output


def test_the_recipe_is_the_papers_multi_dsprites_setting():
    """gpu_recipe.py cannot read the configs (no OmegaConf on the GPU machine): its constants
    must equal what `model=genesis_v2 data=multi_dsprites` composes."""
    from genesis_dist.config import load_config

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_recipe
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    cfg = load_config(["model=genesis_v2", "data=multi_dsprites"])
    assert (gpu_recipe.IMG_SIZE, gpu_recipe.NUM_SLOTS) == (cfg.model.img_size, cfg.model.num_slots) == (64, 5)
    assert gpu_recipe.GECO_GOAL == cfg.objective.goal and cfg.objective.name == "geco"
    assert (gpu_recipe.LR, gpu_recipe.BATCH) == (cfg.optim.lr, cfg.optim.batch_size) == (1e-4, 32)
    assert not any(cfg.curriculum.get(k) for k in ("pixel_std_from", "mask_guidance", "colour_hint"))
