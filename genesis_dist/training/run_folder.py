"""A run's folder, `{run.storage_path}/{run.name}`, before training starts: absolute
local paths, the dataset it needs, its stored resolved config and the check that a
re-run is the same run. Ray-free (the train and tune commands call it)."""
from __future__ import annotations

import os

from omegaconf import DictConfig, OmegaConf

from ..config import ConfigError, resume_conflicts
from ..storage import StorageError, filesystem, is_remote, join, storage_errors, without_secrets

RUN_CONFIG_FILE = "config.yaml"


def run_url(cfg: DictConfig) -> str:
    """`{run.storage_path}/{run.name}`."""
    return join(cfg.run.storage_path, cfg.run.name)


def ensure_dataset(cfg: DictConfig) -> None:
    """Generate a small Multi-dSprites shard set at `data.url` if it is missing and
    `data.generate_if_missing` is set; otherwise fail clearly when it is missing."""
    fs, path = filesystem(join(cfg.data.url, "manifest.json"), dict(cfg.data.storage_options))
    with storage_errors(cfg.data.url):
        found = fs.exists(path)
        if not found and is_remote(cfg.data.url):
            bucket = fs._strip_protocol(cfg.data.url).split("/", 1)[0]
            if not fs.exists(bucket):
                raise StorageError(f"{cfg.data.url}: no bucket {bucket!r} (or it is not visible with these credentials)",
                                   "not_found")
    if found:
        from ..data import read_manifest

        resolution = read_manifest(cfg.data.url, dict(cfg.data.storage_options)).get("resolution")
        if resolution is not None and resolution != cfg.model.img_size:
            raise ConfigError(
                f"data.url={cfg.data.url} holds {resolution} px images but model.img_size={cfg.model.img_size}; "
                f"set model.img_size={resolution} or convert the data at {cfg.model.img_size} px"
            )
        return
    if not cfg.data.generate_if_missing or is_remote(cfg.data.url):
        message = (f"data.url={cfg.data.url}: no manifest.json there; convert a dataset with tools/shard.py"
                   + ("" if is_remote(cfg.data.url) else
                      " or add data.generate_if_missing=true for a generated Multi-dSprites set there"))
        if is_remote(cfg.data.url):
            raise StorageError(message, "not_found")
        raise ConfigError(message)
    if cfg.data.name != "multi_dsprites":
        raise ConfigError(f"data.generate_if_missing only generates multi_dsprites, not {cfg.data.name}")
    from ..data.formats import multi_dsprites

    print(
        f"[genesis-dist] generating Multi-dSprites at {cfg.data.url} "
        f"({cfg.data.generate_train} train / {cfg.data.generate_test} test, {cfg.model.img_size} px)",
        flush=True,
    )
    multi_dsprites.convert(
        cfg.data.url,
        sizes={cfg.data.train_split: cfg.data.generate_train, cfg.data.eval_split: cfg.data.generate_test},
        img_size=cfg.model.img_size,
        seed=cfg.run.seed,
    )


def only_generate_where_configured(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """The rule against generating data at a typo: when `data.url` was typed on the command
    line (`overrides`) and `data.generate_if_missing` was not, generation is off, so a
    data.url without a dataset is an error naming it rather than a new dataset there. The
    demo's own data.url (from its config file) still generates on first use."""
    said = {item.split("=", 1)[0].lstrip("+~") for item in overrides if "=" in item}
    if not cfg.data.generate_if_missing or "data.url" not in said or "data.generate_if_missing" in said:
        return cfg
    cfg = cfg.copy()
    OmegaConf.set_readonly(cfg, False)
    cfg.data.generate_if_missing = False
    OmegaConf.set_readonly(cfg, True)
    return cfg


def with_absolute_paths(cfg: DictConfig) -> DictConfig:
    """Local `data.url` / `run.storage_path` made absolute: Ray workers run in
    another working directory than the driver."""
    cfg = cfg.copy()
    OmegaConf.set_readonly(cfg, False)
    for key in ("data.url", "run.storage_path"):
        value = OmegaConf.select(cfg, key)
        if not is_remote(value):
            OmegaConf.update(cfg, key, os.path.abspath(os.path.expanduser(value.removeprefix("file://"))))
    OmegaConf.set_readonly(cfg, True)
    return cfg


def check_run_identity(cfg: DictConfig) -> str:
    """Refuse to resume another run: compare `cfg` with the run folder's stored
    `config.yaml`. Returns "new" or "resume"; raises ConfigError naming the keys that
    differ outside `config.MAY_CHANGE_ON_RESUME`."""
    stored_url = join(run_url(cfg), RUN_CONFIG_FILE)
    fs, path = filesystem(stored_url, dict(cfg.data.storage_options))
    with storage_errors(stored_url):
        if not fs.exists(path):
            return "new"
        stored = OmegaConf.create(fs.cat_file(path).decode())
    conflicts = resume_conflicts(stored, cfg)
    if conflicts:
        shown = ", ".join(f"{k} ({OmegaConf.select(stored, k)!r} → {OmegaConf.select(cfg, k)!r})" for k in conflicts[:4])
        more = f" and {len(conflicts) - 4} more" if len(conflicts) > 4 else ""
        raise ConfigError(
            f"run {cfg.run.name!r} in {cfg.run.storage_path} was started with another config: {shown}{more}; "
            f"choose another run.name (or run.storage_path) to start a new run"
        )
    return "resume"


def write_run_config(cfg: DictConfig) -> None:
    """The resolved config, kept in the run folder (`python -m genesis_dist.train --config` takes
    it) without secrets (`storage.without_secrets`: they come from the credential chain)."""
    url = join(run_url(cfg), RUN_CONFIG_FILE)
    fs, path = filesystem(url, dict(cfg.data.storage_options))
    with storage_errors(url):
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        fs.pipe_file(path, OmegaConf.to_yaml(without_secrets(OmegaConf.to_container(cfg))).encode())




def prepare_run(cfg: DictConfig) -> DictConfig:
    """Everything before training: absolute local paths, the identity check, the dataset
    (generated if the config asks), the stored `config.yaml`. Returns the config to
    train (raises ConfigError for a user mistake)."""
    cfg = with_absolute_paths(cfg)
    check_run_identity(cfg)
    ensure_dataset(cfg)
    write_run_config(cfg)
    return cfg
