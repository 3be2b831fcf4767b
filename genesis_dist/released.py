"""The authors' released models (github.com/applied-ai-lab/genesis, README "Pretrained models &
results") as genesis-dist run folders, and genesis-dist checkpoints in the authors' format.

A release is a folder with `flags.json` (every flag of the run) and `model.ckpt-FINAL` (or
`-latest`, `-<iter>`): a `torch.save` dict of `model_state_dict`, `optimiser_state_dict`, `beta`,
`iter_idx` and, when GECO ran, `err_ema`. `import_release` translates the flags into a resolved
config of our schema (the paper setting of that model and dataset, then the flags), maps every
tensor (`models/authors_format.py`), and writes an ordinary run folder: `config.yaml`, one
checkpoint `checkpoint_<step>/` (state.pt, worker_0.pt, then meta.json) and `release.json` (the
provenance). `export_checkpoint` writes one of our checkpoints as a release folder.

Steps: their `iter_idx` counts iterations from 0 and their final save comes after the last
increment, so a `-FINAL` file has taken `iter_idx` optimiser steps and any other `iter_idx + 1`;
our step is the number of optimiser steps taken. Their `train_iter` (500,000) runs 500,001
iterations: `optim.steps = train_iter + 1`.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import torch
from omegaconf import DictConfig, OmegaConf

from .config import load_config, resolved_config
from .models.authors_format import (MODEL_FILES, authors_layout, detect_model, from_authors,
                                    optimizer_state_from_authors, optimizer_state_to_authors, to_authors)
from .storage import filesystem, join, list_names, without_secrets
from .training.checkpoint import (CheckpointError, latest_complete_checkpoint, load_checkpoint, resolve_checkpoint,
                                  save_checkpoint)
from .training.hooks import parameters_digest
from .training.layout import META_FILE, RELEASE_FILE, checkpoint_name, worker_file
from .training.loop import TrainState, set_base_lr
from .training.run import RankPlan, build_state
from .training.run_folder import with_absolute_paths, write_run_config

FLAGS_FILE = "flags.json"
FINAL_FILE = "model.ckpt-FINAL"
CHECKPOINT_FILE = re.compile(r"^model\.ckpt-(FINAL|latest|\d+)$")

# Their data config file → our data.name; multi_object_config holds several datasets (flag `dataset`).
DATA_CONFIGS = {"multid_config": "multi_dsprites", "gqn_config": "gqn", "shapestacks_config": "shapestacks",
                "sketchy_config": "sketchy", "apc_config": "apc"}
MULTI_OBJECT_DATASETS = {"objects_room": ("objects_room", 64, 7)}  # dataset: (data.name, size, K) for -1 flags
DATA_FILES = {**{name: f"datasets/{stem}.py" for stem, name in DATA_CONFIGS.items()},
              "objects_room": "datasets/multi_object_config.py"}

# Defaults of the flags read here, as their code defines them (for releases that predate a flag).
AUTHORS_DEFAULTS: dict[str, Any] = {
    "feat_dim": 64, "kernel": "gaussian", "semiconv": True, "dynamic_K": False, "klm_loss": False,
    "detach_mr_in_klm": True, "two_stage": True, "autoreg_prior": True, "comp_prior": True, "attention_latents": 64,
    "enc_norm": "bn", "dec_norm": "bn", "comp_enc_channels": 32, "comp_ldim": 16, "comp_dec_channels": 32,
    "comp_dec_layers": 4, "comp_symmetric": False, "pixel_bound": True, "pixel_std1": 0.7, "pixel_std2": 0.7,
    "montecarlo_kl": True, "train_iter": 500000, "batch_size": 32, "optimiser": "adam", "learning_rate": 1e-4,
    "beta": 0.5, "beta_warmup": False, "geco": True, "g_goal": 0.5655, "g_lr": 1e-5, "g_alpha": 0.99, "g_init": 1.0,
    "g_min": 1e-10, "g_speedup": 10.0, "seed": 0, "input_channels": 3, "filter_start": 32, "prior_mode": "softmax",
}
# Flags each model's function depends on that genesis-dist has one value of (flag: that value).
FIXED = {
    "genesis_v2": {"semiconv": True, "pixel_bound": True, "autoreg_prior": True, "montecarlo_kl": True,
                   "input_channels": 3},
    "genesis": {"two_stage": True, "autoreg_prior": True, "comp_prior": True, "enc_norm": "bn", "dec_norm": "bn",
                "comp_enc_channels": 32, "comp_dec_channels": 32, "comp_dec_layers": 4, "comp_symmetric": False,
                "pixel_bound": True, "montecarlo_kl": True, "input_channels": 3},
}
# Flags translated into the config (in `_model_overrides` and `_training_overrides`).
TRANSLATED = {
    "genesis_v2": {"K_steps", "img_size", "feat_dim", "kernel", "klm_loss", "detach_mr_in_klm", "dynamic_K",
                   "pixel_std1", "pixel_std2"},
    "genesis": {"K_steps", "img_size", "attention_latents", "comp_ldim", "pixel_std1", "pixel_std2"},
}
TRAINING_FLAGS = {"learning_rate", "batch_size", "train_iter", "optimiser", "geco", "g_goal", "g_lr", "g_alpha",
                  "g_init", "g_min", "g_speedup", "beta", "beta_warmup", "seed", "model_config", "data_config", "dataset"}
# Flags a model's own config files define that belong to their other models (their config files
# import one another), and flags of logging, hardware and data loading: no effect on the model.
OTHER_MODELS = {
    "genesis_v2": {"two_stage", "comp_prior", "attention_latents", "enc_norm", "dec_norm", "comp_enc_channels",
                   "comp_ldim", "comp_dec_channels", "comp_dec_layers", "comp_symmetric", "filter_start", "prior_mode"},
    "genesis": {"feat_dim", "kernel", "semiconv", "dynamic_K", "klm_loss", "detach_mr_in_klm", "filter_start",
                "prior_mode"},
}
NO_EFFECT = {"results_dir", "run_name", "report_loss_every", "run_validation_every", "log_images_every",
             "num_checkpoints", "resume", "log_grads_and_weights", "log_distributions", "N_eval", "gpu", "multi_gpu",
             "debug", "git_commit", "data_folder", "num_workers", "buffer_size", "val_frac", "dataset_size",
             "load_instances", "mem_map", "unique_colours", "split_name", "shuffle_test", "copy_to_tmp"}
DYNAMIC_K_PIXELS = 20.0  # their flexible stop (`dynamic_K`): a mask of fewer than 20 pixels ends the slots


class ReleaseError(ValueError):
    """A release (or a checkpoint to export) that cannot be converted; the message is one line."""


# --- Reading a release ------------------------------------------------------------------------

def find_release(source: str) -> tuple[str, str]:
    """(flags.json, checkpoint file) of a release folder (its model.ckpt-FINAL, else -latest,
    else the highest -<iter>) or of a checkpoint file (flags.json beside it)."""
    if os.path.isdir(source):
        names = [n for n in os.listdir(source) if CHECKPOINT_FILE.match(n)]
        if not names:
            raise ReleaseError(f"{source}: no model.ckpt-FINAL (or -latest, -<iter>) in this folder")

        def rank(name: str) -> tuple[int, int]:
            tag = CHECKPOINT_FILE.match(name).group(1)
            return (2, 0) if tag == "FINAL" else (1, 0) if tag == "latest" else (0, int(tag))

        checkpoint = os.path.join(source, max(names, key=rank))
    elif os.path.isfile(source):
        checkpoint = source
    else:
        raise ReleaseError(f"{source}: no such file or folder")
    flags = os.path.join(os.path.dirname(os.path.abspath(checkpoint)), FLAGS_FILE)
    if not os.path.isfile(flags):
        raise ReleaseError(f"{checkpoint}: no {FLAGS_FILE} beside it (a release folder holds both)")
    return flags, checkpoint


def read_flags(path: str) -> dict[str, Any]:
    try:
        with open(path) as f:
            flags = json.load(f)
    except (OSError, ValueError) as err:
        raise ReleaseError(f"{path}: unreadable ({type(err).__name__}: {str(err).splitlines()[0]})") from None
    if not isinstance(flags, dict):
        raise ReleaseError(f"{path}: expected a JSON object of flags")
    return flags


def release_model(flags: Mapping[str, Any]) -> str:
    """'genesis_v2' or 'genesis' from the `model_config` flag."""
    model_config = str(flags.get("model_config", ""))
    for name, path in MODEL_FILES.items():
        if model_config.replace("\\", "/").endswith(path.split("/", 1)[1]):
            return name
    raise ReleaseError(f"flags.json: model_config={model_config!r} is not one of the released models "
                       f"({', '.join(MODEL_FILES.values())})")


def release_data(flags: Mapping[str, Any]) -> tuple[str, int | None, int | None]:
    """(data.name, default image size, default K) from the `data_config` (and `dataset`) flags; the
    defaults are given where their config leaves `img_size` / `K_steps` at -1."""
    stem = os.path.splitext(os.path.basename(str(flags.get("data_config", ""))))[0]
    if stem in DATA_CONFIGS:
        return DATA_CONFIGS[stem], None, None
    if stem == "multi_object_config":
        dataset = flags.get("dataset", "objects_room")
        if dataset in MULTI_OBJECT_DATASETS:
            return MULTI_OBJECT_DATASETS[dataset]
        raise ReleaseError(f"flags.json: dataset={dataset!r} of multi_object_config has no genesis-dist dataset "
                           f"(supported: {', '.join(MULTI_OBJECT_DATASETS)})")
    raise ReleaseError(f"flags.json: data_config={flags.get('data_config')!r} is not a dataset genesis-dist reads "
                       f"({', '.join(sorted(set(DATA_CONFIGS) | {'multi_object_config'}))})")


def _flag(flags: Mapping[str, Any], name: str) -> Any:
    return flags.get(name, AUTHORS_DEFAULTS.get(name))


def _check_flags(flags: Mapping[str, Any], model: str, ignore: Iterable[str]) -> None:
    """One-line errors for flags with no counterpart: an unknown flag, or a value of a flag
    that genesis-dist's model or training has only one setting of."""
    known = TRANSLATED[model] | set(FIXED[model]) | TRAINING_FLAGS | OTHER_MODELS[model] | NO_EFFECT
    unknown = sorted(set(flags) - known - set(ignore))
    if unknown:
        raise ReleaseError(f"flags.json: unknown flag{'s' * (len(unknown) > 1)} {', '.join(unknown)} (not a flag of "
                           f"the authors' {model} this importer knows; --ignore-flag NAME imports without it)")
    unsupported = [f"{name}={flags[name]!r} (genesis-dist: {value!r})" for name, value in FIXED[model].items()
                   if name in flags and flags[name] != value and name not in ignore]
    if model == "genesis_v2" and _flag(flags, "klm_loss") and not _flag(flags, "detach_mr_in_klm"):
        unsupported.append("detach_mr_in_klm=False with klm_loss (genesis-dist: the decoder masks are detached, Eq. 7)")
    if _flag(flags, "pixel_std1") != _flag(flags, "pixel_std2"):
        unsupported.append(f"pixel_std1={_flag(flags, 'pixel_std1')} ≠ pixel_std2={_flag(flags, 'pixel_std2')} "
                           "(genesis-dist: one σ_x for every slot)")
    if _flag(flags, "optimiser") != "adam":
        unsupported.append(f"optimiser={_flag(flags, 'optimiser')!r} (genesis-dist trains with 'adam')")
    if not _flag(flags, "geco") and _flag(flags, "beta_warmup"):
        unsupported.append("beta_warmup=True (genesis-dist: a fixed β without GECO)")
    if unsupported:
        raise ReleaseError(f"flags.json: unsupported flag{'s' * (len(unsupported) > 1)}: {'; '.join(unsupported)}")


