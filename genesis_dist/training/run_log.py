"""TensorBoard event files for a run (Ray Train V2 writes none of its own).

Events are written to a local folder; for a remote run folder they are uploaded
to `{run}/tensorboard` on every `flush()`.
"""
from __future__ import annotations

import os
import tempfile

import numpy as np
from torch.utils.tensorboard import SummaryWriter

from ..storage import filesystem, is_remote, join
from .layout import TENSORBOARD_FOLDER


class RunLogger:
    """Scalars and images for one run, local or remote."""

    def __init__(self, run_url: str, storage_options: dict | None = None):
        self.remote = is_remote(run_url)
        self.target = join(run_url, TENSORBOARD_FOLDER)
        self.storage_options = storage_options
        local = tempfile.mkdtemp(prefix="genesis-tb-") if self.remote else self.target.removeprefix("file://")
        os.makedirs(local, exist_ok=True)
        self.local_dir = local
        self.writer = SummaryWriter(local)

    def scalars(self, step: int, values: dict[str, float], prefix: str = "train") -> None:
        for name, value in values.items():
            self.writer.add_scalar(f"{prefix}/{name}", value, step)

    def image(self, step: int, tag: str, image: np.ndarray) -> None:
        """`image` uint8 `[H, W, 3]`."""
        self.writer.add_image(tag, image, step, dataformats="HWC")

    def flush(self) -> None:
        self.writer.flush()
        if self.remote:
            fs, path = filesystem(self.target, self.storage_options)
            fs.put(self.local_dir.rstrip("/") + "/", path, recursive=True)

    def close(self) -> None:
        self.flush()
        self.writer.close()
