"""`python -m genesis_dist.import_model RELEASE [--name NAME] [--out URL] [--ignore-flag FLAG] [key=value ...]`:
one of the authors' released models as a genesis-dist run folder.

    python -m genesis_dist.import_model released/genesisv2_shapestacks data.url=s3://bucket/shapestacks
    python -m genesis_dist.evaluate --run runs/genesis_v2-shapestacks-release

RELEASE is a folder of github.com/applied-ai-lab/genesis's "Pretrained models & results"
(`flags.json` and `model.ckpt-FINAL`, or `-latest`, `-<iter>`) or its checkpoint file.
The flags give the model, K, image size, GECO and optimiser settings (on top of the paper
setting of that model and dataset); `key=value` sets anything else of the config (data.url,
where the dataset's shards are, for evaluation and fine-tuning). The run folder
`{--out, default runs}/{--name, default MODEL-DATA-release}` gets `config.yaml`, one checkpoint
`checkpoint_<step>/` (the authors' step, β, GECO's err EMA and Adam state carried over) and
`release.json` (the source file, its sha256, the authors' step and β). `genesis_dist.evaluate
--run`, `genesis_dist.decompose RUN/checkpoint_<step>` and `genesis_dist.train --config
RUN/config.yaml optim.steps=N` (fine-tuning from the release) take it as it is.

A flag with no counterpart here (`--ignore-flag NAME` to import without it), missing or
unexpected tensors, a shape mismatch or a checkpoint of the other model is one line naming
them; nothing is written then. Exit status: 0 imported, 2 such an error, 3–7 storage
failures as for `genesis_dist.train` (`--debug` shows a traceback).
"""
from __future__ import annotations

import argparse
import sys

from .command import USAGE_STATUS, run_command
from .models.authors_format import AuthorsFormatError
from .released import ReleaseError, import_release
from .storage import warn_secrets_on_command_line


def _run(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    parser = argparse.ArgumentParser(prog="python -m genesis_dist.import_model", add_help=False)
    parser.add_argument("source")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--name")
    parser.add_argument("--out")
    parser.add_argument("--ignore-flag", action="append", default=[])
    try:
        args = parser.parse_intermixed_args(argv)
    except SystemExit:
        return USAGE_STATUS
    overrides = list(args.overrides)
    overrides += [f"run.name={args.name}"] if args.name else []
    overrides += [f"run.storage_path={args.out}"] if args.out else []
    warn_secrets_on_command_line("genesis_dist.import_model", overrides)
    done = import_release(args.source, overrides, args.ignore_flag)
    m = done.config.model
    ema = "none" if done.err_ema is None else f"{done.err_ema:.1f}"
    print(f"[genesis-dist] imported {m.name} (K={m.num_slots}, {m.img_size} px, data {done.config.data.name}) from "
          f"{done.provenance['source']} (sha256 {done.provenance['sha256'][:12]}…): step {done.step}, "
          f"β {done.beta:.4g}, GECO err EMA {ema}; {done.optimizer}")
    print(f"[genesis-dist] run folder {done.run_url}: score it with python -m genesis_dist.evaluate --run {done.run_url}; "
          f"decompose images with python -m genesis_dist.decompose {done.checkpoint_url} IMAGE…; fine-tune with "
          f"python -m genesis_dist.train --config {done.run_url}/config.yaml optim.steps=N")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command("genesis_dist.import_model", _run, sys.argv[1:] if argv is None else list(argv),
                       usage_errors=(ReleaseError, AuthorsFormatError))


if __name__ == "__main__":
    sys.exit(main())
