"""The authors' parameter layout (github.com/applied-ai-lab/genesis, `models/genesisv2_config.py`,
`models/genesis_config.py`) and its map onto ours, both ways: tensors in, tensors out.

Facts of their layout (learnt from reading their code; none of it is copied):
- Their names follow their modules (`encoder.*`, `att_process.*`, `seg_head.*`, `feat_head.*`,
  `z_head.*`, `decoder_module.*`, `prior_lstm.*`, `prior_linear.*` for GENESIS-V2;
  `att_process.core.*` (the gated-conv VAE), `att_process.lstm/linear`, `comp_vae.*`,
  `prior_lstm`, `prior_linear`, `prior_mlp` and the buffer `std` for GENESIS).
- Their pixel-coordinate channels are (row, column) (`torch.meshgrid` in 'ij' order); ours are
  (column, row) (`blocks.coordinate_grid`). Every weight that meets coordinate channels has
  those two channels swapped: the semi-convolutional embedding's output rows (V2), the broadcast
  decoder's first transposed conv's input channels (V2), the component decoder's first conv's
  input channels (GENESIS). Embedding channels are a permutation apart, so IC-SBP distances match.
- Their gated layers normalise h and g with two BatchNorms of `out` channels; ours with one of
  `2·out` (the same per-channel statistics): the pairs are concatenated.
- GENESIS's first posterior step has two linear heads (μ; σ² through `to_var`); ours one head
  to (μ, σ_raw): their weights are stacked. Their `LSTM` layers become our `LSTMCell` (same gate order).
- Their GENESIS keeps σ_x as a `[1, 1, 1, 1, K]` buffer `std` (the one K-dependent tensor), and
  releases from older code hold the component decoder's coordinate grids as buffers
  (`comp_vae.decoder_module.seq.0.pixel_coords.g_1/g_2`); neither is a weight of ours.

`authors_layout(model)` lists their tensors in their registration order (what their optimiser's
parameter indices count), `from_authors` / `to_authors` convert state dicts, and
`optimizer_state_from_authors` / `optimizer_state_to_authors` convert Adam's per-parameter state
with the same renames, stacking and swaps. Every mismatch is an `AuthorsFormatError` (one line
naming the tensors).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import nn

from .genesis import Genesis
from .genesis_v2 import GenesisV2

MODEL_FILES = {"genesis_v2": "models/genesisv2_config.py", "genesis": "models/genesis_config.py"}
DROPPED_COORDINATE_GRIDS = ("comp_vae.decoder_module.seq.0.pixel_coords.g_1",
                            "comp_vae.decoder_module.seq.0.pixel_coords.g_2")
BATCHNORM_TENSORS = (("weight", True), ("bias", True), ("running_mean", False), ("running_var", False),
                     ("num_batches_tracked", False))


class AuthorsFormatError(ValueError):
    """The authors' tensors do not fit the model; the message is one line naming them."""


@dataclass
class Rule:
    """How one of our tensors is made of theirs: `parts` (their keys) stacked along dim 0
    (0-dim tensors: equal, taken once), then channels `swap[1]` and `swap[1] + 1` along dim
    `swap[0]` exchanged (coordinate channels)."""

    parts: list[str] = field(default_factory=list)
    swap: tuple[int, int] | None = None


@dataclass
class AuthorsLayout:
    """Their tensors in registration order, which of them are parameters, how each of ours is
    made of them, and their tensors that have no counterpart (checked on import, rebuilt on
    export by `extra`)."""

    model: str
    order: list[str] = field(default_factory=list)
    parameters: set[str] = field(default_factory=set)
    rules: "OrderedDict[str, Rule]" = field(default_factory=OrderedDict)
    extra: dict[str, Callable[[], torch.Tensor]] = field(default_factory=dict)
    checks: dict[str, Callable[[torch.Tensor], str | None]] = field(default_factory=dict)
    optional: set[str] = field(default_factory=set)

    def add(self, ours: str, theirs: str, parameter: bool = True, swap: tuple[int, int] | None = None) -> None:
        self.order.append(theirs)
        if parameter:
            self.parameters.add(theirs)
        rule = self.rules.setdefault(ours, Rule())
        rule.parts.append(theirs)
        if swap is not None:
            rule.swap = swap

    def module(self, ours: str, theirs: str, names: tuple[str, ...] = ("weight", "bias"), **kwargs) -> None:
        for name in names:
            self.add(f"{ours}.{name}", f"{theirs}.{name}", **kwargs)

    def batchnorm(self, ours: str, theirs: str) -> None:
        for name, parameter in BATCHNORM_TENSORS:
            self.add(f"{ours}.{name}", f"{theirs}.{name}", parameter=parameter)

    def parameter_order(self) -> list[str]:
        """Their parameters in the order their `model.parameters()` (and optimiser) lists them."""
        return [k for k in self.order if k in self.parameters]