def _model_overrides(flags: Mapping[str, Any], model: str, size: int, slots: int) -> list[str]:
    common = [f"model.img_size={size}", f"model.num_slots={slots}", f"model.pixel_std={_flag(flags, 'pixel_std1')}"]
    if model == "genesis":
        if size not in (32, 64):
            raise ReleaseError(f"flags.json: img_size={size}: their GENESIS changes its gated-conv strides at "
                               "128 px; genesis-dist imports GENESIS at 32 and 64 px")
        return common + [f"model.latent_dim={_flag(flags, 'attention_latents')}",
                         f"model.component_latent_dim={_flag(flags, 'comp_ldim')}", "model.prior_hidden=256"]
    feat = int(_flag(flags, "feat_dim"))
    if feat > 64 or feat % 8:
        raise ReleaseError(f"flags.json: feat_dim={feat}: their GENESIS-V2 runs with feat_dim ≤ 64, a multiple "
                           "of its 8 GroupNorm groups")
    if size < 64:
        raise ReleaseError(f"flags.json: img_size={size}: their UNet below 64 px has another layout than "
                           "genesis-dist's (import 64 and 128 px models)")
    stop = DYNAMIC_K_PIXELS if _flag(flags, "dynamic_K") else None
    return common + [
        f"model.latent_dim={feat}", f"model.feature_dim={2 * feat}", f"model.encoder_filters={feat}",
        f"model.head_filters={feat}", f"model.decoder_filters={feat}", f"model.prior_hidden={4 * feat}",
        "model.mlp_hidden=128", "model.embedding_dim=8", f"model.kernel={_flag(flags, 'kernel')}",
        f"model.mask_loss={str(bool(_flag(flags, 'klm_loss'))).lower()}",
        f"model.stop_pixels={'null' if stop is None else stop}",
    ]


