"""Config composition, run names, overrides and one-line errors."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from genesis_dist.config import ConfigError, find_config_dir, load_config, model_config, resume_conflicts

REPO = Path(__file__).resolve().parents[1]

# Each dataset's paper setting (SPEC-models.md, training protocol): resolution, K, GECO goal.
PAPER = {
    "multi_dsprites": (64, 5, 0.5655), "objects_room": (64, 7, 0.5655), "shapestacks": (64, 9, 0.5655),
    "gqn": (64, 7, 0.5655), "sketchy": (128, 10, 0.5645), "apc": (128, 10, 0.5655),
}


def test_model_group_files_give_the_published_architecture():
    for name in ("genesis_v2", "genesis", "genesis_s"):
        cfg = model_config(name=name)
        assert cfg.name == name and cfg.img_size == 64 and cfg.num_slots == 7
    v2 = model_config()
    assert (v2.encoder_filters, v2.head_filters, v2.decoder_filters, v2.prior_hidden) == (64, 64, 64, 256)
    assert model_config(["num_slots=5"]).num_slots == 5


def test_no_group_named_is_the_demo():
    for overrides in ([], ["optim.steps=10"]):
        cfg = load_config(overrides)
        assert cfg.model.name == "genesis_v2" and cfg.data.generate_if_missing
        assert cfg.run.name == "genesis_v2-multi_dsprites-demo"
    assert load_config(["optim.steps=10"]).optim.steps == 10


@pytest.mark.parametrize("model", ["genesis_v2", "genesis", "genesis_s"])
@pytest.mark.parametrize("data", sorted(PAPER))
def test_naming_model_and_data_gives_the_paper_setting(model, data):
    cfg = load_config([f"model={model}", f"data={data}"])
    size, slots, goal = PAPER[data]
    assert (cfg.model.name, cfg.data.name) == (model, data)
    assert (cfg.model.img_size, cfg.model.num_slots, cfg.objective.goal) == (size, slots, goal)
    assert (cfg.optim.lr, cfg.optim.batch_size, cfg.optim.steps) == (1e-4, 32, 500_000)
    assert cfg.run.name == f"{model}-{data}"
    assert not cfg.data.generate_if_missing
    if model == "genesis_v2":
        assert cfg.model.encoder_filters == 64  # none of the demo's reductions


def test_naming_only_the_model_trains_it_on_the_default_dataset():
    cfg = load_config(["model=genesis"])
    assert (cfg.model.name, cfg.data.name, cfg.model.img_size, cfg.model.num_slots) == ("genesis", "multi_dsprites", 64, 5)
    assert cfg.run.name == "genesis-multi_dsprites"


def test_flexible_slot_stop_follows_the_dataset():
    assert load_config(["data=objects_room"]).model.stop_pixels == 70
    assert load_config(["data=shapestacks"]).model.stop_pixels == 20
    assert load_config(["data=gqn"]).model.stop_pixels is None


def test_overrides_win_and_an_explicit_run_name_is_kept():
    cfg = load_config(["model=genesis", "model.num_slots=4", "optim.lr=3e-4", "run.storage_path=s3://b/runs",
                       "run.name=mine"])
    assert cfg.model.name == "genesis" and cfg.model.num_slots == 4
    assert cfg.optim.lr == 3e-4 and cfg.run.storage_path == "s3://b/runs" and cfg.run.name == "mine"


def test_a_resolved_config_file_is_a_base(tmp_path):
    from omegaconf import OmegaConf

    path = tmp_path / "best.yaml"
    path.write_text(OmegaConf.to_yaml(load_config(["model=genesis", "data=shapestacks", "model.num_slots=4"])))
    cfg = load_config(["optim.steps=7"], base_file=path)
    assert (cfg.model.name, cfg.model.num_slots, cfg.optim.steps, cfg.run.name) == ("genesis", 4, 7, "genesis-shapestacks")
    with pytest.raises(ConfigError, match="can't be combined"):
        load_config(["model=genesis_v2"], base_file=path)


def test_resume_conflicts_name_what_changes_the_run():
    a = load_config(["data=shapestacks"])
    assert resume_conflicts(a, load_config(["data=shapestacks", "optim.steps=9", "scaling.num_workers=4",
                                            "data.url=s3://x/y", "run.log_every=7"])) == []
    assert resume_conflicts(a, load_config(["data=shapestacks", "model.num_slots=4", "optim.lr=1e-3"])) == [
        "model.num_slots", "optim.lr"]


@pytest.mark.parametrize(
    "overrides, pattern",
    [
        (["model.foo=1"], r"^override: model\.foo: unknown key; allowed: name, img_size, num_slots"),
        (["model.num_slots=abc"], r"model\.num_slots: Value 'abc' .* Integer"),
        (["model.kernel=cosine"], r"model\.kernel='cosine' is not allowed; choose one of: gaussian"),
        (["model=nope"], r"model=nope: no such config; available: .*genesis, genesis_s, genesis_v2"),
        (["experiment=nope"], r"experiment=nope: no such config; available: demo"),
        (["optim.precision=fp8"], r"optim\.precision='fp8' is not allowed"),
        (["model.img_size=48"], r"model\.img_size=48: must be a power of two"),
        (["optim.global_batch_size=32", "scaling.num_workers=3"], r"optim\.global_batch_size=32 must be divisible"),
        (["optim.lr_scaling=cubic"], r"optim\.lr_scaling='cubic' is not allowed; choose one of: none, linear, sqrt"),
        (["optim"], r"expected key=value"),
        (["optim=3"], r"optim is a section"),
        (["run.name=a/b"], r"run\.name='a/b': use letters"),
        (["curriculum.pixel_std_steps=[5,1]"], r"curriculum\.pixel_std_steps=\[5, 1\]: give \[start, end\]"),
        (["model=genesis", "curriculum.mask_guidance=0.3"], r"curriculum\.mask_guidance needs IC-SBP attention"),
        (["model=genesis", "curriculum.colour_hint=1"], r"curriculum\.colour_hint needs IC-SBP attention"),
        (["curriculum.colour_hint=-1"], r"curriculum\.colour_hint=-1.*must be ≥ 0"),
        (["curriculum.colour_hint_scale=0"], r"curriculum\.colour_hint_scale=0.*must be > 0"),
        (["curriculum.pixel_std_from=0.4", "objective.goal=-1"], r"objective\.goal=-1 is below the NLL"),
    ],
)
def test_mistakes_are_one_line_errors_naming_the_key(overrides, pattern):
    with pytest.raises(ConfigError, match=pattern) as info:
        load_config(overrides)
    assert "\n" not in str(info.value)


def test_config_is_read_only():
    cfg = load_config([])
    with pytest.raises(Exception):
        cfg.optim.lr = 1.0


def test_broken_yaml_is_one_line_error(tmp_path):
    (tmp_path / "train.yaml").write_text("optim: {lr: 1.0e-4}\n")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "bad.yaml").write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML") as info:
        load_config(["model=bad"], config_dir=tmp_path)
    assert "\n" not in str(info.value)


def test_missing_train_yaml_names_the_path(tmp_path):
    with pytest.raises(ConfigError, match=f"config file not found: {tmp_path / 'train.yaml'}"):
        load_config([], config_dir=tmp_path)
    with pytest.raises(ConfigError, match="config file not found: .*nowhere.yaml"):
        load_config([], base_file=tmp_path / "nowhere.yaml")


def test_configs_are_found_from_any_working_directory(tmp_path):
    assert find_config_dir() == (REPO / "configs").resolve() == REPO / "genesis_dist" / "configs"
    env = {k: v for k, v in os.environ.items() if k != "GENESIS_DIST_CONFIGS"}
    out = subprocess.run([sys.executable, "-m", "genesis_dist.train", "model=genesis", "--print-config"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "name: genesis-multi_dsprites" in out.stdout


def test_a_non_editable_install_carries_the_configs(tmp_path):
    """`pip install .` (a wheel) puts configs/ inside the package."""
    wheel_dir, site = tmp_path / "wheel", tmp_path / "site"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(wheel_dir), str(REPO)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    (wheel,) = wheel_dir.glob("genesis_dist-*.whl")
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                              str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr
    code = ("import genesis_dist.config as c; print(c.find_config_dir()); "
            "print(c.load_config(['data=shapestacks']).model.num_slots)")
    env = {**{k: v for k, v in os.environ.items() if k != "GENESIS_DIST_CONFIGS"}, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    where, slots = out.stdout.split()
    assert where.startswith(str(site)) and slots == "9"


def test_pyproject_lists_every_package():
    import tomllib

    from setuptools import find_packages

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    configs = {"genesis_dist.configs"} | {f"genesis_dist.configs.{p.name}" for p in (REPO / "configs").iterdir()
                                          if p.is_dir() and any(p.glob("*.yaml"))}
    assert listed == set(find_packages(str(REPO), include=["genesis_dist*"])) | configs


def test_batch_semantics_per_worker_global_and_lr_scaling():
    from genesis_dist.config import effective_lr, per_worker_batch

    paper = load_config(["data=shapestacks"]).optim
    assert per_worker_batch(paper, 8) == 32 and effective_lr(paper, 8) == 1e-4  # 8 GPUs × 32, lr as tuned
    linear = load_config(["data=shapestacks", "optim.lr_scaling=linear"]).optim
    assert effective_lr(linear, 8) == pytest.approx(8e-4) and effective_lr(linear, 1) == pytest.approx(1e-4)
    sqrt = load_config(["data=shapestacks", "optim.lr_scaling=sqrt"]).optim
    assert effective_lr(sqrt, 4) == pytest.approx(2e-4)
    exact = load_config(["data=shapestacks", "optim.global_batch_size=32", "optim.lr_scaling=linear",
                         "scaling.num_workers=4"]).optim
    assert per_worker_batch(exact, 4) == 8 and effective_lr(exact, 4) == pytest.approx(1e-4)  # the paper's exact batch