def model_name(model: nn.Module) -> str:
    if isinstance(model, GenesisV2):
        return "genesis_v2"
    if isinstance(model, Genesis):
        return "genesis"
    raise AuthorsFormatError(f"{type(model).__name__} has no counterpart in the authors' released models "
                             "(GENESIS-V2 and GENESIS only)")


def authors_layout(model: nn.Module) -> AuthorsLayout:
    """The authors' tensors for `model` (a GenesisV2 or Genesis), in their registration order."""
    name = model_name(model)
    return _genesis_v2_layout(model) if name == "genesis_v2" else _genesis_layout(model)


def _unet(layout: AuthorsLayout, unet: nn.Module, ours: str, theirs: str) -> None:
    for path in ("down", "up"):
        for i in range(len(getattr(unet, path))):
            layout.module(f"{ours}.{path}.{i}.0", f"{theirs}.{path}.{i}.0", ("weight",))
            layout.module(f"{ours}.{path}.{i}.1", f"{theirs}.{path}.{i}.1")
    for i in (1, 3, 5):
        layout.module(f"{ours}.mlp.{i}", f"{theirs}.mlp.{i}")


def _lstm(layout: AuthorsLayout, ours: str, theirs: str, cell: bool = False) -> None:
    for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        layout.add(f"{ours}.{name}" if cell else f"{ours}.{name}_l0", f"{theirs}.{name}_l0")


def _genesis_v2_layout(model: GenesisV2) -> AuthorsLayout:
    layout = AuthorsLayout("genesis_v2")
    _unet(layout, model.encoder, "encoder", "encoder")
    layout.add("icsbp.log_sigma", "att_process.log_sigma")
    # Their embedding adds (row, column) to its last two channels, ours (column, row).
    coordinate_row = model.attention_head[1].conv.out_channels - 2
    layout.module("attention_head.1.conv", "att_process.colour_head.conv", swap=(0, coordinate_row))
    layout.add("attention_head.1.gate", "att_process.colour_head.gate.gate")
    layout.module("attention_head.0.0", "seg_head.0", ("weight",))
    layout.module("attention_head.0.1", "seg_head.1")
    layout.module("feature_head.0.0", "feat_head.0.0", ("weight",))
    layout.module("feature_head.0.1", "feat_head.0.1")
    layout.module("feature_head.1", "feat_head.1")
    for i in (0, 1, 3):
        layout.module(f"posterior_head.{i}", f"z_head.{i}")
    # decoder_module.0 is their broadcast layer (no tensors): their index is ours + 1. The first
    # transposed conv reads [z, row, column]; ours [z, column, row] (weight [in, out, k, k]).
    for i, layer in enumerate(model.decoder.net):
        if isinstance(layer, nn.ReLU):
            continue
        swap = (0, model.latent_dim) if i == 0 else None
        layout.add(f"decoder.net.{i}.weight", f"decoder_module.{i + 1}.weight", swap=swap)
        layout.add(f"decoder.net.{i}.bias", f"decoder_module.{i + 1}.bias")
    _lstm(layout, "prior.lstm", "prior_lstm")
    layout.module("prior.head", "prior_linear")
    return layout


def _gated_stack(layout: AuthorsLayout, net: nn.Sequential, ours: str, theirs: str) -> None:
    for i, layer in enumerate(net):
        layout.module(f"{ours}.{i}.conv", f"{theirs}.{i}.conv")
        if isinstance(layer.norm, nn.BatchNorm2d):
            layout.batchnorm(f"{ours}.{i}.norm", f"{theirs}.{i}.h_norm")
            layout.batchnorm(f"{ours}.{i}.norm", f"{theirs}.{i}.g_norm")