def _training_overrides(flags: Mapping[str, Any], size: int) -> list[str]:
    out = [f"optim.lr={_flag(flags, 'learning_rate')}", f"optim.batch_size={_flag(flags, 'batch_size')}",
           f"optim.steps={int(_flag(flags, 'train_iter')) + 1}", f"run.seed={_flag(flags, 'seed')}"]
    if not _flag(flags, "geco"):
        return out + ["objective.name=elbo", f"objective.beta={_flag(flags, 'beta')}"]
    g_lr = float(_flag(flags, "g_lr"))
    # Their λ is g_lr · 64²/(H·W); ours the same with g_lr = 1e-5 unless objective.step_size is set.
    step = "null" if g_lr == AUTHORS_DEFAULTS["g_lr"] else repr(g_lr * 64 * 64 / (size * size))
    return out + ["objective.name=geco", f"objective.goal={_flag(flags, 'g_goal')}", f"objective.step_size={step}",
                  f"objective.alpha={_flag(flags, 'g_alpha')}", f"objective.beta_init={_flag(flags, 'g_init')}",
                  f"objective.beta_min={_flag(flags, 'g_min')}", f"objective.speedup={_flag(flags, 'g_speedup')}"]


def config_from_flags(flags: Mapping[str, Any], overrides: Iterable[str] = (), ignore: Iterable[str] = ()) -> DictConfig:
    """Our resolved config for a release's flags: `model=M data=D` (the paper setting of that
    model and dataset), the flags' model, objective and optimiser settings on top, then
    `overrides` (`key=value`, e.g. data.url); local paths made absolute, as `train` stores them.
    Raises ReleaseError (or ConfigError) in one line."""
    model = release_model(flags)
    data, default_size, default_slots = release_data(flags)
    _check_flags(flags, model, ignore)
    size = int(flags.get("img_size", -1))
    slots = int(flags.get("K_steps", -1))
    size = default_size if size < 0 and default_size else size
    slots = default_slots if slots < 0 and default_slots else slots
    if size <= 0 or slots <= 0:
        raise ReleaseError(f"flags.json: img_size={size}, K_steps={slots}: both must be set")
    words = [f"model={model}", f"data={data}", *_model_overrides(flags, model, size, slots),
             *_training_overrides(flags, size)]
    user = list(overrides)
    if not any(o.split("=", 1)[0] == "run.name" for o in user):
        user.append(f"run.name={model}-{data}-release")
    return with_absolute_paths(load_config(words + user))


