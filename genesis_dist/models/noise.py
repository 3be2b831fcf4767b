"""Where the models' random draws come from.

GENESIS, GENESIS-S and GENESIS-V2 draw their noise through `standard_normal_like` and
`uniform`: normally torch's generators (the same streams as `torch.randn_like` / `torch.rand`),
inside `replayed(draws)` the given tensors in order, so a model can be run on
the exact noise another implementation drew (the authors' code, in
`tests/test_import_model.py`). Replaying changes no draw's distribution or shape: each
replayed tensor must have the shape the model asks for.
"""
from __future__ import annotations

import contextlib
from collections import deque
from typing import Iterable, Iterator

import torch

_replay: deque[torch.Tensor] | None = None


def _next_draw(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    if not _replay:
        raise RuntimeError(f"replayed noise ran out: the model asked for a draw of shape {list(shape)}")
    draw = _replay.popleft()
    if tuple(draw.shape) != tuple(shape):
        raise RuntimeError(f"replayed noise has shape {list(draw.shape)} where the model draws {list(shape)}")
    return draw.to(device=like.device, dtype=like.dtype)


def standard_normal_like(t: torch.Tensor) -> torch.Tensor:
    """ε ~ N(0, I) of `t`'s shape, dtype and device (`torch.randn_like`)."""
    return torch.randn_like(t) if _replay is None else _next_draw(tuple(t.shape), t)


def uniform(shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """r ~ U(0, 1) of `shape` with `like`'s dtype and device (`torch.rand`, from `generator` if given)."""
    if _replay is None:
        return torch.rand(shape, device=like.device, dtype=like.dtype, generator=generator)
    return _next_draw(tuple(shape), like)


@contextlib.contextmanager
def replayed(draws: Iterable[torch.Tensor]) -> Iterator[None]:
    """Within the block, every draw of `standard_normal_like` and `uniform` is the next of
    `draws` (in the order the model draws); all of them must be used."""
    global _replay
    if _replay is not None:
        raise RuntimeError("replayed noise does not nest")
    _replay = deque(draws)
    try:
        yield
        if _replay:
            raise RuntimeError(f"{len(_replay)} replayed draws were not used")
    finally:
        _replay = None