def _genesis_layout(model: Genesis) -> AuthorsLayout:
    layout = AuthorsLayout("genesis")
    # Their σ_x of every slot: a buffer registered on the model itself (first in their state dict).
    layout.order.append("std")
    layout.extra["std"] = lambda: torch.full((1, 1, 1, 1, model.num_slots), float(model.pixel_std))
    layout.checks["std"] = lambda t: _check_pixel_std(t, model)
    vae = model.mask_vae
    _gated_stack(layout, vae.encoder.net, "mask_vae.encoder.net", "att_process.core.q_z_nn")
    # q(z^m_1 | x): their μ head and σ head (Linear, then to_var), stacked into our one head.
    layout.module("mask_vae.first_head", "att_process.core.q_z_mean")
    layout.module("mask_vae.first_head", "att_process.core.q_z_var.0")
    _gated_stack(layout, vae.decoder.net[:-1], "mask_vae.decoder.net", "att_process.core.p_x_nn")
    layout.module(f"mask_vae.decoder.net.{len(vae.decoder.net) - 1}", "att_process.core.p_x_mean")
    _lstm(layout, "mask_vae.lstm", "att_process.lstm", cell=True)
    layout.module("mask_vae.step_head", "att_process.linear")
    encoder = model.component_encoder
    convs = [i for i, layer in enumerate(encoder.convs) if isinstance(layer, nn.Conv2d)]
    linears = [i for i, layer in enumerate(encoder.mlp) if isinstance(layer, nn.Linear)]
    # Their encoder is one Sequential: the convs, their activations, a Flatten, then the MLP.
    for position, i in enumerate(convs):
        layout.module(f"component_encoder.convs.{i}", f"comp_vae.encoder_module.module.{2 * position}")
    for position, i in enumerate(linears):
        layout.module(f"component_encoder.mlp.{i}", f"comp_vae.encoder_module.module.{2 * len(convs) + 1 + 2 * position}")
    # Their decoder's seq.0 is the broadcast layer; its first conv reads [z, row, column] (weight [out, in, k, k]).
    decoder = model.component_decoder
    layout.add("component_decoder.first.weight", "comp_vae.decoder_module.seq.1.weight",
               swap=(1, decoder.first.in_channels - 2))
    layout.add("component_decoder.first.bias", "comp_vae.decoder_module.seq.1.bias")
    rest = [i for i, layer in enumerate(decoder.rest) if isinstance(layer, nn.Conv2d)]
    for position, i in enumerate(rest):
        layout.module(f"component_decoder.rest.{i}", f"comp_vae.decoder_module.seq.{3 + 2 * position}")
    _lstm(layout, "mask_prior.lstm", "prior_lstm")
    layout.module("mask_prior.head", "prior_linear")
    for i in (0, 2, 4):
        layout.module(f"component_prior.mlp.{i}", f"prior_mlp.{i}")
    for key in DROPPED_COORDINATE_GRIDS:  # buffers of older releases (their loaders drop them too)
        layout.optional.add(key)
        layout.checks[key] = lambda t, key=key: _check_coordinate_grid(t, key, decoder.broadcast_size)
    return layout


def _check_pixel_std(t: torch.Tensor, model: Genesis) -> str | None:
    if t.dim() != 5 or t.shape[-1] != model.num_slots:
        return f"std has shape {list(t.shape)}: the checkpoint was trained with K={t.shape[-1]}, not K={model.num_slots}"
    if not torch.allclose(t.double(), torch.full_like(t.double(), model.pixel_std), rtol=0, atol=1e-6):
        return (f"std holds σ_x = {sorted(set(t.flatten().tolist()))}; genesis-dist uses one σ_x for every slot "
                f"(model.pixel_std={model.pixel_std})")
    return None


def _check_coordinate_grid(t: torch.Tensor, key: str, size: int) -> str | None:
    line = torch.linspace(-1, 1, size, dtype=torch.float64)
    rows, columns = torch.meshgrid(line, line, indexing="ij")
    expected = rows if key.endswith("g_1") else columns
    if tuple(t.shape[-2:]) != (size, size) or not torch.allclose(t.double().reshape(size, size), expected, atol=1e-6):
        return f"{key} is not the ({'row' if key.endswith('g_1') else 'column'}) coordinate grid of {size}×{size} pixels"
    return None


