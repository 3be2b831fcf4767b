"""The FID Inception weights from shared/, laid out as a torch hub cache for tests."""
import os
from pathlib import Path

WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
# CI clones the repo with shared/ beside its root
SHARED_WEIGHTS = Path(__file__).resolve().parents[1].parent / "shared" / "weights" / WEIGHTS_FILE


def seed_torch_home(folder: Path) -> Path:
    """Make `folder` a TORCH_HOME whose hub cache holds the FID weights (a symlink); returns it."""
    if not SHARED_WEIGHTS.exists():
        raise FileNotFoundError(f"FID weights missing: {SHARED_WEIGHTS} (shared/ must sit beside the repo)")
    checkpoints = folder / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    link = checkpoints / WEIGHTS_FILE
    if not link.exists():
        os.symlink(SHARED_WEIGHTS, link)
    return folder
