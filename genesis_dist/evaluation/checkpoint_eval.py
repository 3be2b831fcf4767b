"""Evaluate one training checkpoint on a run's test split; no Ray (the pool in
`evaluation/pool.py` wraps `CheckpointEvaluator` as a Ray actor).

An evaluator loads the Inception network once and each test set once (held in memory as
uint8), then scores any number of checkpoints: ELBO / err / KL, segmentation (ARI, SC,
mSC, foreground and all pixels) of the decoder masks and of GENESIS-V2's IC-SBP attention
masks, flexible-slot statistics, FID of model samples, and two figures per checkpoint.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import time
import traceback
from dataclasses import dataclass
from typing import Any

import torch

from ..training.checkpoint import load_checkpoint, read_meta, stored_model
from ..training.layout import EVAL_FOLDER, FIGURES_FOLDER, figure_name
from .fid_stats import fid_against_stats
from ..metrics import foreground_labels, masks_to_labels, mean_ignoring_nan, segmentation_scores, slot_count_stats, to_uint8
from ..metrics.trivial import trivial_answer_scores
from ..models import is_generative
from ..storage import join

FIGURE_IMAGES = 8  # rows of the decomposition and generation figures


@dataclass
class TestSet:
    """The first images of a split, held once per evaluator.

    images: uint8 `[N, 3, H, W]`; masks: uint8/long `[N, H, W]` with every background
    entity folded into label 0 (None without ground truth); fid_key: names the split's
    content (sha256 of its shards' sha256s) for the FID statistics cache.
    """

    shards: Any  # data.ShardSet: where the split is, its manifest read once
    split: str
    images: torch.Tensor
    masks: torch.Tensor | None
    split_size: int
    fid_key: str


def split_fingerprint(manifest: dict[str, Any], split: str) -> str:
    """sha256 over the split's shard names, counts and sha256s (from the manifest): a
    key that changes whenever the test images do."""
    entry = manifest["splits"][split]
    content = {"dataset": manifest.get("dataset"), "resolution": manifest.get("resolution"), "split": split,
               "shards": [[s["name"], s["count"], s.get("sha256")] for s in entry["shards"]]}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def test_image_batches(shards, split: str, batch_size: int, limit: int):
    """Float image batches `[b, 3, H, W]` (and their masks) of the first `limit` images of
    `split` of the ShardSet `shards`, in manifest order (the same images every time)."""
    from ..data import make_loader

    if limit <= 0:
        return
    loader = make_loader(shards, split, batch_size, rank=0, world_size=1, num_workers=0, seed=0,
                         shuffle_buffer=0, drop_last=False)
    seen = 0
    for batch in loader:
        images = batch["image"][: limit - seen]
        seen += images.shape[0]
        yield images, (None if batch.get("mask") is None else batch["mask"][: images.shape[0]])
        if seen >= limit:
            return


def load_test_set(data: dict[str, Any], limit: int | None, batch_size: int) -> TestSet:
    """The first `limit` images (all when None) of `data = {url, split, storage_options}`."""
    from ..data import DataError, ShardSet

    shards = ShardSet.open(data["url"], data["storage_options"])
    split_size = shards.split_size(data["split"])
    limit = split_size if limit is None else min(limit, split_size)
    images, masks = [], []
    for batch_images, batch_masks in test_image_batches(shards, data["split"], batch_size, limit):
        images.append(to_uint8(batch_images))
        if batch_masks is not None:
            small = batch_masks.numel() == 0 or int(batch_masks.max()) < 256
            masks.append(batch_masks.to(torch.uint8 if small else torch.long))
    if not images:
        raise DataError(f"{data['url']}: split {data['split']!r} has no images")
    labels = foreground_labels(torch.cat(masks), shards.background_entities) if masks else None
    return TestSet(shards, data["split"], torch.cat(images), labels, split_size,
                   split_fingerprint(shards.manifest, data["split"]))


def true_components(labels: torch.Tensor) -> torch.Tensor:
    """`[B]` ground-truth components per image: visible objects + 1 (the background), from
    foreground-folded label maps `[B, H, W]`."""
    flat = labels.flatten(1).long()
    present = torch.zeros(flat.shape[0], int(flat.max()) + 1, dtype=torch.bool)
    present.scatter_(1, flat, True)
    return present[:, 1:].sum(dim=1) + 1


def _mean_scores(per_image: dict[str, list[torch.Tensor]], prefix: str) -> dict[str, float]:
    scores = {}
    for key, values in per_image.items():
        mean, _ = mean_ignoring_nan(torch.cat(values))
        scores[prefix + key] = mean
    return scores


class CheckpointEvaluator:
    """Scores checkpoints; loads Inception once and each test set once.

    `config`: an EvalConfig as a dict (batch_size, fid_samples, segmentation_images,
    elbo_images, stop_pixels, stats_cache, seed, gpus_per_actor, storage_options).
    """

    def __init__(self, config: dict[str, Any]):
        self.config = config
        use_gpu = config.get("gpus_per_actor", 0) > 0 and torch.cuda.is_available()
        self.device = torch.device("cuda" if use_gpu else "cpu")
        self.inception = None  # loaded by the first `prepare` (errors then reach the caller)
        self.test_sets: dict[tuple[str, str], TestSet] = {}
        self.reference: dict[tuple[str, str], tuple[Any, Any, int]] = {}
        self.evaluated = 0

    def identity(self) -> str:
        """`host:pid` of the process this evaluator runs in."""
        return f"{socket.gethostname()}:{os.getpid()}"

    def prepare(self, data: dict[str, Any]) -> dict[str, Any]:
        """Load the test set `data = {url, split, storage_options}` and its FID statistics
        (computed and cached on first use). Returns a summary; raises DataError,
        WeightsMissingError on user-fixable problems."""
        key = (data["url"], data["split"])
        if self.inception is None and self.config["fid_samples"] > 0:
            from ..metrics import InceptionFeatures

            self.inception = InceptionFeatures(batch_size=min(50, self.config["batch_size"]), allow_download=True)
        if key not in self.test_sets:
            limit = self.config.get("elbo_images")
            held = None if limit is None else max(limit, self.config["segmentation_images"], FIGURE_IMAGES)
            self.test_sets[key] = load_test_set(data, held, self.config["batch_size"])
        test = self.test_sets[key]
        if self.inception is not None and key not in self.reference:
            from .fid_stats import cached_statistics

            count = min(self.config["fid_samples"], test.split_size)
            cache = os.path.expanduser(self.config["stats_cache"]) if "://" not in self.config["stats_cache"] else self.config["stats_cache"]
            batches = (images.to(self.device) for images, _ in test_image_batches(test.shards, test.split,
                                                                                  self.config["batch_size"], count))
            mu, sigma = cached_statistics(test.fid_key, batches, cache, self.inception, count,
                                          self.config.get("storage_options") or None)
            self.reference[key] = (mu, sigma, count)
        return {"actor": self.identity(), "test_images": len(test.images), "has_masks": test.masks is not None,
                "fid_test_images": self.reference.get(key, (None, None, 0))[2]}

    def evaluate(self, checkpoint_url: str, run_url: str) -> dict[str, Any]:
        """Score one checkpoint folder and write its two figures under `{run_url}/eval/figures/`.

        Never raises: returns `{"ok": True, "record": {...}}` or `{"ok": False, "error":
        one line, "traceback": str}` (a corrupt or vanished checkpoint, a bad config)."""
        started = time.perf_counter()
        try:
            record = self._evaluate(checkpoint_url, run_url)
        except Exception as err:  # reported by the driver, which carries on
            return {"ok": False, "error": f"{err.__class__.__name__}: {str(err).splitlines()[0] if str(err) else ''}",
                    "traceback": traceback.format_exc(), "actor": self.identity()}
        record["eval_seconds"] = round(time.perf_counter() - started, 3)
        self.evaluated += 1
        record["actor"], record["actor_evaluations"] = self.identity(), self.evaluated
        return {"ok": True, "record": record}

    @torch.no_grad()
    def _evaluate(self, checkpoint_url: str, run_url: str) -> dict[str, Any]:
        storage_options = self.config.get("storage_options") or None
        meta = read_meta(checkpoint_url, storage_options)
        train_cfg = meta["config"]
        data_cfg = train_cfg["data"]
        data = {"url": data_cfg["url"], "split": data_cfg["eval_split"],
                "storage_options": dict(data_cfg.get("storage_options") or {})}
        self.prepare(data)
        test = self.test_sets[(data["url"], data["split"])]
        state, meta = load_checkpoint(checkpoint_url, storage_options, map_location=self.device)
        model = stored_model(meta)
        model.load_state_dict(state["model"])
        model.to(self.device).eval()
        del state
        step = int(meta["step"])
        record: dict[str, Any] = {
            "step": step, "checkpoint": checkpoint_url, "dataset": data_cfg.get("name"),
            "model": train_cfg["model"]["name"], "evaluated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        flexible = self.config.get("stop_pixels") is not None and record["model"] == "genesis_v2"
        record.update(self._likelihood_and_segmentation(model, test, run_url, step, flexible))
        torch.manual_seed(self.config.get("seed", 0) + 1)
        if not is_generative(model):
            # Slot Attention: its err is a mean squared error, and it has no prior to sample.
            record["mse"] = record.pop("err")
            for key in ("kl", "elbo"):
                record.pop(key)
        elif self.inception is not None:
            record.update(self._fid_and_samples(model, data, run_url, step))
        else:
            self._generation_figure(model.sample(FIGURE_IMAGES), run_url, step)
        return record

    def _forward(self, model: torch.nn.Module, images: torch.Tensor, stop_pixels: float | None):
        if stop_pixels is not None:
            return model(images, stop_pixels=stop_pixels)
        return model(images)

    def _likelihood_and_segmentation(self, model, test: TestSet, run_url: str, step: int,
                                     flexible: bool) -> dict[str, Any]:
        """ELBO, err, KL (nats per image) over the held test images; segmentation scores over
        the first `segmentation_images`; with `flexible`, scores and slot counts of GENESIS-V2
        stopping its IC-SBP at `stop_pixels`."""
        cfg = self.config
        num_seg = min(cfg["segmentation_images"], len(test.images)) if test.masks is not None else 0
        stop = cfg.get("stop_pixels")
        sums = {"err": 0.0, "kl": 0.0, "elbo": 0.0}
        per_image: dict[str, dict[str, list[torch.Tensor]]] = {"": {}, "att_": {}, "flex_": {}}
        slots_used, slots_true = [], []
        batch = cfg["batch_size"]
        # Each pass draws its own seeded noise, so no option changes another pass's numbers.
        torch.manual_seed(cfg.get("seed", 0))
        for start in range(0, len(test.images), batch):
            images = test.images[start:start + batch].to(self.device).float().div(255.0)
            out = self._forward(model, images, None)
            for key in sums:
                sums[key] += float(getattr(out, key).double().sum())
            if start == 0:
                self._decomposition_figure(images, out, run_url, step, test.masks, is_generative(model))
            seg = max(0, min(num_seg - start, images.shape[0]))
            if seg:
                labels = test.masks[start:start + seg].to(self.device).long()
                self._score(per_image[""], labels, out.log_masks[:seg])
                if out.log_att_masks is not None:
                    self._score(per_image["att_"], labels, out.log_att_masks[:seg])
        torch.manual_seed(cfg.get("seed", 0) + 2)
        for start in range(0, num_seg if flexible else 0, batch):
            images = test.images[start:min(start + batch, num_seg)].to(self.device).float().div(255.0)
            labels = test.masks[start:start + images.shape[0]].to(self.device).long()
            flex = self._forward(model, images, stop)
            self._score(per_image["flex_"], labels, flex.log_masks)
            slots_used.append(flex.num_slots.cpu())
            slots_true.append(true_components(labels.cpu()))
        count = len(test.images)
        result: dict[str, Any] = {key: value / count for key, value in sums.items()}
        result["test_images"] = count
        if num_seg:
            result["segmentation_images"] = num_seg
            for prefix, values in per_image.items():
                result.update(_mean_scores(values, prefix))
            # The trivial answers on the same images: ARI-FG means little without them.
            trivial = trivial_answer_scores(test.masks[:num_seg].long(), test.images[:num_seg].float() / 255)
            result.update(one_slot_ari_fg=trivial["one_slot"]["ari_fg"], one_slot_msc_fg=trivial["one_slot"]["msc_fg"],
                          fg_bg_ari=trivial["fg_bg"]["ari"], colour_ari_fg=trivial["colour"]["ari_fg"])
        if flexible and slots_used:
            stats = slot_count_stats(torch.cat(slots_used), torch.cat(slots_true))
            result.update({"flex_stop_pixels": stop, "flex_mean_slots": stats["mean_slots"],
                           "flex_slots_mae": stats["mae"]})
        return result

    @staticmethod
    def _score(per_image: dict[str, list[torch.Tensor]], labels: torch.Tensor, log_masks: torch.Tensor) -> None:
        """Append the per-image segmentation scores of `log_masks` `[b, K, 1, H, W]` against
        `labels` `[b, H, W]` to `per_image`."""
        for key, values in segmentation_scores(labels, masks_to_labels(log_masks)).items():
            per_image.setdefault(key, []).append(values.cpu())

    def _fid_and_samples(self, model, data: dict, run_url: str, step: int) -> dict[str, Any]:
        """FID of `fid_samples` samples against the cached test statistics; the first
        samples also make the step-by-step generation figure."""
        mu, sigma, reference_count = self.reference[(data["url"], data["split"])]
        features, remaining, figure = [], self.config["fid_samples"], None
        while remaining > 0:
            n = min(self.config["batch_size"], remaining)
            samples = model.sample(n)
            if figure is None:
                figure = samples
            features.append(self.inception(samples.images))
            remaining -= n
        fid = fid_against_stats(torch.cat(features), mu, sigma)
        self._generation_figure(figure, run_url, step, fid)
        return {"fid": fid if math.isfinite(fid) else None, "fid_samples": self.config["fid_samples"],
                "fid_test_images": reference_count}

    def _decomposition_figure(self, images: torch.Tensor, out, run_url: str, step: int,
                              masks: torch.Tensor | None, generative: bool) -> None:
        from ..figures import decomposition_figure, save_png, scores_caption

        n = min(FIGURE_IMAGES, images.shape[0])
        att = out.log_att_masks[:n] if out.log_att_masks is not None else None
        labels = masks[:n] if masks is not None else None
        caption = scores_caption("test-set decomposition", step, out.log_masks[:n], labels,
                                 out.elbo[:n] if generative else None, log_att_masks=att)
        figure = decomposition_figure(images[:n], out.recon[:n], out.log_masks[:n], out.components[:n], att, caption)
        save_png(figure, join(run_url, EVAL_FOLDER, FIGURES_FOLDER, figure_name("decomposition", step)),
                 self.config.get("storage_options") or None)

    def _generation_figure(self, samples, run_url: str, step: int, fid: float | None = None) -> None:
        from ..figures import generation_figure, save_png, scores_caption

        n = FIGURE_IMAGES
        caption = scores_caption("prior samples, slots added one at a time", step, extra={"FID": fid})
        figure = generation_figure(samples.images[:n], samples.components[:n], samples.log_masks[:n], caption)
        save_png(figure, join(run_url, EVAL_FOLDER, FIGURES_FOLDER, figure_name("generation", step)),
                 self.config.get("storage_options") or None)
