"""The papers' numbers (GENESIS, ICLR 2020; GENESIS-V2, NeurIPS 2021), the authors' released
models' numbers, and `python -m genesis_dist.evaluate compare RUN_URL [RUN_URL ...]`, which
sets evaluated runs beside them.

Numbers are (mean, ± spread or None) as the papers print them; ELBO in nats per image at
64×64; segmentation on 320 test images; FID of 10,000 samples vs 10,000 test images. APC's
ARI and MSC are over all pixels (no -FG variant published).
"""
from __future__ import annotations

import sys
from typing import Any

from omegaconf import OmegaConf

from .report import format_value, markdown_table, read_records
from ..config import ConfigError, differing_keys, load_config
from ..released import read_release
from ..storage import filesystem, join
from ..training.checkpoint import read_best_pointer
from ..training.layout import CONFIG_FILE

PUBLISHED: dict[tuple[str, str], dict[str, tuple[float, float | None]]] = {
    ("objects_room", "genesis_v2"): {"ari_fg": (0.85, 0.01), "msc_fg": (0.59, 0.01), "fid": (52.6, 2.7), "elbo": (-7040, 2)},
    ("objects_room", "genesis"): {"ari_fg": (0.63, 0.03), "msc_fg": (0.53, 0.07), "fid": (62.8, 2.5), "elbo": (-7023, 2)},
    ("objects_room", "slot_attention"): {"ari_fg": (0.79, 0.02), "msc_fg": (0.64, 0.13)},
    ("shapestacks", "genesis_v2"): {"ari_fg": (0.81, 0.01), "msc_fg": (0.67, 0.01), "fid": (112.7, 3.2), "elbo": (-7019, 2)},
    ("shapestacks", "genesis"): {"ari_fg": (0.70, 0.05), "msc_fg": (0.67, 0.02), "fid": (186.8, 18.0), "elbo": (-7082, 15)},
    ("shapestacks", "monet"): {"ari_fg": (0.70, 0.04), "msc_fg": (0.57, 0.12), "fid": (197.8, 5.2), "elbo": (-7268, 19)},
    ("multi_dsprites", "genesis"): {"fid": (24.9, None)},
    ("gqn", "genesis"): {"fid": (80.5, None)},
    ("apc", "genesis_v2"): {"ari": (0.55, None), "msc": (0.67, None), "fid": (245.6, None)},
    ("sketchy", "genesis_v2"): {"fid": (208.1, None)},
}
# The authors' released checkpoints, scored by them (their README, "Pretrained models &
# results"): their segmentation script's "FG ARI" / "FG MSC" are of the masks their model
# returns first, GENESIS-V2's IC-SBP attention masks (our `att_*` columns), GENESIS's masks.
RELEASED: dict[tuple[str, str], dict[str, tuple[float, float | None]]] = {
    ("multi_dsprites", "genesis"): {"fid": (25.0, None), "ari_fg": (0.57, None), "msc_fg": (0.69, None)},
    ("gqn", "genesis"): {"fid": (79.4, None)},
    ("shapestacks", "genesis"): {"fid": (235.4, None), "ari_fg": (0.71, None), "msc_fg": (0.64, None)},
    ("shapestacks", "genesis_v2"): {"fid": (108.1, None), "att_ari_fg": (0.80, None), "att_msc_fg": (0.66, None)},
    ("objects_room", "genesis_v2"): {"fid": (53.2, None), "att_ari_fg": (0.82, None), "att_msc_fg": (0.61, None)},
    ("sketchy", "genesis_v2"): {"fid": (212.7, None)},
    ("apc", "genesis_v2"): {"fid": (232.2, None), "att_ari": (0.55, None), "att_msc": (0.65, None)},
}
MODEL_TITLES = {"genesis_v2": "GENESIS-V2", "genesis": "GENESIS", "genesis_s": "GENESIS-S",
                "slot_attention": "Slot Attention", "monet": "MONet-G"}
