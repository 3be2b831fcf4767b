"""Every `python -m genesis_dist.*` command in README.md, as written: it composes what
the README says it trains (model, image size, K, GECO goal, steps, run name), the model
builds and takes a training step; the README's model snippet runs."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from genesis_dist import train as train_cli
from genesis_dist.config import load_config, load_eval_config
from genesis_dist.training.loop import train_step
from genesis_dist.training.run import build_state

README = Path(__file__).resolve().parents[1] / "README.md"

# What each README training command must compose:
# (model, image size, K, GECO goal per pixel, steps, run name)
TRAIN_EXPECTED = {
    "": ("genesis_v2", 32, 5, 0.5655, 4000, "genesis_v2-multi_dsprites-demo"),
    "model=genesis data=shapestacks optim.lr=1e-4": ("genesis", 64, 9, 0.5655, 500_000, "genesis-shapestacks"),
    "data=objects_room data.url=s3://bucket/objects_room run.storage_path=s3://bucket/runs scaling.num_workers=8 "
    "optim.precision=bf16": ("genesis_v2", 64, 7, 0.5655, 500_000, "genesis_v2-objects_room"),
    "model=genesis_s --print-config": ("genesis_s", 64, 5, 0.5655, 500_000, "genesis_s-multi_dsprites"),
    "--config runs/genesis-shapestacks/config.yaml optim.steps=1000000":
        ("genesis", 64, 9, 0.5655, 1_000_000, "genesis-shapestacks"),
    "data=objects_room data.url=s3://YOUR-BUCKET/objects_room run.storage_path=s3://YOUR-BUCKET/runs "
    "scaling.num_workers=8": ("genesis_v2", 64, 7, 0.5655, 500_000, "genesis_v2-objects_room"),
    "data=objects_room data.url=s3://YOUR-BUCKET/objects_room run.storage_path=s3://YOUR-BUCKET/runs "
    "scaling.num_workers=[4,8] data.num_workers=null": ("genesis_v2", 64, 7, 0.5655, 500_000, "genesis_v2-objects_room"),
    "--config runs/tune-geco_kernels-genesis_v2-multi_dsprites-demo/best.yaml optim.steps=10000":
        ("genesis_v2", 32, 5, 0.5705, 10000, "1a2b3_00004"),
    "data.url=$PWD/data/multi_dsprites_32px data.generate_if_missing=true run.storage_path=$PWD/runs optim.steps=200 "
    "scaling.num_workers=[1,2] scaling.cpus_per_worker=1 scaling.resources_per_worker.rehearsal_gpu=1":
        ("genesis_v2", 32, 5, 0.5655, 200, "genesis_v2-multi_dsprites-demo"),
}
# What each README sweep command must compose: (model, data, K, trials, metric, scheduler)
TUNE_EXPECTED = {
    "": ("genesis_v2", "multi_dsprites", 5, 9, "eval_ari_fg", "asha"),
    "sweep.metric=eval_elbo sweep.scheduler=fifo optim.steps=1000":
        ("genesis_v2", "multi_dsprites", 5, 9, "eval_elbo", "fifo"),
    "data=shapestacks data.url=s3://bucket/shapestacks run.storage_path=s3://bucket/runs scaling.num_workers=4 "
    "sweep.max_concurrent_trials=2": ("genesis_v2", "shapestacks", 9, 9, "eval_ari_fg", "asha"),
    "data=objects_room data.url=s3://YOUR-BUCKET/objects_room run.storage_path=s3://YOUR-BUCKET/runs":
        ("genesis_v2", "objects_room", 7, 9, "eval_ari_fg", "asha"),
}


def readme_commands(module: str) -> list[list[str]]:
    """Argument lists of every `python -m genesis_dist.<module>` line in README's bash
    blocks (continuation lines joined, comments dropped, `ray job submit ... --` stripped)."""
    text = README.read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            marker = ["python", "-m", f"genesis_dist.{module}"]
            for i in range(len(words) - 2):
                if words[i:i + 3] == marker:
                    commands.append(words[i + 3:])
    return commands


def test_the_readme_has_the_commands_this_test_knows():
    found = {" ".join(args) for args in readme_commands("train")}
    found.discard("--help")
    assert found == set(TRAIN_EXPECTED), f"README train commands changed: {found ^ set(TRAIN_EXPECTED)}"


@pytest.mark.parametrize("args", sorted(TRAIN_EXPECTED))
def test_each_readme_training_command_trains_what_it_says(args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if "best.yaml" in args:
        # What a sweep of the demo leaves: the best trial's resolved config.
        stored = tmp_path / "runs" / "tune-geco_kernels-genesis_v2-multi_dsprites-demo" / "best.yaml"
        stored.parent.mkdir(parents=True)
        stored.write_text(OmegaConf.to_yaml(load_config(["objective.goal=0.5705", "run.name=1a2b3_00004"])))
    if "--config runs/genesis-shapestacks/config.yaml" in args:
        # What a `model=genesis data=shapestacks` run leaves in its folder.
        stored = tmp_path / "runs" / "genesis-shapestacks" / "config.yaml"
        stored.parent.mkdir(parents=True)
        stored.write_text(OmegaConf.to_yaml(load_config(["model=genesis", "data=shapestacks"])))
    overrides, config_file, print_only = train_cli._parse_args(shlex.split(args))
    assert print_only == ("--print-config" in args)
    cfg = load_config(overrides, base_file=config_file)
    model, size, slots, goal, steps, name = TRAIN_EXPECTED[args]
    got = (cfg.model.name, cfg.model.img_size, cfg.model.num_slots, cfg.objective.goal, cfg.optim.steps, cfg.run.name)
    assert got == (model, size, slots, goal, steps, name)
    # The model builds and takes one training step (fp32 on the CPU) on tiny generated data.
    state = build_state(cfg, torch.device("cpu"))
    images = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    metrics = train_step(state.model, state.objective, state.optimizer, images, channels_last=cfg.optim.channels_last)
    assert torch.isfinite(metrics["loss"])


def test_print_config_prints_and_exits_without_training(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert train_cli.main(["model=genesis_s", "--print-config"]) == 0
    printed = OmegaConf.create(capsys.readouterr().out)
    assert printed.model.name == "genesis_s" and printed.run.name == "genesis_s-multi_dsprites"
    assert not (tmp_path / "runs").exists()


def test_help_is_exit_zero(capsys):
    assert ["--help"] in readme_commands("train")
    assert train_cli.main(["--help"]) == 0
    assert "python -m genesis_dist.train" in capsys.readouterr().out


def test_each_readme_evaluation_command_parses():
    from genesis_dist.evaluate import _parse

    commands = readme_commands("evaluate")
    assert len(commands) >= 4
    for args in commands:
        if args[0] == "compare":
            assert len(args) >= 2
            continue
        cfg = load_eval_config(_parse(args))
        assert cfg.run


def test_the_readme_model_snippet_runs():
    (snippet,) = [b for b in re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S) if "build_model" in b]
    namespace: dict = {}
    exec(compile(snippet, "README.md", "exec"), namespace)  # noqa: S102
    out = namespace["out"]
    assert out.err.shape == (8,) and out.log_masks.shape[:2] == (8, 7)
    assert namespace["samples"].images.shape == (16, 3, 64, 64)


def test_the_readme_sweep_commands_are_the_ones_this_test_knows():
    assert {" ".join(args) for args in readme_commands("tune")} == set(TUNE_EXPECTED)


@pytest.mark.parametrize("args", sorted(TUNE_EXPECTED))
def test_each_readme_sweep_command_composes_what_it_says(args):
    """The sweep's training config and search space, as `python -m genesis_dist.tune`
    checks them before any trial (the data itself is not needed for this)."""
    from genesis_dist import tune as tune_cli
    from genesis_dist.tuning.space import grid_size, load_space_file, merge_sweep, resolve_space

    space, sweep_overrides, train_overrides = tune_cli._parse(shlex.split(args))
    base = load_config(train_overrides)
    sweep, raw = load_space_file(space)
    sweep = merge_sweep(sweep, sweep_overrides, "override")
    dimensions = resolve_space(raw, base)
    model, data, slots, trials, metric, scheduler = TUNE_EXPECTED[args]
    assert (base.model.name, base.data.name, base.model.num_slots) == (model, data, slots)
    assert (grid_size(dimensions, sweep.num_samples), sweep.metric, sweep.scheduler) == (trials, metric, scheduler)
    goals = next(d.values for d in dimensions if d.key == "objective.goal")
    assert goals[0] == base.objective.goal  # the sweep starts at the dataset's paper goal


def test_the_readme_rehearsal_commands_are_the_tools_and_reach_its_cluster():
    """`python tools/local_cluster.py up|down` parse as the tool parses them, and the job
    is submitted to the dashboard address `up` gives by default, with token authentication."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("local_cluster", README.parent / "tools" / "local_cluster.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    (block,) = [b for b in re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S) if "local_cluster.py" in b]
    lines = [shlex.split(line, comments=True) for line in block.replace("\\\n", " ").splitlines()]
    actions = [tool.parser().parse_args(words[2:]).command for words in lines if words[:2] == ["python", "tools/local_cluster.py"]]
    assert actions == ["up", "down"]
    (submit,) = [words for words in lines if "submit" in words]
    default_port = tool.parser().parse_args(["up"]).dashboard_port
    assert submit[:3] == ["RAY_AUTH_MODE=token", "ray", "job"]
    assert submit[submit.index("--address") + 1] == f"http://127.0.0.1:{default_port}"
    assert submit[submit.index("--working-dir") + 1] == "."
    assert f"scaling.resources_per_worker.{tool.GPU_RESOURCE}=1" in submit
