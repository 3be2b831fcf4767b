"""Releases of the authors' models, as their `train.py` writes them (`flags.json` and
`model.ckpt-FINAL`), built from the fixtures `tools/authors_fixtures.py` recorded from their code
(`tests/fixtures/authors/`): their flags, their state dict's layout and the weight formula.
Shared by the import, released-model and README tests."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "authors"
ITER_IDX, BETA, ERR_EMA, ADAM_STEP = 500_001, 0.0371, 7011.25, 500_001

_spec = importlib.util.spec_from_file_location("authors_fixtures", REPO / "tools" / "authors_fixtures.py")
generator = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(generator)

# The seven released models (their README, "Pretrained models & results"): the README's folder
# name → (fixture of that model and size, their data config, K, image size, extra flags).
RELEASES = {
    "genesis-multi_dsprites": ("genesis_64", "datasets/multid_config.py", 5, 64, {}),
    "genesis-gqn": ("genesis_64", "datasets/gqn_config.py", 7, 64, {}),
    "genesis-shapestacks": ("genesis_64", "datasets/shapestacks_config.py", 9, 64, {}),
    "genesis_v2-shapestacks": ("genesis_v2_64", "datasets/shapestacks_config.py", 9, 64, {}),
    # Their multi_object_config leaves img_size and K_steps at -1: the loader sets 64 and 7.
    "genesis_v2-objects_room": ("genesis_v2_64", "datasets/multi_object_config.py", -1, -1, {"dataset": "objects_room"}),
    "genesis_v2-sketchy": ("genesis_v2_128", "datasets/sketchy_config.py", 10, 128, {"g_goal": 0.5645, "kernel": "gaussian"}),
    "genesis_v2-apc": ("genesis_v2_128", "datasets/apc_config.py", 10, 128, {"g_goal": 0.5655, "kernel": "gaussian"}),
}


def fixture(case: str) -> dict:
    """What the generator recorded for `case` (stages, noise, strides), with its flags and layout."""
    folder = FIXTURES / case
    record = torch.load(folder / "stages.pt", weights_only=True)
    record["flags"] = json.loads((folder / "flags.json").read_text())
    record["layout"] = json.loads((folder / "layout.json").read_text())
    return record


def authors_state(record: dict) -> dict[str, torch.Tensor]:
    """Their `model_state_dict` as their float32 training saved it, from the weight formula
    (GENESIS's `std` buffer sized by the flags' K)."""
    flags, buffers, fans = record["flags"], record.get("buffers", {}), record["layout"]["fan_in"]
    slots = flags["K_steps"] if flags["K_steps"] > 0 else 7
    state = {}
    for name, shape, dtype in record["layout"]["keys"]:
        shape = (1, 1, 1, 1, slots) if name == "std" else tuple(shape)
        value = buffers[name] if name in buffers else generator.authors_weight(
            name, shape, slots, flags["pixel_std1"], fans.get(name))
        state[name] = value.to(torch.int64 if dtype == "int64" else torch.float32)
    return state


def write_release(record: dict, folder: Path, state: dict[str, torch.Tensor] | None = None,
                  file_name: str = "model.ckpt-FINAL") -> Path:
    """A release folder: flags.json and the checkpoint, Adam's moments set to 2·w and w² of
    each parameter w (so a moment mapped onto the wrong parameter shows)."""
    state = authors_state(record) if state is None else state
    names = record["layout"]["parameters"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "flags.json").write_text(json.dumps(record["flags"], indent=4))
    torch.save({
        "model_state_dict": state,
        "optimiser_state_dict": {
            "state": {i: {"step": ADAM_STEP, "exp_avg": 2 * state[n], "exp_avg_sq": state[n] ** 2}
                      for i, n in enumerate(names) if n in state},
            "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0, "amsgrad": False,
                              "params": list(range(len(names)))}]},
        "beta": torch.tensor(BETA), "iter_idx": ITER_IDX, "err_ema": torch.tensor(ERR_EMA),
    }, folder / file_name)
    return folder


def released_model(name: str, folder: Path) -> Path:
    """One of the seven released models (`RELEASES`) as a release folder, weights from the formula."""
    case, data_config, slots, size, extra = RELEASES[name]
    record = fixture(case)
    record["flags"] = {**record["flags"], "data_config": data_config, "K_steps": slots, "img_size": size, **extra}
    if data_config.endswith("multi_object_config.py"):  # their multi_object_config's own flags
        record["flags"] = {k: v for k, v in record["flags"].items()
                           if k not in ("split_name", "shuffle_test", "copy_to_tmp", "load_instances")}
        record["flags"].update(data_folder="data/multi-object-datasets", dataset_size=-1, buffer_size=128)
    return write_release(record, folder)
