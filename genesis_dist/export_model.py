"""`python -m genesis_dist.export_model CHECKPOINT --out FOLDER [--file model.ckpt-FINAL]`: one of
our checkpoints in the format of the authors' code (github.com/applied-ai-lab/genesis).

    python -m genesis_dist.export_model runs/genesis_v2-shapestacks --out exported/genesis_v2-shapestacks
    # then, in their checkout: python scripts/compute_seg_metrics.py --data_config datasets/shapestacks_config.py \
    #   --model_config models/genesisv2_config.py --model_dir exported/genesis_v2-shapestacks --model_file model.ckpt-FINAL

CHECKPOINT is a checkpoint folder, `RUN/best`, or a run folder (its newest complete
checkpoint). FOLDER gets `flags.json` and the checkpoint file (`model_state_dict` with their
names and pixel-coordinate order, `optimiser_state_dict`, `beta`, `iter_idx`, `err_ema`);
`genesis_dist.import_model FOLDER` brings it back unchanged. A model their code cannot
express (another architecture, GENESIS-V2 below 64 px, a baseline) is a one-line error.
Exit status: 0 written, 2 such an error.
"""
from __future__ import annotations

import argparse
import sys

from .command import USAGE_STATUS, run_command
from .models.authors_format import AuthorsFormatError
from .released import FINAL_FILE, ReleaseError, export_checkpoint
from .training.checkpoint import CheckpointError


def _run(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    parser = argparse.ArgumentParser(prog="python -m genesis_dist.export_model", add_help=False)
    parser.add_argument("checkpoint")
    parser.add_argument("--out", required=True)
    parser.add_argument("--file", default=FINAL_FILE)
    try:
        args = parser.parse_args(argv)
    except SystemExit:
        return USAGE_STATUS
    path = export_checkpoint(args.checkpoint, args.out, args.file)
    print(f"[genesis-dist] wrote {path} and its flags.json (the authors' format)")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command("genesis_dist.export_model", _run, sys.argv[1:] if argv is None else list(argv),
                       usage_errors=(ReleaseError, AuthorsFormatError, CheckpointError))


if __name__ == "__main__":
    sys.exit(main())