def load_authors_checkpoint(path: str) -> dict[str, Any]:
    """Their checkpoint dict, read with `torch.load(weights_only=True)` on the CPU."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is one line
        raise ReleaseError(f"{path}: not loadable with torch.load(weights_only=True) "
                           f"({type(err).__name__}: {str(err).strip().splitlines()[0][:200]})") from None
    if not isinstance(checkpoint, dict) or "model_state_dict" not in checkpoint:
        found = ", ".join(map(str, checkpoint)) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ReleaseError(f"{path}: not an authors' checkpoint (no model_state_dict; found {found})")
    return checkpoint


def _number(value: Any) -> float | None:
    if value is None:
        return None
    return float(value.item() if isinstance(value, torch.Tensor) else value)


def steps_taken(checkpoint_file: str, iter_idx: int) -> int:
    """Optimiser steps a checkpoint of theirs had taken (module docstring)."""
    return int(iter_idx) if os.path.basename(checkpoint_file).endswith("-FINAL") else int(iter_idx) + 1


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- Importing -----------------------------------------------------------------------------------

@dataclass
class Imported:
    """What `import_release` wrote: the run folder, its checkpoint, and the numbers carried over."""

    run_url: str
    checkpoint_url: str
    config: DictConfig
    step: int
    beta: float
    err_ema: float | None
    optimizer: str
    provenance: dict[str, Any] = field(default_factory=dict)


def _optimizer_state(state: TrainState, checkpoint: Mapping[str, Any], theirs: Mapping[str, torch.Tensor]) -> str:
    """Load their Adam state into `state.optimizer` (moments mapped like the weights); returns
    what was done, for the provenance."""
    saved = checkpoint.get("optimiser_state_dict")
    if not saved:
        return "none in the file (Adam starts afresh)"
    groups = saved.get("param_groups") or [{}]
    group = groups[0]
    ours = state.optimizer.param_groups[0]
    different = [f"{k}={group[k]!r} (genesis-dist: {ours[k]!r})" for k in ("betas", "eps", "weight_decay", "amsgrad")
                 if k in group and _normalised(group[k]) != _normalised(ours[k])]
    if len(groups) != 1 or different:
        raise ReleaseError("optimiser_state_dict: " + ("; ".join(different) or f"{len(groups)} parameter groups")
                           + " cannot be continued by genesis-dist's Adam")
    named = optimizer_state_from_authors(state.module, saved, theirs)
    index = {name: i for i, (name, _) in enumerate(state.module.named_parameters())}
    template = state.optimizer.state_dict()
    state.optimizer.load_state_dict({"state": {index[name]: entry for name, entry in named.items()},
                                     "param_groups": template["param_groups"]})
    return f"Adam state of {len(named)} of {len(index)} parameter tensors mapped"


def _normalised(value: Any) -> Any:
    return tuple(float(v) for v in value) if isinstance(value, (list, tuple)) else value


def _at_step(state: TrainState, step: int) -> None:
    """Put the learning-rate schedule where a run that took `step` steps has it."""
    lr = state.schedule.base_lrs[0]
    saved = state.schedule.state_dict()  # the fields `schedule.step()` advances, as `step` calls leave them
    saved.update(last_epoch=step, _step_count=step + 1,
                 _last_lr=[base * state.schedule.lr_lambdas[0](step) for base in state.schedule.base_lrs])
    state.schedule.load_state_dict(saved)
    set_base_lr(state.optimizer, state.schedule, lr)
    state.step = step


def import_release(source: str, overrides: Iterable[str] = (), ignore_flags: Iterable[str] = ()) -> Imported:
    """Convert the release at `source` (a folder or its checkpoint file) into a run folder
    `{run.storage_path}/{run.name}` (`overrides` set them and anything else of the config).
    Everything is read, mapped and checked before anything is written; a run folder that
    already exists is refused. Raises ReleaseError / ConfigError / AuthorsFormatError."""
    flags_path, checkpoint_path = find_release(source)
    flags = read_flags(flags_path)
    cfg = config_from_flags(flags, overrides, ignore_flags)
    checkpoint = load_authors_checkpoint(checkpoint_path)
    theirs = checkpoint["model_state_dict"]
    found = detect_model(theirs)
    if found is not None and found != cfg.model.name:
        raise ReleaseError(f"{checkpoint_path}: holds the authors' {found}, but {flags_path} names "
                           f"{flags.get('model_config')} ({cfg.model.name})")
    state = build_state(cfg, RankPlan.single(cfg, torch.device("cpu")))
    state.module.load_state_dict(from_authors(state.module, theirs))
    optimizer = _optimizer_state(state, checkpoint, theirs)
    if "iter_idx" not in checkpoint:
        raise ReleaseError(f"{checkpoint_path}: no iter_idx (the step it was saved at)")
    step = steps_taken(checkpoint_path, checkpoint["iter_idx"])
    _at_step(state, step)
    beta, err_ema = _number(checkpoint.get("beta")), _number(checkpoint.get("err_ema"))
    if cfg.objective.name == "geco":
        state.objective.load_state_dict({"beta": cfg.objective.beta_init if beta is None else beta, "err_ema": err_ema})
    provenance = {
        "source": os.path.abspath(checkpoint_path), "sha256": _sha256(checkpoint_path),
        "flags": os.path.abspath(flags_path), "flags_sha256": _sha256(flags_path),
        "authors_model_config": flags.get("model_config"), "authors_data_config": flags.get("data_config"),
        "authors_commit": flags.get("git_commit"), "authors_iter_idx": int(checkpoint["iter_idx"]), "step": step,
        "beta": beta, "err_ema": err_ema, "optimizer": optimizer,
        "imported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return _write_run(cfg, state, provenance)


def _write_run(cfg: DictConfig, state: TrainState, provenance: dict[str, Any]) -> Imported:
    run_url = join(cfg.run.storage_path, cfg.run.name)
    storage_options = dict(cfg.data.storage_options)
    fs, run_path = filesystem(run_url, storage_options)
    if list_names(run_url, storage_options):
        raise ReleaseError(f"{run_url} already exists; choose another --name (or --out)")
    checkpoint_url = join(run_url, checkpoint_name(state.step))
    meta = {"step": state.step, "best_score": None, "metrics": None, "eval": {}, "data_skipped": 0,
            "data_position": None, "config": without_secrets(OmegaConf.to_container(cfg)), "imported": provenance}
    try:
        save_checkpoint_with_worker(checkpoint_url, state, meta, storage_options)
        fs.pipe_file(f"{run_path}/{RELEASE_FILE}", (json.dumps(provenance, indent=1) + "\n").encode())
        write_run_config(cfg)
    except BaseException:
        fs.rm(run_path, recursive=True)
        raise
    return Imported(run_url, checkpoint_url, cfg, state.step, state.objective.beta,
                    state.objective.state_dict().get("err_ema"), provenance["optimizer"], provenance)


def save_checkpoint_with_worker(url: str, state: TrainState, meta: dict[str, Any], storage_options: dict | None) -> None:
    """A checkpoint folder a run resumes from: `worker_0.pt` (no data position and no RNG state:
    the resumed run starts its data at the beginning and seeds its noise from run.seed and the
    step), `state.pt`, then `meta.json`."""
    fs, path = filesystem(url, storage_options)
    fs.makedirs(path, exist_ok=True)
    worker = {"rng": None, "data": None, "data_skipped": 0, "beta": state.objective.beta,
              "params_sha256": parameters_digest(state.module)}
    buffer = io.BytesIO()
    torch.save(worker, buffer)
    fs.pipe_file(f"{path}/{worker_file(0)}", buffer.getvalue())
    save_checkpoint(url, state.state_dict(), meta, storage_options)


def read_release(run_url: str, storage_options: dict | None = None) -> dict[str, Any] | None:
    """A run folder's `release.json` (its provenance when imported from a release), or None."""
    fs, path = filesystem(join(run_url, RELEASE_FILE), storage_options)
    try:
        return json.loads(fs.cat_file(path))
    except (FileNotFoundError, ValueError):
        return None


