"""Released models as run folders: all seven of the authors' released configurations import, the
run folder is what evaluation, decompose and training take (fine-tuning continues the authors'
step and GECO state), every mistake is one line with nothing written, and export → import is the
identity, bit for bit."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from authors_release import (BETA, ERR_EMA, ITER_IDX, RELEASES, authors_state, fixture, released_model,
                             write_release)
from genesis_dist import export_model, import_model
from genesis_dist.config import load_config
from genesis_dist.decompose import load_model
from genesis_dist.objectives import geco_goal, geco_step_size
from genesis_dist.training.checkpoint import latest_complete_checkpoint, load_checkpoint, save_checkpoint
from genesis_dist.training.loop import train_step
from genesis_dist.training.run import RankPlan, build_state, publish_to_run_folder, train_rank
from genesis_dist.training.run_folder import prepare_run

# (model, data.name, K, image size, GECO goal) each released model must become.
EXPECTED = {
    "genesis-multi_dsprites": ("genesis", "multi_dsprites", 5, 64, 0.5655),
    "genesis-gqn": ("genesis", "gqn", 7, 64, 0.5655),
    "genesis-shapestacks": ("genesis", "shapestacks", 9, 64, 0.5655),
    "genesis_v2-shapestacks": ("genesis_v2", "shapestacks", 9, 64, 0.5655),
    "genesis_v2-objects_room": ("genesis_v2", "objects_room", 7, 64, 0.5655),
    "genesis_v2-sketchy": ("genesis_v2", "sketchy", 10, 128, 0.5645),
    "genesis_v2-apc": ("genesis_v2", "apc", 10, 128, 0.5655),
}


def run_import(tmp_path: Path, release: Path, *args: str) -> int:
    return import_model.main([str(release), "--out", str(tmp_path / "runs"), *args])


@pytest.mark.parametrize("name", sorted(RELEASES))
def test_each_released_configuration_imports_into_a_run_folder(name, tmp_path, capsys):
    release = released_model(name, tmp_path / "released" / name)
    assert run_import(tmp_path, release, f"data.url={tmp_path / 'shards'}") == 0
    model_name, data, slots, size, goal = EXPECTED[name]
    run = tmp_path / "runs" / f"{model_name}-{data}-release"
    cfg = load_config(base_file=run / "config.yaml")  # what `train --config RUN/config.yaml` reads
    assert (cfg.model.name, cfg.data.name, cfg.model.num_slots, cfg.model.img_size, cfg.objective.goal) == \
        (model_name, data, slots, size, goal)
    assert cfg.optim.steps == 500_001 and cfg.optim.lr == 1e-4 and cfg.optim.batch_size == 32
    checkpoint = run / f"checkpoint_{ITER_IDX:08d}"
    assert latest_complete_checkpoint(str(run)) == (ITER_IDX, str(checkpoint))
    model, step = load_model(str(checkpoint))  # as `genesis_dist.decompose` loads it
    assert step == ITER_IDX
    with torch.no_grad():
        out = model(torch.rand(1, 3, size, size))
    assert out.log_masks.shape[1] == slots and torch.isfinite(out.elbo).all()
    assert "imported" in capsys.readouterr().out


def test_a_release_can_be_fine_tuned_from_its_step_and_geco_state(tmp_path):
    """What `genesis_dist.train --config RUN/config.yaml optim.steps=N` does on each rank, without
    Ray: the stored config is accepted as the same run, the imported checkpoint is the newest
    complete one, and training continues from the authors' step with their β and err EMA."""
    from genesis_dist.data.convert import convert_dataset
    from genesis_dist.data.formats.multi_dsprites import MultiDSprites

    shards = tmp_path / "shards"
    convert_dataset(MultiDSprites({"train": 40, "test": 8}, img_size=64), str(shards), shard_samples=20, progress=False)
    record = fixture("genesis_v2_64")
    record["flags"]["data_config"] = "datasets/multid_config.py"
    release = write_release(record, tmp_path / "released")
    assert run_import(tmp_path, release, "--name", "tuned", f"data.url={shards}") == 0
    run = tmp_path / "runs" / "tuned"
    overrides = [f"optim.steps={ITER_IDX + 2}", "data.num_workers=0", "run.eval_images=4", "run.checkpoint_every=1",
                 "run.log_every=1", "run.image_every=100000"]
    prepared = prepare_run(load_config(overrides, base_file=run / "config.yaml"))
    assert prepared.resuming  # the stored config.yaml is this run's
    cfg = prepared.cfg
    step, folder = latest_complete_checkpoint(str(run))
    assert step == ITER_IDX
    state = train_rank(cfg, str(run), 0, 1, torch.device("cpu"), publish_to_run_folder(str(run)),
                       checkpoint_folder=folder, progress=lambda event: None)
    assert state.step == ITER_IDX + 2
    saved, meta = load_checkpoint(str(run / f"checkpoint_{ITER_IDX + 2:08d}"))
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    errs = [r["err"] for r in history if r["step"] > ITER_IDX]
    assert [r["step"] for r in history if r["step"] > ITER_IDX] == [ITER_IDX + 1, ITER_IDX + 2]
    # GECO (their utils/geco.py, ours objectives.GECO) continued from the imported β and EMA.
    beta, ema = float(torch.tensor(BETA)), ERR_EMA
    goal, step_size = geco_goal(cfg.objective.goal, 64), geco_step_size(64)
    for err in errs:
        ema = 0.01 * err + 0.99 * ema
        delta = goal - ema
        beta = min(max(beta * math.exp(step_size * delta * (10.0 if delta > 0 else 1.0)), 1e-10), 1e10)
    assert saved["objective"]["err_ema"] == pytest.approx(ema, rel=1e-9)
    assert saved["objective"]["beta"] == pytest.approx(beta, rel=1e-9)
    assert all(s["step"].item() == ITER_IDX + 2 for s in saved["optimizer"]["state"].values())


