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
from PIL import Image

from genesis_dist import train as train_cli
from genesis_dist.config import load_config, load_eval_config
from genesis_dist.training.loop import train_step
from genesis_dist.training.run import RankPlan, build_state

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
    "--config runs/tune-demo_aids-genesis_v2-multi_dsprites-demo/best.yaml optim.steps=10000":
        ("genesis_v2", 32, 5, 0.5705, 10000, "1a2b3_00004"),
    "data=images data.url=shards/photos": ("genesis_v2", 64, 7, 0.5655, 500_000, "genesis_v2-images"),
    "--config runs/genesis_v2-objects_room-release/config.yaml data.url=s3://YOUR-BUCKET/my_scenes optim.steps=550001":
        ("genesis_v2", 64, 7, 0.5655, 550_001, "genesis_v2-objects_room-release"),
    "data.url=$PWD/data/multi_dsprites_32px data.generate_if_missing=true run.storage_path=$PWD/runs optim.steps=200 "
    "scaling.num_workers=[1,2] scaling.cpus_per_worker=1 scaling.resources_per_worker.rehearsal_gpu=1":
        ("genesis_v2", 32, 5, 0.5655, 200, "genesis_v2-multi_dsprites-demo"),
}
# What each README sweep command must compose: (model, data, K, space, trials, metric, scheduler)
TUNE_EXPECTED = {
    "": ("genesis_v2", "multi_dsprites", 5, "demo_aids", 9, "eval_ari_fg_att", "asha"),
    "sweep.metric=eval_elbo sweep.scheduler=fifo optim.steps=1000":
        ("genesis_v2", "multi_dsprites", 5, "demo_aids", 9, "eval_elbo", "fifo"),
    "data=shapestacks data.url=s3://bucket/shapestacks run.storage_path=s3://bucket/runs scaling.num_workers=4 "
    "sweep.max_concurrent_trials=2": ("genesis_v2", "shapestacks", 9, "geco_kernels", 9, "eval_ari_fg", "asha"),
    "data=objects_room data.url=s3://YOUR-BUCKET/objects_room run.storage_path=s3://YOUR-BUCKET/runs":
        ("genesis_v2", "objects_room", 7, "geco_kernels", 9, "eval_ari_fg", "asha"),
}


def readme_commands(module: str, marker: list[str] | None = None) -> list[list[str]]:
    """Argument lists of every `python -m genesis_dist.<module>` line (or of every line
    starting with `marker`, e.g. ["python", "tools/shard.py"]) in README's bash blocks
    (continuation lines joined, comments dropped, `ray job submit ... --` stripped)."""
    text = README.read_text()
    marker = marker or ["python", "-m", f"genesis_dist.{module}"]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            for i in range(len(words) - len(marker) + 1):
                if words[i:i + len(marker)] == marker:
                    commands.append(words[i + len(marker):])
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
        stored = tmp_path / "runs" / "tune-demo_aids-genesis_v2-multi_dsprites-demo" / "best.yaml"
        stored.parent.mkdir(parents=True)
        stored.write_text(OmegaConf.to_yaml(load_config(["objective.goal=0.5705", "run.name=1a2b3_00004"])))
    if "--config runs/genesis-shapestacks/config.yaml" in args:
        # What a `model=genesis data=shapestacks` run leaves in its folder.
        stored = tmp_path / "runs" / "genesis-shapestacks" / "config.yaml"
        stored.parent.mkdir(parents=True)
        stored.write_text(OmegaConf.to_yaml(load_config(["model=genesis", "data=shapestacks"])))
    if "-release/config.yaml" in args:
        # What `python -m genesis_dist.import_model released/genesis_v2-objects_room` leaves.
        import_released("genesis_v2-objects_room")
    overrides, config_file, print_only, _ = train_cli._parse_args(shlex.split(args))
    assert print_only == ("--print-config" in args)
    cfg = load_config(overrides, base_file=config_file)
    model, size, slots, goal, steps, name = TRAIN_EXPECTED[args]
    got = (cfg.model.name, cfg.model.img_size, cfg.model.num_slots, cfg.objective.goal, cfg.optim.steps, cfg.run.name)
    assert got == (model, size, slots, goal, steps, name)
    # The model builds and takes one training step (fp32 on the CPU) on tiny generated data.
    state = build_state(cfg, RankPlan.single(cfg, torch.device("cpu")))
    images = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    metrics = train_step(state.model, state.objective, state.optimizer, images, step=1,
                         channels_last=cfg.optim.channels_last)
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
    model, data, slots, space_name, trials, metric, scheduler = TUNE_EXPECTED[args]
    assert (base.model.name, base.data.name, base.model.num_slots, space) == (model, data, slots, space_name)
    assert (grid_size(dimensions, sweep.num_samples), sweep.metric, sweep.scheduler) == (trials, metric, scheduler)
    if space == "geco_kernels":
        goals = next(d.values for d in dimensions if d.key == "objective.goal")
        assert goals[0] == base.objective.goal  # the sweep starts at the dataset's paper goal
    else:  # the demo's: every trial changes what is trained (no axis inert under its β floor)
        assert {d.key for d in dimensions} == {"curriculum.colour_hint", "model.kernel"}


