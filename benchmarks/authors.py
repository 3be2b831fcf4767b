"""The authors' GENESIS, GENESIS-V2 and MONet (applied-ai-lab/genesis), imported at run time
from a checkout the user gives, for side-by-side timing. Nothing of their code is copied here.

    from authors import AuthorsCode
    code = AuthorsCode("/path/to/genesis")          # the repository root, `forge/` submodule inside
    model = code.build("genesis_v2", img_size=64, num_slots=7)
    step = code.training_step(model, img_size=64)    # their train.py's step: Adam and their GECO
    loss = step(images)                               # images [B, 3, 64, 64] in [0, 1]

Their code imports packages it never calls while a model trains (TensorFlow in `forge`,
`attrdict`, `simplejson`). Where one is missing (or, like `attrdict` on Python ≥ 3.10, broken),
`stand_ins` puts a stand-in into `sys.modules` while their modules are imported, and says so
on stderr:
- `attrdict.AttrDict` / `AttrDefault`: a dict with attribute access (their models use it as a record);
- `simplejson`: the standard library's `json`;
- `tensorflow`: a module whose `python.util.all_util.remove_undocumented` does nothing (forge's
  flags call it at import) and `python.debug` exists; nothing else of TensorFlow is reached;
- `imp` (gone in Python 3.12): an empty module (forge imports it, never calls it here).
"""
from __future__ import annotations

import contextlib
import importlib
import json
import sys
import types
from pathlib import Path
from typing import Any, Callable

import torch

MODEL_MODULES = {"genesis_v2": "models.genesisv2_config", "genesis": "models.genesis_config",
                 "monet": "models.monet_config"}


class _AttrDict(dict):
    """Stand-in for `attrdict.AttrDict`: a dict whose keys are also attributes."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
        return True
    except Exception:  # noqa: BLE001 - attrdict fails with AttributeError on Python ≥ 3.10
        sys.modules.pop(name, None)
        return False


@contextlib.contextmanager
def stand_ins():
    """Stand-ins for the packages their code imports but never calls in a training step, in
    `sys.modules` only while their modules are imported (so that no other library later takes
    them for the real packages) and only where the real one does not import. Yields the
    names stubbed."""
    stubs: dict[str, types.ModuleType] = {}
    if not _importable("attrdict"):
        stubs["attrdict"] = types.ModuleType("attrdict")
        stubs["attrdict"].AttrDict = stubs["attrdict"].AttrDefault = _AttrDict
    if not _importable("simplejson"):
        stubs["simplejson"] = json
    if not _importable("tensorflow"):
        for name in ("tensorflow", "tensorflow.python", "tensorflow.python.util", "tensorflow.python.util.all_util",
                     "tensorflow.python.debug"):
            stubs[name] = types.ModuleType(name)
            parent, _, child = name.rpartition(".")
            if parent:
                setattr(stubs[parent], child, stubs[name])
        stubs["tensorflow.python.util.all_util"].remove_undocumented = lambda *args, **kwargs: None
    if not _importable("imp"):
        stubs["imp"] = types.ModuleType("imp")
    stubbed = sorted({name.split(".")[0] for name in stubs})
    if stubbed:
        print(f"[authors] stand-ins for packages their training step never calls: {', '.join(stubbed)}",
              file=sys.stderr)
    sys.modules.update(stubs)
    try:
        yield stubbed
    finally:
        for name, module in stubs.items():
            if sys.modules.get(name) is module:
                del sys.modules[name]


class AuthorsCode:
    """The authors' repository at `root`, importable: their `models/`, `modules/`, `utils/`,
    `third_party/` and the `forge` package of the `forge/` submodule."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        forge_root = self.root / "forge"
        missing = [str(p) for p in (self.root / "models" / "genesisv2_config.py", forge_root / "forge" / "flags.py")
                   if not p.exists()]
        if missing:
            raise FileNotFoundError(f"not a checkout of applied-ai-lab/genesis with its forge submodule: "
                                    f"missing {', '.join(missing)}")
        for path in (str(forge_root), str(self.root)):
            if path not in sys.path:
                sys.path.insert(0, path)
        with stand_ins() as self.stubbed:
            self.modules = {name: importlib.import_module(module) for name, module in MODEL_MODULES.items()}
            self.geco_module = importlib.import_module("utils.geco")
            flags = importlib.import_module("forge.flags").FLAGS
        flags._parse_flags([])  # every flag their three model files define, at its default
        self.defaults = dict(flags.__dict__["__flags"])

    def config(self, img_size: int, num_slots: int, **overrides: Any) -> _AttrDict:
        """Their flag defaults (the published models) at `img_size` and K = `num_slots`."""
        return _AttrDict(self.defaults, img_size=img_size, K_steps=num_slots, debug=False, multi_gpu=False,
                         **overrides)

    def build(self, name: str, img_size: int = 64, num_slots: int = 7, **overrides: Any) -> torch.nn.Module:
        """Their `load(cfg)` of `genesis_v2`, `genesis` or `monet`, in training mode."""
        return self.modules[name].load(self.config(img_size, num_slots, **overrides)).train()

    @staticmethod
    def loss_terms(model: torch.nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(err, KL) batch means, as their train.py reduces `losses` (mask KL included)."""
        _, losses, _, _, _ = model(images)
        err = losses["err"].mean(0)
        kl = torch.zeros((), dtype=err.dtype)
        if "kl_m" in losses:
            kl = kl + losses["kl_m"].mean(0)
        elif "kl_m_k" in losses:
            kl = kl + torch.stack(list(losses["kl_m_k"]), dim=1).mean(dim=0).sum()
        if "kl_l" in losses:
            kl = kl + losses["kl_l"].mean(0)
        elif "kl_l_k" in losses:
            kl = kl + torch.stack(list(losses["kl_l_k"]), dim=1).mean(dim=0).sum()
        return err, kl

    def geco(self, img_size: int, goal: float = 0.5655, step_size: float = 1e-5, alpha: float = 0.99,
             beta_init: float = 1.0, beta_min: float = 1e-10, speedup: float = 10.0):
        """Their `utils.geco.GECO`, configured as their train.py does (goal per pixel and channel
        times 3·H·W, step size scaled by 64²/H²)."""
        return self.geco_module.GECO(goal * 3 * img_size**2, step_size * 64**2 / img_size**2, alpha, beta_init,
                                     beta_min, speedup)

    def training_step(self, model: torch.nn.Module, img_size: int, lr: float = 1e-4,
                      ) -> Callable[[torch.Tensor], torch.Tensor]:
        """Their train.py's step on a batch `[B, 3, img_size, img_size]`: zero_grad, forward, err
        and KL, their GECO's loss (which updates β), backward, Adam. Returns a function of the
        images giving the loss."""
        optimiser = torch.optim.Adam(model.parameters(), lr)
        geco = self.geco(img_size)

        def step(images: torch.Tensor) -> torch.Tensor:
            optimiser.zero_grad()
            err, kl = self.loss_terms(model, images)
            loss = geco.loss(err, kl)
            loss.backward()
            optimiser.step()
            return loss.detach()

        return step
