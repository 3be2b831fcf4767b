"""Record the authors' GENESIS-V2 and GENESIS, stage by stage, for tests/test_import_model.py.

    python tools/authors_fixtures.py --authors-dir /path/to/applied-ai-lab/genesis [--out tests/fixtures/authors]
    python tools/authors_fixtures.py --authors-dir /path/to/applied-ai-lab/genesis --check-export

Needs a checkout of the authors' code (github.com/applied-ai-lab/genesis, GPL-3.0, with its
`forge` submodule): it is imported from that path at run time and never copied here. For each
case (GENESIS-V2 at 64 and 128 px, GENESIS at 64 px) it builds their model in float64, fills it
with the deterministic weights of `authors_weight` (values exactly representable in float32, as
a released float32 checkpoint's are), runs it on the images of `authors_images` and records, in
float64, every stage (encoder, embeddings, attention masks, posterior, decoder, prior, losses,
samples) and every random draw their code made (so our model can replay the same noise). It
writes per case, under `--out/<case>/`: `flags.json` (the flags a run of theirs stores), `layout.json`
(their state dict: names, shapes, dtypes, which are parameters, in their order) and `stages.pt`.
No weights are stored: the test rebuilds the checkpoint from `authors_weight` and the layout
(GENESIS's BatchNorm statistics, a few thousand numbers, are stored: see `_warm_batchnorm`).

Their code imports TensorFlow, attrdict, simplejson and forge's TensorFlow tools, none of which
the models need; `_stub_unneeded_modules` puts minimal stand-ins in `sys.modules` for exactly
those imports (documented there). The model and loss code that runs is theirs, unmodified.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.machinery
import json
import math
import subprocess
import sys
import types
import zlib
from pathlib import Path

import torch

# Spatial stages are stored every `stride` pixels to keep the fixtures small (the test compares
# ours at the same pixels); the attention masks at 64 and 128 px and the decoder masks at 64 px whole.
STRIDES = {
    "genesis_v2_64": ({"encoder": 4, "att_log_masks": 1, "log_masks": 1}, 2),
    "genesis_v2_128": ({"encoder": 8, "att_log_masks": 1}, 4),
    "genesis_64": ({"log_masks": 1}, 2),
}

# The modules whose flags a run of each model defines (their config files import one another).
MODEL_FLAG_MODULES = {
    "models/genesisv2_config.py": ("models.genesisv2_config", "models.genesis_config", "models.monet_config"),
    "models/genesis_config.py": ("models.genesis_config",),
}

CASES = {
    # case: (model config file, data config file, flag overrides, batch size)
    "genesis_v2_64": ("models/genesisv2_config.py", "datasets/shapestacks_config.py",
                      {"K_steps": 3, "img_size": 64, "klm_loss": True}, 2),
    "genesis_v2_128": ("models/genesisv2_config.py", "datasets/sketchy_config.py",
                       {"K_steps": 3, "img_size": 128, "g_goal": 0.5645, "kernel": "laplacian"}, 1),
    "genesis_64": ("models/genesis_config.py", "datasets/multid_config.py", {"K_steps": 3, "img_size": 64}, 2),
}


# --- The deterministic weights and images (the test imports these two functions) ---------------

def authors_weight(name: str, shape: tuple[int, ...], num_slots: int, pixel_std: float = 0.7,
                   fan_in: int | None = None) -> torch.Tensor:
    """The value of the authors' tensor `name` of `shape` in the fixtures: a sinusoid over the
    flattened index with a phase from the name's CRC32, scaled like an initialisation (1.5/√fan-in
    for weights, `fan_in` defaulting to the elements per output row; 0.1 for biases; around 1 for
    norm scales; positive running variances), rounded to float32 and returned in float64. Scalars: the IC-SBP log σ at its Gaussian initialisation for K
    slots plus 0.25, the semi-convolution gate 0.8 (open, so its 1×1 conv and its coordinate rows
    matter); GENESIS's σ_x buffer `std` is `pixel_std` (not rounded: their code builds it from the flag)."""
    phase = (zlib.crc32(name.encode()) % 10_000) / 10_000 * 2 * math.pi
    numel = math.prod(shape)
    wave = torch.sin(0.37 * torch.arange(numel, dtype=torch.float64) + phase).reshape(shape)
    leaf = name.rsplit(".", 1)[-1]
    if name == "std":  # built by their code from the pixel_std flags (a float32 checkpoint rounds it)
        return torch.full(shape, pixel_std, dtype=torch.float64)
    if leaf == "log_sigma":
        value = torch.tensor(math.log(1.0 / (num_slots * math.log(2.0))) + 0.25, dtype=torch.float64)
    elif leaf == "gate":
        value = torch.tensor(0.8, dtype=torch.float64)
    elif leaf == "num_batches_tracked":
        return torch.full(shape, 7, dtype=torch.int64)
    elif leaf == "running_mean":
        value = 0.1 * wave
    elif leaf == "running_var":
        value = 0.5 + wave**2
    elif len(shape) >= 2:
        value = 1.5 / math.sqrt(fan_in or numel // shape[0]) * wave
    elif leaf.startswith("bias"):
        value = 0.1 * wave
    else:  # GroupNorm, LayerNorm and BatchNorm scales
        value = 1.0 + 0.2 * wave
    return value.float().double()


def authors_images(batch: int, size: int) -> torch.Tensor:
    """`[batch, 3, size, size]` float64 images in [0, 1]: smooth coloured blobs and stripes."""
    b, c, y, x = torch.meshgrid(torch.arange(batch, dtype=torch.float64), torch.arange(3, dtype=torch.float64),
                                torch.linspace(-1, 1, size, dtype=torch.float64),
                                torch.linspace(-1, 1, size, dtype=torch.float64), indexing="ij")
    blob = torch.exp(-((x - 0.4 * torch.cos(b + c)) ** 2 + (y - 0.3 * torch.sin(2 * b + c)) ** 2) / 0.08)
    stripes = 0.5 + 0.5 * torch.sin(5 * x + 3 * y * (b + 1) + 2 * c)
    return (0.15 + 0.55 * blob + 0.3 * stripes * (1 - blob)).clamp(0, 1)


# --- Running the authors' code ---------------------------------------------------------------

class _AttrDict(dict):
    """Stand-in for attrdict.AttrDict (that package does not import on Python ≥ 3.10): a dict
    whose keys are also attributes."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None

    def __setattr__(self, key, value):
        self[key] = value


def _module(name: str) -> types.ModuleType:
    """An empty module with a spec (torch's import machinery looks for one)."""
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    return module


def _stub_unneeded_modules(defined_flags: dict) -> None:
    """Stand-ins for imports of the authors' code that their models do not use:
    - `tensorflow`: imported by `utils/misc.py` and forge for data loading only (an empty module);
    - `attrdict`: `_AttrDict` (the package's `AttrDefault` only serves their evaluation loop);
    - `simplejson`: the standard `json`;
    - `forge`, `forge.flags`, `forge.experiment_tools`: forge needs TensorFlow; their config files
      only call `flags.DEFINE_*` at import (recorded into `defined_flags`: defining module →
      {name: default}) and
      `fprint` (print);
    - `scripts.compute_fid`: `train.py` imports its `fid_from_model` for the FID after training
      (it needs imageio and their copy of pytorch-fid); only `train.main_flags` is used here."""
    sys.modules["tensorflow"] = _module("tensorflow")
    attrdict = _module("attrdict")
    attrdict.AttrDict = attrdict.AttrDefault = _AttrDict
    sys.modules["attrdict"] = attrdict
    sys.modules["simplejson"] = json
    forge = _module("forge")
    flags = _module("forge.flags")
    for kind in ("string", "integer", "boolean", "float", "bool"):
        setattr(flags, f"DEFINE_{kind}", lambda name, default, doc, *a, **k: defined_flags.setdefault(
            sys._getframe(1).f_globals.get("__name__"), {}).__setitem__(name, default))
    tools = _module("forge.experiment_tools")
    tools.fprint = lambda *args, **kwargs: None
    forge.flags, forge.experiment_tools = flags, tools
    sys.modules.update({"forge": forge, "forge.flags": flags, "forge.experiment_tools": tools})
    fid = _module("scripts.compute_fid")
    fid.fid_from_model = None
    sys.modules["scripts.compute_fid"] = fid


class NoiseRecorder:
    """Records every random draw the authors' code makes, in order: `Normal.rsample`'s ε (torch's
    `_standard_normal`), `Normal.sample` (`torch.normal(mean, std)`, computed here as
    `mean + std · ε` with ε recorded — the same distribution, and our models' expression) and
    `Tensor.uniform_` (the IC-SBP's seed scores)."""

    def __init__(self):
        self.draws: list[tuple[str, torch.Tensor]] = []

    def __enter__(self):
        import torch.distributions.normal as normal_module

        self._normal_module = normal_module
        self._standard_normal = normal_module._standard_normal
        self._normal, self._uniform = torch.normal, torch.Tensor.uniform_

        def standard_normal(shape, dtype, device):
            eps = self._standard_normal(shape, dtype=dtype, device=device)
            self.draws.append(("normal", eps.detach().clone()))
            return eps

        def normal(mean, std, *args, **kwargs):
            eps = torch.randn(mean.shape, dtype=mean.dtype, device=mean.device)
            self.draws.append(("normal", eps.clone()))
            return mean + std * eps

        def uniform(tensor, *args, **kwargs):
            out = self._uniform(tensor, *args, **kwargs)
            self.draws.append(("uniform", tensor.detach().clone()))
            return out

        normal_module._standard_normal = standard_normal
        torch.normal, torch.Tensor.uniform_ = normal, uniform
        return self

    def __exit__(self, *exc):
        self._normal_module._standard_normal = self._standard_normal
        torch.normal, torch.Tensor.uniform_ = self._normal, self._uniform

    def take(self) -> list[tuple[str, torch.Tensor]]:
        draws, self.draws = self.draws, []
        return draws


def _keep_first(store: dict, key: str, value: torch.Tensor) -> None:
    """A forward hook's body: keep the first call's output (a hook must return None)."""
    store.setdefault(key, value.detach().clone())


def _stack(tensors) -> torch.Tensor:
    return torch.stack([t.detach() for t in tensors], dim=1).double()


def _fans(model: torch.nn.Module) -> dict[str, int]:
    """Fan-in of each transposed convolution's weight (where the elements per output row are not
    it): input channels × kernel area / stride², or the input channels alone for their 'fully
    connected' transposed layer (from a 1×1 map, every output pixel sees one input)."""
    fans = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ConvTranspose2d):
            k, s = module.kernel_size[0], module.stride[0]
            fans[f"{name}.weight"] = module.in_channels if module.padding[0] == 0 and k > 5 else module.in_channels * k * k // (s * s)
    return fans


def _fill(model: torch.nn.Module, num_slots: int, pixel_std: float) -> None:
    state, fans = model.state_dict(), _fans(model)
    model.load_state_dict({k: authors_weight(k, tuple(v.shape), num_slots, pixel_std, fans.get(k)).to(v.dtype)
                           for k, v in state.items()})


def _layout(model: torch.nn.Module) -> dict:
    parameters = [name for name, _ in model.named_parameters()]
    return {"keys": [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in model.state_dict().items()],
            "parameters": parameters, "fan_in": _fans(model)}


def _record_genesis_v2(module, genesis_module, cfg, batch: int) -> dict:
    model = module.GenesisV2(cfg).double()
    _fill(model, cfg.K_steps, cfg.pixel_std1)
    x = authors_images(batch, cfg.img_size)
    features = {}
    model.encoder.register_forward_hook(lambda m, i, out: _keep_first(features, "encoder", out[0]))
    model.train()
    with NoiseRecorder() as noise:
        recon, losses, stats, att_stats, comp_stats = model(x)
        forward_noise = noise.take()
        _, p_z_k = genesis_module.Genesis.mask_latent_loss(comp_stats.q_z_k, comp_stats.z_k,
                                                           prior_lstm=model.prior_lstm, prior_linear=model.prior_linear)
        model.eval()
        with torch.no_grad():
            sample, sample_stats = model.sample(batch)
        sample_noise = noise.take()
    stages = {
        "encoder": features["encoder"],
        "embeddings": att_stats.colour.detach(),
        "att_log_masks": _stack(stats.log_m_k),
        "q_mean": _stack(comp_stats.mu_k), "q_std": _stack(comp_stats.sigma_k), "z": _stack(comp_stats.z_k),
        "p_mean": _stack([p.mean for p in p_z_k[1:]]), "p_std": _stack([p.scale for p in p_z_k[1:]]),
        "components": _stack(stats.x_r_k), "log_masks": _stack(stats.log_m_r_k), "recon": recon.detach(),
        "err": losses.err.detach(), "kl": _stack(losses.kl_l_k),
        "sample_images": sample.detach(), "sample_components": _stack(sample_stats.x_k),
        "sample_log_masks": _stack(sample_stats.log_m_k),
    }
    if cfg.klm_loss:
        stages["mask_loss"] = losses.kl_m.detach()
    return {"images": x, "stages": stages, "noise": {"forward": forward_noise, "sample": sample_noise}}


def _warm_batchnorm(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Set every BatchNorm's running statistics to those of one training-mode batch of `x` (the
    formula's statistics are far from the activations': in eval mode the normalised maps would
    hardly depend on the latents, and the eval and sampling stages would test little). Returns
    the buffers, which the fixture stores (a few thousand numbers) in place of the formula's."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for norm in norms:
        norm.momentum = 1.0
    model.train()
    with torch.no_grad():
        model(x)
    for norm in norms:
        norm.momentum = 0.1
    buffers = {k: v.detach().float().to(v.dtype) for k, v in model.state_dict().items()
               if k.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked")}
    model.load_state_dict(buffers, strict=False)  # as a float32 checkpoint holds them
    return buffers


def _record_genesis(module, cfg, batch: int) -> dict:
    model = module.Genesis(cfg).double()
    _fill(model, cfg.K_steps, cfg.pixel_std1)
    x = authors_images(batch, cfg.img_size)
    buffers = _warm_batchnorm(model, x)
    features = {}
    model.att_process.core.q_z_nn.register_forward_hook(
        lambda m, i, out: _keep_first(features, "encoder", out.flatten(1)))
    model.train()
    with NoiseRecorder() as noise:
        recon, losses, stats, att_stats, comp_stats = model(x)
        forward_noise = noise.take()
        running = {k: v.detach().clone() for k, v in model.state_dict().items() if "running_" in k}
        model.eval()
        with torch.no_grad():
            eval_recon, eval_losses, eval_stats, _, _ = model(x)
            eval_noise = noise.take()
            sample, sample_stats = model.sample(batch)
        sample_noise = noise.take()
    stages = {
        "encoder": features["encoder"],
        "qm_mean": _stack(att_stats.mu_k), "qm_std": _stack(att_stats.sigma_k), "z_m": _stack(att_stats.z_k),
        "mask_logits": _stack([o[:, :1] for o in att_stats.x_k]),
        "log_masks": _stack(stats.log_m_k),
        "pm_mean": _stack(att_stats.pmu_k[1:]), "pm_std": _stack(att_stats.psigma_k[1:]),
        "qc_mean": _stack(comp_stats.mu_k), "qc_std": _stack(comp_stats.sigma_k), "z_c": _stack(comp_stats.z_k),
        "pc_mean": _stack(comp_stats.pmu_k), "pc_std": _stack(comp_stats.psigma_k),
        "components": _stack(stats.x_r_k), "recon": recon.detach(),
        "err": losses.err.detach(), "kl_m": _stack(losses.kl_m_k), "kl_c": _stack(losses.kl_l_k),
        "eval_log_masks": _stack(eval_stats.log_m_k), "eval_components": _stack(eval_stats.x_r_k),
        "eval_err": eval_losses.err.detach(),
        "sample_images": sample.detach(), "sample_components": _stack(sample_stats.x_k),
        "sample_log_masks": _stack(sample_stats.log_m_k),
    }
    return {"images": x, "stages": stages, "buffers": buffers, "running_stats": running,
            "noise": {"forward": forward_noise, "eval": eval_noise, "sample": sample_noise}}


def check_export(genesis_module, genesis_v2_module) -> int:
    """`--check-export`: GENESIS-V2 and GENESIS (64 px, K=4) trained here for 3 steps, written by
    `genesis_dist.export_model`, load strictly into the authors' models (and their Adam), and
    both compute the same decomposition on the same images and noise. Prints the differences;
    1 if a mask or reconstruction differs by more than 1e-10. (Their err uses σ_x as their float32
    `std` buffer holds it, ours 0.7 exactly: it differs at that rounding, ~3e-8 relative.)"""
    import tempfile

    from omegaconf import OmegaConf

    from genesis_dist.config import load_config
    from genesis_dist.models.noise import replayed
    from genesis_dist.released import export_checkpoint
    from genesis_dist.training.checkpoint import save_checkpoint
    from genesis_dist.training.loop import train_step
    from genesis_dist.training.run import RankPlan, build_state

    worst = 0.0
    for words in (["model=genesis_v2", "data=shapestacks", "model.stop_pixels=null"], ["model=genesis", "data=gqn"]):
        torch.set_default_dtype(torch.float32)
        cfg = load_config(words + ["model.num_slots=4", "optim.batch_size=2"])
        state = build_state(cfg, RankPlan.single(cfg, torch.device("cpu")))
        for step in (1, 2, 3):
            train_step(state.model, state.objective, state.optimizer, torch.rand(2, 3, 64, 64), step=step)
        folder = Path(tempfile.mkdtemp())
        save_checkpoint(str(folder / "ours"), state.state_dict(), {"step": 3, "config": OmegaConf.to_container(cfg)})
        checkpoint = torch.load(export_checkpoint(str(folder / "ours"), str(folder / "theirs")), weights_only=True)
        flags = _AttrDict(json.loads((folder / "theirs" / "flags.json").read_text()))
        torch.set_default_dtype(torch.float64)
        v2 = cfg.model.name == "genesis_v2"
        theirs = (genesis_v2_module.GenesisV2 if v2 else genesis_module.Genesis)(flags)
        theirs.load_state_dict(checkpoint["model_state_dict"])  # strict: every tensor named and shaped as theirs
        torch.optim.Adam(theirs.parameters(), lr=1e-4).load_state_dict(checkpoint["optimiser_state_dict"])
        theirs, ours = theirs.double().eval(), state.module.double().eval()
        x = authors_images(2, 64)
        with torch.no_grad(), NoiseRecorder() as noise:
            recon, losses, stats, _, _ = theirs(x)
        draws = [t for _, t in noise.draws]
        k = cfg.model.num_slots
        replay = [draws[0].reshape(2, -1), torch.stack(draws[1:], 1)] if v2 else \
            draws[:-1] + [draws[-1].view(k, 2, -1).transpose(0, 1)]
        with torch.no_grad(), replayed(replay):
            out = ours(x)
        masks = torch.stack(stats.log_m_r_k if v2 else stats.log_m_k, dim=1)
        differences = {"log masks": (out.log_masks - masks).abs().max().item(),
                       "reconstruction": (out.recon - recon).abs().max().item()}
        print(f"export check, {cfg.model.name}: max |ours − theirs| " + ", ".join(f"{k} {v:.2g}" for k, v in differences.items())
              + f"; err {(out.err - losses.err).abs().max().item():.2g} of {losses.err.abs().max().item():.0f} nats")
        worst = max(worst, *differences.values())
    torch.set_default_dtype(torch.float32)
    return 0 if worst <= 1e-10 else 1


def _run_flags(defined: dict, model_config: str, data_config: str, overrides: dict, authors: Path) -> dict:
    """What their train.py stores as flags.json: the value of every flag the run's modules define
    (train.py's, the model config's and the data config's), and the commit."""
    modules = ("train", *MODEL_FLAG_MODULES[model_config], data_config[:-3].replace("/", "."))
    flags = {name: default for module in modules for name, default in defined.get(module, {}).items()}
    flags.update(model_config=model_config, data_config=data_config, **overrides)
    try:
        flags["git_commit"] = subprocess.run(["git", "-C", str(authors), "rev-parse", "HEAD"], capture_output=True,
                                             text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return dict(sorted(flags.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--authors-dir", required=True, type=Path, help="checkout of applied-ai-lab/genesis")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "authors")
    parser.add_argument("--check-export", action="store_true",
                        help="instead: check that genesis_dist.export_model's files load into their code (check_export)")
    args = parser.parse_args(argv)
    authors = args.authors_dir.resolve()
    if not (authors / "models" / "genesisv2_config.py").is_file():
        print(f"authors_fixtures: error: {authors} is not a checkout of applied-ai-lab/genesis", file=sys.stderr)
        return 2
    defined: dict = {}
    _stub_unneeded_modules(defined)
    sys.path.insert(0, str(authors))
    train = importlib.import_module("train")
    train.main_flags()
    data_modules = {case[1]: importlib.import_module(case[1][:-3].replace("/", ".")) for case in CASES.values()}
    genesis_module = importlib.import_module("models.genesis_config")
    genesis_v2_module = importlib.import_module("models.genesisv2_config")
    del data_modules
    if args.check_export:
        return check_export(genesis_module, genesis_v2_module)
    torch.set_default_dtype(torch.float64)
    for case, (model_config, data_config, overrides, batch) in CASES.items():
        torch.manual_seed(zlib.crc32(case.encode()))
        flags = _run_flags(defined, model_config, data_config, overrides, authors)
        cfg = _AttrDict(flags)
        if model_config.endswith("genesisv2_config.py"):
            record = _record_genesis_v2(genesis_v2_module, genesis_module, cfg, batch)
            model = genesis_v2_module.GenesisV2(cfg)
        else:
            record = _record_genesis(genesis_module, cfg, batch)
            model = genesis_module.Genesis(cfg)
        folder = args.out / case
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "flags.json").write_text(json.dumps(flags, indent=4) + "\n")
        (folder / "layout.json").write_text(json.dumps(_layout(model), indent=0) + "\n")
        record["noise"] = {phase: [[kind, t.double()] for kind, t in draws] for phase, draws in record["noise"].items()}
        chosen, default = STRIDES[case]
        strides = {k: chosen.get(k, default) for k, v in record["stages"].items()
                   if tuple(v.shape[-2:]) == (cfg.img_size, cfg.img_size)}
        record["strides"] = strides
        record["stages"] = {k: (v[..., ::strides[k], ::strides[k]] if k in strides else v).double().contiguous()
                            for k, v in record["stages"].items()}
        record["images"] = None  # rebuilt by authors_images
        torch.save(record, folder / "stages.pt")
        size = sum(p.stat().st_size for p in folder.iterdir())
        print(f"{case}: {len(record['stages'])} stages, {sum(len(d) for d in record['noise'].values())} random draws, "
              f"{size / 1e6:.2f} MB in {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