def test_the_layout_names_every_folder_and_top_level_module_and_nothing_else():
    """README's Layout block matches the tree: the repository's tracked top-level folders,
    genesis_dist's packages and top-level modules, each named once and none that is not there
    (ARCHITECTURE.md lists every module; tests/test_architecture.py checks that list)."""
    import subprocess

    root = README.parent
    lines = README.read_text().split("## Layout", 1)[1].split("```")[1].splitlines()
    folders = {m.group(1) for line in lines if (m := re.match(r"([a-z_]+)/", line))}
    packages = {m.group(1) for line in lines if (m := re.match(r"  ([a-z_]+)/", line))}
    modules = {name for line in lines if re.match(r"  [a-z_]+\.py", line)
               for name in re.findall(r"[a-z_]+\.py", line.split("   ")[0])}
    tracked = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True).stdout.split()
    assert folders == {path.split("/")[0] for path in tracked if not path.startswith(".")
                       and ("/" in path or (root / path).is_dir())}  # configs is a link to genesis_dist/configs
    package = root / "genesis_dist"
    assert packages == {p.name for p in package.iterdir() if (p / "__init__.py").exists()}
    assert modules == {p.name for p in package.glob("*.py") if p.name != "__init__.py"}


def test_the_readme_own_images_commands_run_as_written(tmp_path, monkeypatch, shard_cli):
    """"Train on your own images", in a folder holding the photos its commands name: the shard
    command converts them as written, the training command composes `data=images` on those
    shards (and takes a step, above), and decompose, as written, decomposes the photo it names
    with the checkpoint of the run the training command names (an untrained one here)."""
    from own_images import build_own_folder, sketchy_jpegs

    from genesis_dist.data import read_manifest
    from genesis_dist.decompose import main as decompose
    from genesis_dist.models import build_model
    from genesis_dist.training.checkpoint import save_best
    from genesis_dist.training.run_folder import ensure_dataset

    monkeypatch.chdir(tmp_path)
    (shard,) = [args for args in readme_commands("", ["python", "tools/shard.py"]) if args[:1] == ["images"]
                and "--help" not in args]
    (train,) = [args for args in readme_commands("train") if "data=images" in args]
    (decompose_args,) = [a for a in readme_commands("decompose") if "-release/" not in a[0]]
    source, photo = Path(shard[1]), Path(decompose_args[1])
    build_own_folder(source)
    photo.parent.mkdir(parents=True, exist_ok=True)
    photo.write_bytes(sketchy_jpegs()[0][1])
    assert photo.is_relative_to(source)

    assert shard_cli.main(shard) == 0
    cfg = load_config(train_cli._parse_args(train)[0])
    manifest = read_manifest(cfg.data.url)
    assert (manifest["dataset"], manifest["resolution"], manifest["K"]) == ("images", cfg.model.img_size, cfg.model.num_slots)
    ensure_dataset(cfg)  # the shards are what the training command expects

    run = Path(cfg.run.storage_path) / cfg.run.name
    assert decompose_args[0] == f"{run}/best"
    save_best(str(run), {"model": build_model(cfg.model).state_dict()}, {"step": 1, "config": OmegaConf.to_container(cfg)})
    assert decompose(decompose_args) == 0
    out = Path(decompose_args[decompose_args.index("--out") + 1])
    assert (out / f"{photo.stem}_decomposition.png").exists()
    assert len(list(out.glob(f"{photo.stem}_mask_*.png"))) == cfg.model.num_slots
def import_released(name: str) -> None:
    """Import one of the seven released models (built from the authors' layout and a weight
    formula: tests/authors_release.py) as the README's command does, from ./released/NAME."""
    from authors_release import released_model
    from genesis_dist import import_model

    released_model(name, Path("released") / name)
    assert import_model.main([f"released/{name}"]) == 0


def test_each_readme_released_model_command_runs_as_written(tmp_path, monkeypatch):
    """The "Released models" commands: every import (one per released model) as written, into
    the run folder the evaluation beside it scores; then decompose and export as written."""
    from authors_release import RELEASES, released_model
    from genesis_dist import decompose, export_model, import_model
    from genesis_dist.evaluate import _parse

    monkeypatch.chdir(tmp_path)
    imports = [args[:args.index("&&")] if "&&" in args else args for args in readme_commands("import_model")]
    assert sorted(args[0] for args in imports) == sorted(f"released/{name}" for name in RELEASES)
    scored = {_parse(args)[0].split("=", 1)[1] for args in readme_commands("evaluate") if args[0] == "--run"}
    for args in imports:
        released_model(args[0].split("/", 1)[1], Path(args[0]))
        assert import_model.main(args) == 0, args
    for name in RELEASES:
        model, data = name.split("-")
        assert f"runs/{model}-{data}-release" in scored
        assert (Path("runs") / f"{model}-{data}-release" / "config.yaml").is_file()
    (decompose_args,) = [a for a in readme_commands("decompose") if "-release/" in a[0]]
    Image.new("RGB", (80, 60), (200, 30, 30)).save(decompose_args[1])
    assert decompose.main(decompose_args) == 0
    assert any(Path(decompose_args[decompose_args.index("--out") + 1]).glob("*_decomposition.png"))
    (export_args,) = readme_commands("export_model")
    # A run of `python -m genesis_dist.train data=shapestacks`: its folder with a complete checkpoint.
    from genesis_dist.released import save_checkpoint_with_worker

    cfg = load_config(["data=shapestacks", f"run.storage_path={tmp_path / 'runs'}"])
    state = build_state(cfg, RankPlan.single(cfg, torch.device("cpu")))
    save_checkpoint_with_worker(str(Path(export_args[0]) / "checkpoint_00000001"), state,
                                {"step": 1, "config": OmegaConf.to_container(cfg)}, None)
    assert export_model.main(export_args) == 0
    assert (Path(export_args[export_args.index("--out") + 1]) / "model.ckpt-FINAL").is_file()


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
