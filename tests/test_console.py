"""What the train command shows (genesis_dist/console.py, training/progress.py): the
header, the progress bar or lines, the held-out lines, the closing line; nothing twice and
no error-level line from Ray, checked on a real run of the command."""
from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from collections import Counter

from genesis_dist.console import ProgressView
from genesis_dist.training.progress import heldout_event, step_event, tick_event
from tiny_config import TINY


def test_the_command_shows_a_header_progress_and_its_closing_line_once_each(shards, tmp_path):
    """The demo command (its curriculum included) on a tiny model, as a user runs it with the
    output going to a file (no terminal: plain lines instead of a bar)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "GENESIS_DIST_DEBUG")}
    args = [*TINY, f"data.url={shards}", f"run.storage_path={tmp_path / 'runs'}", "optim.steps=8",
            "run.log_every=2", "run.checkpoint_every=4"]
    done = subprocess.run([sys.executable, "-m", "genesis_dist.train", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    repeated = {line: n for line, n in Counter(lines).items() if n > 1}
    assert repeated == {}, repeated
    assert not [line for line in lines if re.search(r"\bERROR\b| E \d{4}|^E\d{4}|Traceback", line)], lines
    assert lines[0].startswith("[genesis-dist] GENESIS-V2 (genesis_v2), ") and "32 px, K=3" in lines[0]
    assert any(line.startswith("[genesis-dist] data: multi_dsprites at ") and "with masks" in line for line in lines)
    assert any("1 worker × 8 images per step, 8 steps, fp32 on CPUs" in line for line in lines)
    assert any(line.startswith("[genesis-dist] Ray dashboard: http://127.0.0.1:") for line in lines)
    assert [line for line in lines if re.match(r"\[genesis-dist\] step \d+/8 ", line)]  # plain lines, no bar
    assert any(line.startswith("[genesis-dist] held-out (8 images): step 4, ") for line in lines)
    assert re.match(r"\[genesis-dist\] held-out \(8 images\): step 8, err .* ARI-FG .* attention masks ARI-FG .* — "
                    r"open .*decomposition_00000008\.png$", lines[-1]), lines[-1]
    header = lines[: next(i for i, line in enumerate(lines) if "Ray dashboard" in line) + 1]
    assert len(header) <= 10, header
    assert not [line for line in lines if line.startswith(("(RayTrainWorker", "(TrainController", "Reporting training"))]
    assert "Token authentication is enabled" not in done.stderr and "PreemptionWatcher" not in done.stderr


def test_a_terminal_gets_one_bar_with_eta_and_the_losses():
    out, bar_stream = io.StringIO(), io.StringIO()
    view = ProgressView(total=100, bar=True, out=out, bar_out=bar_stream)
    view.show(tick_event(10))
    view.show(step_event(20, 100, {"err": 1234.5, "kl": 67.8, "beta": 0.001, "img_per_s": 42.0}))
    view.show(heldout_event(50, {"images": 8, "err": 1.0, "kl": 2.0, "elbo": -3.0}))
    view.show(heldout_event(100, {"images": 8, "err": 1.0, "kl": 2.0, "elbo": -3.0}))  # left to the closing line
    assert view.bar.n == 20
    view.close()
    drawn = bar_stream.getvalue()
    assert "20/100" in drawn and "err=1234.5" in drawn and "KL=67.8" in drawn and "β=0.001" in drawn
    assert re.search(r"<\d\d:\d\d", drawn)  # the ETA
    assert out.getvalue().count("held-out") == 1 and "step 50," in out.getvalue()
