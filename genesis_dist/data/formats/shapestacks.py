"""ShapeStacks, as GENESIS uses it.

Layout under the root:
    recordings/<scenario>/rgb-w=W-f=F-l=L-c=C-cam_N-mono-0.png    224×224 RGB, camera N = view
    iseg/<scenario>/iseg-w=0-f=0-l=0-c=original-cam_N-mono-0.map  RGBA PNG, red = label·32 (optional)
    splits/<set>/{train,eval,test}.txt                           one scenario per line
    meta/blacklist_{stable,unstable}.txt                         scenarios to leave out
Scenario names `env_ccs-easy-h=5-vcom=2-vpsf=0-v=1`: h = stack height, a tower is
stable iff vcom = 0 and vpsf = 0. Mask labels: 0 background, 1..h blocks bottom-up
(the maps' label 7, "unassigned", becomes background).

Preprocessing: only `-mono-0` frames; centre crop 196 (pixels 14:210), resize to 64
(bilinear; nearest for masks). K=9. Split names: train, val (the `eval` list), test.
"""
from __future__ import annotations

import re
from typing import Any, Iterator

import numpy as np

from ..errors import SourceError
from ...storage import filesystem, join
from .base import Converter, DatasetInfo, ErrorHandler, Sample, SourceItem, safe_key
from .imaging import crop, decode_any, decode_rgb, read_bytes, resize

RGB = re.compile(r"^rgb-w=(?P<w>\d+)-f=(?P<f>\d+)-l=(?P<l>\d+)-c=(?P<c>[^-]+)-cam_(?P<cam>\d+)-mono-0\.png$")
SCENARIO = re.compile(r"h=(?P<h>\d+)-vcom=(?P<vcom>\d+)-vpsf=(?P<vpsf>\d+)")
SPLIT_FILES = {"train": "train.txt", "val": "eval.txt", "test": "test.txt"}
CROP_TOP, CROP_SIZE = 14, 196
UNASSIGNED = 7


def scenario_labels(name: str) -> dict[str, Any]:
    """{"height", "vcom", "vpsf", "stable"} parsed from a scenario name."""
    match = SCENARIO.search(name)
    if match is None:
        raise ValueError(f"scenario name {name!r} lacks h=..-vcom=..-vpsf=..")
    height, vcom, vpsf = (int(match[k]) for k in ("h", "vcom", "vpsf"))
    return {"height": height, "vcom": vcom, "vpsf": vpsf, "stable": vcom == 0 and vpsf == 0}


class ShapeStacks(Converter):
    def __init__(self, root: str, split_set: str | None = "default", single_split: str = "train",
                 img_size: int = 64, storage_options: dict[str, Any] | None = None):
        self.root, self.split_set, self.single_split = root.rstrip("/"), split_set, single_split
        self.img_size, self.storage_options = img_size, storage_options
        fs, iseg = filesystem(join(self.root, "iseg"), storage_options)
        self.info = DatasetInfo("shapestacks", "1.0", img_size, K=9, background_entities=1,
                                has_mask=fs.isdir(iseg))

    def _lines(self, url: str) -> list[str]:
        fs, path = filesystem(url, self.storage_options)
        if not fs.exists(path):
            return []
        return [line.strip() for line in fs.cat_file(path).decode().splitlines() if line.strip()]

    def _scenarios(self, split: str) -> list[str]:
        if self.split_set is None:
            fs, folder = filesystem(join(self.root, "recordings"), self.storage_options)
            if not fs.isdir(folder):
                raise SourceError(f"{join(self.root, 'recordings')}: no such folder")
            names = sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(folder, detail=False))
        else:
            url = join(self.root, "splits", self.split_set, SPLIT_FILES[split])
            fs, path = filesystem(url, self.storage_options)
            if not fs.exists(path):
                raise SourceError(f"{url}: missing; pass split_set=None (--split-set none) to put every "
                                  "scenario into one split")
            names = self._lines(url)
        blacklist = set()
        for kind in ("stable", "unstable"):
            blacklist.update(self._lines(join(self.root, "meta", f"blacklist_{kind}.txt")))
        return [name for name in names if name not in blacklist]

    def splits(self) -> list[str]:
        return [self.single_split] if self.split_set is None else list(SPLIT_FILES)

    def items(self, split: str, on_error: ErrorHandler) -> Iterator[SourceItem]:
        for scenario in self._scenarios(split):
            folder = join(self.root, "recordings", scenario)
            fs, path = filesystem(folder, self.storage_options)
            try:
                names = sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False))
            except FileNotFoundError:
                on_error(folder, "scenario folder missing")
                continue
            frames = [(name, RGB.match(name)) for name in names]
            frames = sorted(((int(m["cam"]), name, m.groupdict()) for name, m in frames if m))
            if not frames:
                on_error(folder, "no rgb-*-cam_N-mono-0.png frames")
            for camera, name, settings in frames:
                yield SourceItem(join(folder, name), (scenario, camera, settings))

    def settings(self) -> dict[str, Any]:
        return {"root": self.root, "split_set": self.split_set, "single_split": self.single_split,
                "img_size": self.img_size}

    def _preprocess(self, array: np.ndarray, labels: bool) -> np.ndarray:
        square = crop(array, CROP_TOP, CROP_TOP, CROP_SIZE, CROP_SIZE)
        return resize(square, self.img_size, self.img_size, labels=labels)

    def convert(self, item: SourceItem) -> list[Sample]:
        scenario, camera, settings = item.payload
        image = decode_rgb(read_bytes(item.source, self.storage_options))
        if image.shape[:2] != (224, 224):
            raise ValueError(f"frame is {image.shape[1]}x{image.shape[0]}, expected 224x224")
        mask = None
        if self.info.has_mask:
            url = join(self.root, "iseg", scenario, f"iseg-w=0-f=0-l=0-c=original-cam_{camera}-mono-0.map")
            try:
                raw = decode_any(read_bytes(url, self.storage_options))
            except FileNotFoundError:
                raise ValueError(f"no segmentation map {url}") from None
            labels = (raw[..., 0] if raw.ndim == 3 else raw).astype(np.uint8) // 32
            labels[labels == UNASSIGNED] = 0
            mask = self._preprocess(labels, labels=True)
        meta = {"source": item.source, "scenario": scenario, "view": camera, **scenario_labels(scenario),
                "render": {k: settings[k] for k in ("w", "f", "l", "c")}}
        variant = "w{w}f{f}l{l}c{c}".format(**settings)
        return [Sample(safe_key(scenario, variant, f"cam{camera}"), self._preprocess(image, labels=False), mask, meta)]