# (record key, column title, format)
COMPARED = (("ari_fg", "ARI-FG", ".3f"), ("one_slot_ari_fg", "one-slot ARI-FG", ".3f"), ("msc_fg", "MSC-FG", ".3f"),
            ("one_slot_msc_fg", "one-slot MSC-FG", ".3f"), ("ari", "ARI", ".3f"), ("fg_bg_ari", "fg/bg ARI", ".3f"),
            ("msc", "MSC", ".3f"), ("att_ari_fg", "att ARI-FG", ".3f"), ("att_msc_fg", "att MSC-FG", ".3f"),
            ("att_ari", "att ARI", ".3f"), ("att_msc", "att MSC", ".3f"), ("fid", "FID", ".1f"), ("elbo", "ELBO", ".1f"))
# Keys that do not change what a run trains at its paper setting (where it runs, how it is
# logged, test-time settings such as the flexible-slot stop).
SETTING_KEYS = ("model", "objective", "curriculum", "optim.lr", "optim.warmup_steps", "optim.decay_every",
                "optim.decay_rate", "optim.batch_size", "optim.global_batch_size")
NOT_SETTING = ("model.stop_pixels",)
CURRICULUM_AIDS = ("pixel_std", "mask_guidance", "colour_hint")  # curriculum.* keys begin with the aid's name


def published_rows(dataset: str) -> list[tuple[str, dict[str, tuple[float, float | None]]]]:
    """[(model, numbers)] the papers report for `dataset` (a `data.name`)."""
    return [(model, numbers) for (name, model), numbers in PUBLISHED.items() if name == dataset]


def _published_cell(number: tuple[float, float | None] | None, spec: str) -> str:
    if number is None:
        return "—"
    mean, spread = number
    return format(mean, spec) + ("" if spread is None else f" ± {format(spread, spec)}")


def _best_step(run_url: str, records: dict[int, dict], storage_options: dict | None) -> tuple[int, str]:
    """The step of the run's best checkpoint (chosen by training on held-out ELBO) when it
    was evaluated, else the evaluated step with the highest test ELBO."""
    pointer = read_best_pointer(run_url, storage_options)
    if pointer is not None and pointer.get("step") in records:
        return int(pointer["step"]), "best"
    scored = [s for s, r in records.items() if isinstance(r.get("elbo"), (int, float))]
    return (max(scored, key=lambda s: records[s]["elbo"]), "best test ELBO") if scored else (max(records), "latest")


def _run_config(run_url: str, storage_options: dict | None) -> dict[str, Any] | None:
    fs, path = filesystem(join(run_url, CONFIG_FILE), storage_options)
    try:
        return OmegaConf.to_container(OmegaConf.create(fs.cat_file(path).decode()))
    except (FileNotFoundError, ValueError):
        return None


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:,}" if isinstance(value, int) else str(value)


def setting_notes(config: dict[str, Any] | None, step: int) -> list[str]:
    """How a run evaluated at `step` departs from the paper setting of its model on its dataset
    (`model=M data=D`): architecture or image size (reduced size), objective, optimiser,
    curriculum aids, fewer steps than the paper's. [] when it is the paper setting."""
    if config is None:
        return ["no config.yaml: setting unknown"]
    model, dataset = config.get("model", {}).get("name"), config.get("data", {}).get("name")
    try:
        paper = OmegaConf.to_container(load_config([f"model={model}", f"data={dataset}"]))
    except ConfigError:
        return [f"no paper setting for {model} on {dataset}"]
    keys = [k for k in differing_keys({k: config.get(k) for k in paper}, paper)
            if k.startswith(SETTING_KEYS) and not k.startswith(NOT_SETTING)]
    notes = []
    curriculum = [k.split(".", 1)[1] for k in keys if k.startswith("curriculum.")]
    reduced = sorted((k for k in keys if k.startswith("model.")), key=lambda k: (k != "model.img_size", k))

    def value(tree: dict, key: str) -> Any:
        for part in key.split("."):
            tree = tree.get(part) if isinstance(tree, dict) else None
        return tree

    if reduced:
        notes.append("model: " + ", ".join(f"{k.split('.', 1)[1]} {_shown(value(config, k))} (paper {_shown(value(paper, k))})"
                                           for k in reduced))
    others = [k for k in keys if not k.startswith(("model.", "curriculum."))]
    if others:
        notes.append(", ".join(f"{k} {_shown(value(config, k))} (paper {_shown(value(paper, k))})" for k in others))
    if curriculum:
        aids = sorted({next((a for a in CURRICULUM_AIDS if k.startswith(a)), k) for k in curriculum})
        notes.append(f"curriculum aids: {', '.join(aids)}")
    if step < paper["optim"]["steps"]:
        notes.append(f"{step:,} of the paper's {paper['optim']['steps']:,} steps")
    return notes