def _swap(t: torch.Tensor, swap: tuple[int, int] | None) -> torch.Tensor:
    """Exchange channels `i` and `i + 1` along `dim` (its own inverse)."""
    if swap is None:
        return t
    dim, i = swap
    order = list(range(t.shape[dim]))
    order[i], order[i + 1] = i + 1, i
    return t.index_select(dim, torch.tensor(order, device=t.device))


def _shown(keys: list[str], limit: int = 4) -> str:
    return ", ".join(keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def detect_model(keys: Any) -> str | None:
    """Which of the authors' models a state dict's keys come from ('genesis_v2', 'genesis'), or None."""
    keys = set(keys)
    if any(k.startswith("z_head.") for k in keys) and any(k.startswith("decoder_module.") for k in keys):
        return "genesis_v2"
    if any(k.startswith("comp_vae.") for k in keys) or any(k.startswith("att_process.core.") for k in keys):
        return "genesis"
    return None


def _combine(parts: list[torch.Tensor], keys: list[str]) -> torch.Tensor:
    if len(parts) == 1:
        return parts[0]
    if parts[0].dim() == 0:
        if any(not torch.equal(p, parts[0]) for p in parts[1:]):
            raise AuthorsFormatError(f"{_shown(keys)} differ ({', '.join(str(p.item()) for p in parts)}); "
                                     "genesis-dist keeps one value for them")
        return parts[0]
    return torch.cat(parts, dim=0)


def _split(t: torch.Tensor, count: int) -> list[torch.Tensor]:
    if count == 1:
        return [t]
    if t.dim() == 0:
        return [t.clone() for _ in range(count)]
    return [part.clone() for part in t.chunk(count, dim=0)]


def check_keys(layout: AuthorsLayout, theirs: Mapping[str, Any]) -> None:
    """Raise an AuthorsFormatError naming the tensors the checkpoint lacks or has in excess
    (a checkpoint of their other model is named as such)."""
    expected = set(layout.order) | layout.optional
    missing = [k for k in layout.order if k not in theirs]
    unexpected = [k for k in theirs if k not in expected]
    if not missing and not unexpected:
        return
    found = detect_model(theirs)
    if found is not None and found != layout.model:
        raise AuthorsFormatError(f"the checkpoint holds the authors' {found} ({MODEL_FILES[found]}), "
                                 f"not {layout.model} ({MODEL_FILES[layout.model]})")
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensors of the authors' {layout.model} are missing: {_shown(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} tensors are not the authors' {layout.model}'s: {_shown(unexpected)}")
    raise AuthorsFormatError("; ".join(problems))


def from_authors(model: nn.Module, theirs: Mapping[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
    """Our state dict for `model` from the authors' `model_state_dict` (renamed, stacked,
    coordinate channels swapped; dtypes as `model`'s). Raises AuthorsFormatError for missing
    or unexpected tensors, shape mismatches and their buffers that do not fit (σ_x per slot, K)."""
    layout = authors_layout(model)
    check_keys(layout, theirs)
    for key, check in layout.checks.items():
        if key in theirs:
            problem = check(theirs[key])
            if problem:
                raise AuthorsFormatError(problem)
    ours = model.state_dict()
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    mismatched = []
    for key, target in ours.items():
        rule = layout.rules[key]
        parts = [theirs[k].detach().cpu() for k in rule.parts]
        if parts[0].dim() > 0 and any(p.shape[1:] != parts[0].shape[1:] for p in parts):
            mismatched.append(f"{' + '.join(rule.parts)} {[list(p.shape) for p in parts]}")
            continue
        tensor = _combine(parts, rule.parts)
        if tensor.shape != target.shape:
            shapes = " + ".join(str(list(p.shape)) for p in parts)
            mismatched.append(f"{' + '.join(rule.parts)} {shapes} (expected {list(target.shape)})")
            continue
        out[key] = _swap(tensor, rule.swap).to(target.dtype).clone()
    if mismatched:
        raise AuthorsFormatError(f"shape mismatch for {len(mismatched)} tensors: {_shown(mismatched, 3)}")
    return out


def to_authors(model: nn.Module, ours: Mapping[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
    """The authors' `model_state_dict` (their keys in their order) from our state dict of `model`."""
    layout = authors_layout(model)
    source = {}
    for key, rule in layout.rules.items():
        for their_key, part in zip(rule.parts, _split(_swap(ours[key].detach().cpu(), rule.swap), len(rule.parts))):
            source[their_key] = part
    return OrderedDict((k, layout.extra[k]() if k in layout.extra else source[k]) for k in layout.order)


def _param_states(layout: AuthorsLayout, optimizer_state: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    groups = optimizer_state.get("param_groups") or []
    indices = [i for group in groups for i in group.get("params", [])]
    names = layout.parameter_order()
    if len(indices) != len(names):
        raise AuthorsFormatError(f"the optimiser state covers {len(indices)} parameters; the authors' "
                                 f"{layout.model} has {len(names)}")
    return {names[position]: optimizer_state.get("state", {}).get(index) for position, index in enumerate(indices)}


def optimizer_state_from_authors(model: nn.Module, optimizer_state: Mapping[str, Any],
                                 theirs: Mapping[str, torch.Tensor]) -> dict[str, dict[str, Any]]:
    """Adam's per-parameter state keyed by our parameter names, from the authors'
    `optimiser_state_dict` (its parameter indices follow their registration order): moment
    tensors mapped as the weights are (`exp_avg`, `exp_avg_sq`, `max_exp_avg_sq`), `step` a
    float. Parameters the optimiser has not touched are left out. `theirs` (their model state)
    gives each parameter's shape."""
    layout = authors_layout(model)
    states = _param_states(layout, optimizer_state)
    out: dict[str, dict[str, Any]] = {}
    for name, _ in model.named_parameters():
        rule = layout.rules[name]
        parts = [states[k] for k in rule.parts]
        if all(p is None or not p for p in parts):
            continue
        if any(p is None or not p for p in parts):
            raise AuthorsFormatError(f"the optimiser holds state for only some of {_shown(rule.parts)}")
        entry: dict[str, Any] = {}
        for field_name in parts[0]:
            values = [p.get(field_name) for p in parts]
            if field_name == "step":
                steps = {float(v) for v in values}
                if len(steps) != 1:
                    raise AuthorsFormatError(f"Adam steps of {_shown(rule.parts)} differ: {sorted(steps)}")
                entry["step"] = steps.pop()
                continue
            if not all(isinstance(v, torch.Tensor) and v.shape == theirs[k].shape for v, k in zip(values, rule.parts)):
                raise AuthorsFormatError(f"optimiser state {field_name!r} of {_shown(rule.parts)} does not have "
                                         "the parameters' shapes")
            entry[field_name] = _swap(_combine([v.detach().cpu() for v in values], rule.parts), rule.swap)
        out[name] = entry
    return out


def optimizer_state_to_authors(model: nn.Module, named_state: Mapping[str, Mapping[str, Any]]) -> dict[int, dict[str, Any]]:
    """The authors' per-parameter Adam state `{index: {...}}` (their registration order) from
    ours keyed by parameter name (`step` as an int, as their torch wrote it)."""
    layout = authors_layout(model)
    by_their_name: dict[str, dict[str, Any]] = {}
    for name, state in named_state.items():
        rule = layout.rules[name]
        for position, their_key in enumerate(rule.parts):
            by_their_name[their_key] = {}
        for field_name, value in state.items():
            if field_name == "step":
                parts = [int(round(float(value)))] * len(rule.parts)
            else:
                parts = _split(_swap(value.detach().cpu(), rule.swap), len(rule.parts))
            for their_key, part in zip(rule.parts, parts):
                by_their_name[their_key][field_name] = part
    return {i: by_their_name[k] for i, k in enumerate(layout.parameter_order()) if k in by_their_name}


def parameter_count(layout: AuthorsLayout, theirs: Mapping[str, torch.Tensor]) -> int:
    """Number of parameter values in the authors' state dict (their buffers excluded)."""
    return sum(math.prod(theirs[k].shape) for k in layout.parameter_order())
