"""`python -m genesis_dist.data.inspect`: works, and its name does not shadow the stdlib's `inspect`."""
from __future__ import annotations

import subprocess
import sys
import sysconfig

import numpy as np
from PIL import Image

from genesis_dist.figures import PAD, ROW_LABEL_WIDTH, caption_height


def test_python_m_inspect_summarises_and_writes_a_grid(mds_shards, tmp_path):
    grid = tmp_path / "grid.png"
    result = subprocess.run([sys.executable, "-m", "genesis_dist.data.inspect", mds_shards, "--split", "test",
                             "--count", "4", "--grid", str(grid)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"{mds_shards}: multi_dsprites" in result.stdout and f"wrote {grid}" in result.stdout
    assert "test: 50 samples in 2 shards" in result.stdout
    # figures.dataset_figure: a caption line, an image row and a mask-overlay row of 4 cells (64 px → 128)
    expected = (caption_height(1) + PAD + 2 * (128 + PAD), ROW_LABEL_WIDTH + PAD + 4 * (128 + PAD), 3)
    assert np.asarray(Image.open(grid)).shape == expected

    missing = subprocess.run([sys.executable, "-m", "genesis_dist.data.inspect", str(tmp_path / "none")],
                             cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "no manifest.json" in missing.stderr


def test_the_module_does_not_shadow_the_standard_library_inspect(tmp_path):
    check = (
        "import sys, sysconfig, genesis_dist.data.inspect, inspect, dataclasses, torch\n"
        "assert inspect.__file__.startswith(sysconfig.get_paths()['stdlib']), inspect.__file__\n"
        "assert sys.modules['inspect'] is inspect and inspect.signature(torch.nn.Linear).parameters\n"
        "print('stdlib inspect')\n"
    )
    result = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout == "stdlib inspect\n", result.stderr
    assert sysconfig.get_paths()["stdlib"]  # the check above compares against a real folder