def comparison_table(runs: list[str], storage_options: dict | None = None, warn=print) -> str:
    """Markdown: for each dataset, each run's best and latest evaluated checkpoint (an imported
    release of the authors' named as such; what departs from the paper setting in the last
    column), then the papers' rows and the authors' released models' own scores for that
    dataset. Runs without evaluations are left out with a warning."""
    by_dataset: dict[str, list[list[str]]] = {}
    for run_url in runs:
        run_url = run_url.rstrip("/")
        records = read_records(run_url, storage_options)
        if not records:
            warn(f"{run_url}: no evaluations (run python -m genesis_dist.evaluate --run {run_url} first)")
            continue
        best, label = _best_step(run_url, records, storage_options)
        latest = max(records)
        name = run_url.rsplit("/", 1)[-1]
        config = _run_config(run_url, storage_options)
        release = read_release(run_url, storage_options)
        for step, what in ((best, label), (latest, "latest")) if best != latest else ((best, f"{label}, latest"),):
            record = records[step]
            dataset = record.get("dataset") or "?"
            title = MODEL_TITLES.get(record.get("model"), record.get("model"))
            notes = setting_notes(config, step)
            if release is not None:
                origin = "authors' release, imported" if step == release.get("step") else \
                    f"fine-tuned from the authors' release (step {release.get('step')})"
                notes = [origin] + notes
            by_dataset.setdefault(dataset, []).append(
                [name, dataset, title, f"{what} @ {step}"] + [format_value(record.get(k), spec) for k, _, spec in COMPARED]
                + ["; ".join(notes) or "paper setting"])
    if not by_dataset:
        return ""
    rows = []
    for dataset, run_rows in by_dataset.items():
        rows += run_rows
        for model, numbers in published_rows(dataset):
            rows.append(["paper", dataset, MODEL_TITLES.get(model, model), "published"]
                        + [_published_cell(numbers.get(k), spec) for k, _, spec in COMPARED] + ["paper setting"])
        if not published_rows(dataset):
            rows.append(["paper", dataset, "—", "no published numbers"] + ["—"] * len(COMPARED) + ["—"])
        for (name, model), numbers in RELEASED.items():
            if name == dataset:
                rows.append(["authors' release", dataset, MODEL_TITLES.get(model, model), "their README"]
                            + [_published_cell(numbers.get(k), spec) for k, _, spec in COMPARED]
                            + ["scored by the authors' scripts"])
    return markdown_table(["run", "dataset", "model", "checkpoint"] + [t for _, t, _ in COMPARED] + ["setting"], rows)


def compare_main(argv: list[str]) -> int:
    """`compare RUN_URL [RUN_URL ...]`: print the table; 2 when no run has evaluations."""
    runs = [a for a in argv if not a.startswith("-")]
    if not runs or len(runs) != len(argv):
        print("genesis_dist.evaluate compare: usage: compare RUN_URL [RUN_URL ...]", file=sys.stderr)
        return 2
    table = comparison_table(runs, warn=lambda line: print(f"genesis_dist.evaluate compare: {line}", file=sys.stderr))
    if not table:
        print("genesis_dist.evaluate compare: error: none of the runs has evaluations", file=sys.stderr)
        return 2
    print(table, end="")
    return 0