# --- Exporting -----------------------------------------------------------------------------------

def flags_from_config(cfg: DictConfig) -> dict[str, Any]:
    """The flags.json of the authors' code for our config (their scripts rebuild the model
    from it); raises ReleaseError for a model their code cannot express."""
    m, name = cfg.model, cfg.model.name
    if name not in MODEL_FILES:
        raise ReleaseError(f"model.name={name}: the authors' code has GENESIS-V2 and GENESIS only")
    if cfg.data.name not in DATA_FILES:
        raise ReleaseError(f"data.name={cfg.data.name}: no data config of the authors' code reads it")
    # Their model constructors also read `debug` and `multi_gpu`.
    flags: dict[str, Any] = {"model_config": MODEL_FILES[name], "data_config": DATA_FILES[cfg.data.name],
                             "K_steps": m.num_slots, "img_size": m.img_size, "pixel_std1": m.pixel_std,
                             "pixel_std2": m.pixel_std, "debug": False, "multi_gpu": False}
    if cfg.data.name in MULTI_OBJECT_DATASETS:
        flags["dataset"] = cfg.data.name
    if name == "genesis_v2":
        feat = m.latent_dim
        expected = {"feature_dim": 2 * feat, "encoder_filters": feat, "head_filters": feat, "decoder_filters": feat,
                    "prior_hidden": 4 * feat, "mlp_hidden": 128, "embedding_dim": 8}
        if m.img_size < 64:
            expected["img_size"] = "≥ 64"
        different = [f"model.{k}={m[k]} (theirs: {v})" for k, v in expected.items() if m[k] != v]
        if different:
            raise ReleaseError(f"the authors' GENESIS-V2 cannot express {'; '.join(different)}")
        flags.update(feat_dim=feat, kernel=m.kernel, klm_loss=bool(m.mask_loss), detach_mr_in_klm=True,
                     dynamic_K=m.stop_pixels is not None, semiconv=True)
    else:
        if m.img_size not in (32, 64) or m.prior_hidden != 256:
            raise ReleaseError(f"the authors' GENESIS cannot express model.img_size={m.img_size}, "
                               f"model.prior_hidden={m.prior_hidden} (theirs: 32 or 64 px, 256)")
        flags.update(attention_latents=m.latent_dim, comp_ldim=m.component_latent_dim)
    flags.update({k: v for k, v in FIXED[name].items() if k != "input_channels"})
    o = cfg.objective
    flags.update(learning_rate=cfg.optim.lr, batch_size=cfg.optim.batch_size, train_iter=cfg.optim.steps - 1,
                 optimiser="adam", seed=cfg.run.seed, geco=o.name == "geco", beta=o.beta, beta_warmup=False)
    if o.name == "geco":
        step = o.step_size * m.img_size**2 / (64 * 64) if o.step_size is not None else AUTHORS_DEFAULTS["g_lr"]
        flags.update(g_goal=o.goal, g_lr=step, g_alpha=o.alpha, g_init=o.beta_init, g_min=o.beta_min,
                     g_speedup=o.speedup)
    elif o.name != "elbo":
        raise ReleaseError(f"objective.name={o.name}: the authors' code trains with GECO or a fixed β")
    return dict(sorted(flags.items()))