def _trained_checkpoint(tmp_path: Path, words: list[str]) -> tuple[str, dict]:
    """One of our checkpoints after two real training steps (Adam moments, GECO state set)."""
    cfg = load_config(words + [f"run.storage_path={tmp_path / 'runs'}", "run.name=ours", "optim.batch_size=2"])
    state = build_state(cfg, RankPlan.single(cfg, torch.device("cpu")))
    gen = torch.Generator().manual_seed(0)
    for step in (1, 2):
        size = cfg.model.img_size
        train_step(state.model, state.objective, state.optimizer, torch.rand(2, 3, size, size, generator=gen), step=step)
        state.schedule.step()
        state.step += 1
    url = str(tmp_path / "runs" / "ours" / "checkpoint_00000002")
    save_checkpoint(url, state.state_dict(), {"step": 2, "config": OmegaConf.to_container(cfg)})
    return url, state.state_dict()


def _assert_identical(a, b, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), (where, set(a) ^ set(b))
        for key in a:
            _assert_identical(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


@pytest.mark.parametrize("words", [
    ["model=genesis_v2", "data=shapestacks", "model.num_slots=3", "model.latent_dim=16", "model.feature_dim=32",
     "model.encoder_filters=16", "model.head_filters=16", "model.decoder_filters=16", "model.prior_hidden=64",
     "model.mask_loss=true"],
    ["model=genesis", "data=gqn", "model.num_slots=3"],
], ids=["genesis_v2", "genesis"])
def test_export_then_import_is_the_identity_bit_for_bit(words, tmp_path):
    url, ours = _trained_checkpoint(tmp_path, words)
    assert export_model.main([url, "--out", str(tmp_path / "exported")]) == 0
    flags = json.loads((tmp_path / "exported" / "flags.json").read_text())
    theirs = torch.load(tmp_path / "exported" / "model.ckpt-FINAL", weights_only=True)
    assert theirs["iter_idx"] == 2 and set(theirs) == {"model_state_dict", "optimiser_state_dict", "beta", "iter_idx",
                                                        "err_ema"}
    assert flags["model_config"] in ("models/genesisv2_config.py", "models/genesis_config.py")
    assert run_import(tmp_path, tmp_path / "exported", "--name", "back") == 0
    back, meta = load_checkpoint(str(tmp_path / "runs" / "back" / "checkpoint_00000002"))
    assert meta["step"] == 2
    _assert_identical(ours["model"], back["model"], "model")
    _assert_identical(ours["optimizer"], back["optimizer"], "optimizer")
    _assert_identical(ours["objective"], back["objective"], "objective")
    for key in ("last_epoch", "_step_count", "base_lrs", "_last_lr"):
        assert ours["schedule"][key] == back["schedule"][key], key
    original = OmegaConf.to_container(load_config(words))
    returned = OmegaConf.to_container(load_config(base_file=tmp_path / "runs" / "back" / "config.yaml"))
    for section in ("model", "objective"):
        assert returned[section] == original[section], section
    assert (returned["optim"]["lr"], returned["optim"]["steps"]) == (original["optim"]["lr"], original["optim"]["steps"])


def test_the_exported_run_names_its_step_in_their_convention(tmp_path):
    url, _ = _trained_checkpoint(tmp_path, ["model=genesis", "data=gqn", "model.num_slots=3"])
    assert export_model.main([url, "--out", str(tmp_path / "e"), "--file", "model.ckpt-1"]) == 0
    assert torch.load(tmp_path / "e" / "model.ckpt-1", weights_only=True)["iter_idx"] == 1  # iterations from 0
    assert run_import(tmp_path, tmp_path / "e" / "model.ckpt-1", "--name", "b") == 0
    assert (tmp_path / "runs" / "b" / "checkpoint_00000002").is_dir()


def _break(record: dict, state: dict, flags: dict) -> None:
    """Nothing to change (a control case)."""


def _errors() -> list[tuple[str, str, callable]]:
    def flags(**changes):
        return lambda record, state: record["flags"].update(changes)

    def drop(key):
        return lambda record, state: state.pop(key)

    def add(key):
        return lambda record, state: state.__setitem__(key, torch.zeros(3))

    def reshape(key, shape):
        return lambda record, state: state.__setitem__(key, torch.zeros(shape))

    return [
        ("genesis_v2_64", "unknown flag frobnicate", flags(frobnicate=1)),
        ("genesis_v2_64", "semiconv=False", flags(semiconv=False)),
        ("genesis_v2_64", "pixel_std1=0.7 ≠ pixel_std2=0.5", flags(pixel_std2=0.5)),
        ("genesis_v2_64", "optimiser='rmsprop'", flags(optimiser="rmsprop")),
        ("genesis_v2_64", "data_config='datasets/clevr.py'", flags(data_config="datasets/clevr.py")),
        ("genesis_64", "enc_norm='in'", flags(enc_norm="in")),
        ("genesis_64", "img_size=128", flags(img_size=128)),
        ("genesis_v2_64", "missing: encoder.mlp.1.bias", drop("encoder.mlp.1.bias")),
        ("genesis_v2_64", "not the authors' genesis_v2's: extra.weight", add("extra.weight")),
        ("genesis_v2_64", "shape mismatch for 1 tensors: encoder.mlp.5.weight [7, 7]", reshape("encoder.mlp.5.weight", (7, 7))),
        ("genesis_64", "trained with K=7, not K=3", reshape("std", (1, 1, 1, 1, 7))),
        ("genesis_64", "std holds σ_x", lambda record, state: state.__setitem__("std", torch.full((1, 1, 1, 1, 3), 0.5))),
        ("genesis_v2_64", "holds the authors' genesis",
         lambda record, state: (state.clear(), state.update(authors_state(fixture("genesis_64"))))),
    ]


@pytest.mark.parametrize("case, message, change", _errors(), ids=[e[1][:30] for e in _errors()])
def test_a_release_that_does_not_fit_is_a_one_line_error_and_nothing_is_written(case, message, change, tmp_path, capsys):
    record = fixture(case)
    state = authors_state(record)
    change(record, state)
    release = write_release(record, tmp_path / "released", state)
    assert run_import(tmp_path, release) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and err[0].startswith("genesis_dist.import_model: error:"), err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_an_unknown_flag_can_be_ignored_on_request(tmp_path):
    record = fixture("genesis_v2_64")
    record["flags"]["frobnicate"] = 1
    release = write_release(record, tmp_path / "released")
    assert run_import(tmp_path, release, "--ignore-flag", "frobnicate") == 0


def test_files_that_are_not_a_release_and_an_existing_run_are_refused(tmp_path, capsys):
    release = write_release(fixture("genesis_v2_64"), tmp_path / "released")
    assert run_import(tmp_path, release, "--name", "taken") == 0
    capsys.readouterr()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "model.ckpt-FINAL").write_bytes(b"not a checkpoint")
    (tmp_path / "junk" / "flags.json").write_text((release / "flags.json").read_text())
    (tmp_path / "empty").mkdir()
    cases = [(release, ["--name", "taken"], "already exists"),
             (tmp_path / "junk", [], "not loadable with torch.load(weights_only=True)"),
             (tmp_path / "empty", [], "no model.ckpt-FINAL"),
             (tmp_path / "nowhere", [], "no such file or folder")]
    for source, args, message in cases:
        assert run_import(tmp_path, source, *args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["taken"]


def test_export_refuses_what_their_code_cannot_express(tmp_path, capsys):
    url, _ = _trained_checkpoint(tmp_path, ["model=genesis_v2", "data=multi_dsprites", "model.img_size=32",
                                            "model.num_slots=3"])
    assert export_model.main([url, "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot express" in err[0] and "img_size=32" in err[0], err


def test_compare_sets_the_release_and_reduced_runs_beside_the_paper_and_marks_them(tmp_path, capsys):
    """`evaluate compare` on three evaluated runs of Multi-dSprites: the imported release, the
    embedded demo (32 px, curriculum aids, 4,000 steps) and a paper-setting GENESIS run."""
    from genesis_dist.evaluate import main as evaluate_main
    from genesis_dist.training.run_folder import write_run_config

    def evaluated(run: Path, step: int, model: str, **scores) -> None:
        (run / "eval").mkdir(parents=True, exist_ok=True)
        record = {"step": step, "dataset": "multi_dsprites", "model": model, **scores}
        (run / "eval" / f"{step:08d}.json").write_text(json.dumps(record))

    release = released_model("genesis-multi_dsprites", tmp_path / "released" / "genesis-multi_dsprites")
    assert run_import(tmp_path, release) == 0
    evaluated(tmp_path / "runs" / "genesis-multi_dsprites-release", ITER_IDX, "genesis", fid=31.5, ari_fg=0.61)
    demo = load_config([f"run.storage_path={tmp_path / 'runs'}"])
    write_run_config(demo)
    evaluated(tmp_path / "runs" / demo.run.name, 4000, "genesis_v2", fid=150.0, ari_fg=0.8, att_ari_fg=0.79)
    paper = load_config(["model=genesis", "data=multi_dsprites", f"run.storage_path={tmp_path / 'runs'}"])
    write_run_config(paper)
    evaluated(tmp_path / "runs" / paper.run.name, 500_000, "genesis", fid=27.0)
    capsys.readouterr()
    runs = [str(tmp_path / "runs" / n) for n in ("genesis-multi_dsprites-release", demo.run.name, paper.run.name)]
    assert evaluate_main(["compare", *runs]) == 0
    rows = {row.split("|")[1].strip(): row for row in capsys.readouterr().out.splitlines() if row.startswith("| ")}
    assert "authors' release, imported" in rows["genesis-multi_dsprites-release"]
    assert rows["genesis-multi_dsprites-release"].rstrip(" |").endswith("imported")
    assert "31.5" in rows["genesis-multi_dsprites-release"]
    demo_row = rows[demo.run.name]
    for note in ("model: img_size 32 (paper 64)", "curriculum aids: colour_hint, mask_guidance, pixel_std",
                 "4,000 of the paper's 500,000 steps", "optim.lr 0.001 (paper 0.0001)"):
        assert note in demo_row, demo_row
    assert rows[paper.run.name].rstrip(" |").endswith("paper setting")
    assert "24.9" in rows["paper"] and "25.0" in rows["authors' release"] and "0.570" in rows["authors' release"]
