"""Every baseline through the commands, on a real local Ray cluster: `python -m
genesis_dist.train model=NAME` trains a few steps, `python -m genesis_dist.evaluate`
evaluates its checkpoints (Slot Attention: segmentation and MSE, no ELBO or FID)."""
from __future__ import annotations

import json

import pytest


from tiny_config import TINY  # noqa: E402

from genesis_dist import evaluate as evaluate_cli  # noqa: E402
from genesis_dist import train as train_cli  # noqa: E402

pytestmark = pytest.mark.integration  # the Ray-heavy tier: python -m pytest --integration


BASELINES = ("monet", "slot_attention", "bd_vae", "dc_vae")


@pytest.fixture(scope="module")
def cluster():
    import ray_local

    ray_local.start(num_cpus=2)
    yield
    ray_local.stop()


@pytest.mark.parametrize("name", BASELINES)
def test_baseline_trains_through_the_train_command_and_is_evaluated(name, cluster, shards, tmp_path, capsys):
    args = [f"model={name}", *TINY, f"data.url={shards}", f"run.storage_path={tmp_path}", "optim.steps=2",
            "run.eval_images=4"]
    assert train_cli.main(args) == 0, capsys.readouterr().err
    run = tmp_path / f"{name}-multi_dsprites"
    assert (run / "checkpoint_00000002" / "meta.json").exists() and (run / "finished.json").exists()
    status = evaluate_cli.main(["--run", str(run), "actors=1", "fid_samples=0", "segmentation_images=4",
                                "batch_size=4"])
    assert status == 0, capsys.readouterr().err
    record = json.loads((run / "eval" / "00000002.json").read_text())
    assert record["model"] == name and record["segmentation_images"] == 4
    assert -1.0 <= record["ari_fg"] <= 1.0
    if name == "slot_attention":
        assert "mse" in record and "elbo" not in record and not (run / "eval" / "figures" / "generation_00000002.png").exists()
    else:
        assert record["elbo"] == pytest.approx(-(record["err"] + record["kl"]), rel=1e-6)