def checkpoint_to_export(url: str, storage_options: dict | None = None) -> str:
    """A checkpoint folder, `RUN/best`, or a run folder (its newest complete checkpoint)."""
    url = resolve_checkpoint(url, storage_options)
    fs, path = filesystem(join(url, META_FILE), storage_options)
    if fs.exists(path):
        return url
    latest = latest_complete_checkpoint(url, storage_options)
    if latest is None:
        raise CheckpointError(f"{url}: neither a checkpoint folder nor a run folder with a complete checkpoint")
    return latest[1]


def export_checkpoint(url: str, out: str, file_name: str = FINAL_FILE, storage_options: dict | None = None) -> str:
    """Write our checkpoint at `url` as a release folder `out` (flags.json and `file_name`),
    which the authors' scripts load (`--model_dir OUT --model_file model.ckpt-FINAL`). Returns
    the checkpoint file's path. The folder must not hold that file yet."""
    if not CHECKPOINT_FILE.match(file_name):
        raise ReleaseError(f"--file {file_name}: their scripts read model.ckpt-FINAL, -latest or -<iter>")
    url = checkpoint_to_export(url, storage_options)
    saved, meta = load_checkpoint(url, storage_options)
    cfg = resolved_config(meta["config"], f"{url}/{META_FILE}")
    flags = flags_from_config(cfg)
    state = build_state(cfg, RankPlan.single(cfg, torch.device("cpu")))
    state.load_state_dict(saved, int(meta["step"]))
    module = state.module
    named = {name: state.optimizer.state[p] for name, p in module.named_parameters() if state.optimizer.state.get(p)}
    group = state.optimizer.param_groups[0]
    layout = authors_layout(module)
    step = int(meta["step"])
    checkpoint: dict[str, Any] = {
        "model_state_dict": to_authors(module, module.state_dict()),
        "optimiser_state_dict": {
            "state": optimizer_state_to_authors(module, named),
            "param_groups": [{"lr": group["lr"], "betas": tuple(group["betas"]), "eps": group["eps"],
                              "weight_decay": group["weight_decay"], "amsgrad": group["amsgrad"],
                              "params": list(range(len(layout.parameter_order())))}],
        },
        "beta": torch.tensor(state.objective.beta, dtype=torch.float64),
        "iter_idx": step if file_name.endswith("-FINAL") else step - 1,
    }
    err_ema = state.objective.state_dict().get("err_ema")
    if err_ema is not None:
        checkpoint["err_ema"] = torch.tensor(err_ema, dtype=torch.float64)
    target = os.path.join(out, file_name)
    if os.path.exists(target):
        raise ReleaseError(f"{target} exists; export into another folder")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, FLAGS_FILE), "w") as f:
        json.dump(flags, f, indent=4, sort_keys=True)
        f.write("\n")
    torch.save(checkpoint, target)
    return target

