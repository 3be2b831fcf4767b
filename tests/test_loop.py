"""The one training loop (`training.loop.fit`) and the rank runner the Ray worker
calls (`training.run.train_rank`), without Ray: GECO wiring, determinism,
precision, hooks, checkpoints and exact resume."""
import json

import pytest
import torch

from genesis_dist.config import ObjectiveConfig, load_config
from genesis_dist.objectives import GECO
from genesis_dist.training.loop import Hook, MetricWindow, TrainState, fit, lr_factor, make_optimizer, seed_everything, train_step
from genesis_dist.training.objective import TrainingObjective, base_objective
from genesis_dist.training.run import publish_to_run_folder, train_rank
from genesis_dist.training.checkpoint import load_checkpoint
from model_factory import make_model
from tiny_config import TINY


def _setup(seed=0):
    seed_everything(seed)
    model = make_model("genesis_v2", img_size=32, num_slots=3, encoder_filters=16, head_filters=16, decoder_filters=16)
    objective = TrainingObjective(base_objective(ObjectiveConfig(), 32))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    return model, objective, optimizer


def _batches(seed):
    gen = torch.Generator().manual_seed(seed)
    while True:
        yield torch.rand(4, 3, 32, 32, generator=gen)


def test_step_reports_nats_and_updates_geco_beta():
    model, objective, optimizer = _setup()
    assert isinstance(objective.base, GECO)
    assert objective.base.goal == pytest.approx(0.5655 * 3 * 32 * 32)
    before = [p.detach().clone() for p in model.parameters()]
    m = {k: float(v) for k, v in train_step(model, objective, optimizer, torch.rand(4, 3, 32, 32)).items()}
    assert set(m) >= {"loss", "err", "kl", "elbo", "beta", "grad_norm"}
    assert m["elbo"] == pytest.approx(-(m["err"] + m["kl"]), rel=1e-5)
    assert objective.base.err_ema == pytest.approx(m["err"])
    assert m["beta"] == objective.beta != 1.0
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_training_is_deterministic_on_cpu():
    class Losses(Hook):
        def __init__(self):
            self.losses = []

        def wants_metrics(self, step):
            return True

        def after_step(self, state, metrics):
            self.losses.append(metrics["loss"])

    runs = []
    for _ in range(2):
        model, objective, optimizer = _setup(seed=1)
        hook = Losses()
        fit(TrainState(model, objective, optimizer), _batches(0), 3, [hook])
        runs.append(hook.losses)
    assert len(runs[0]) == 3 and runs[0] == runs[1]


def test_metric_window_means_between_reads_and_keeps_latest_beta():
    window = MetricWindow()
    for loss, beta in ((1.0, 0.5), (3.0, 0.25)):
        window.add({"loss": torch.tensor(loss), "beta": torch.tensor(beta, dtype=torch.float64)})
    assert window.read() == {"loss": 2.0, "beta": 0.25}
    window.add({"loss": torch.tensor(5.0), "beta": torch.tensor(0.1)})
    assert window.read()["loss"] == 5.0


def test_fit_reads_metrics_only_when_a_hook_asks_and_hooks_run_in_order():
    calls = []

    class Every2(Hook):
        def before_step(self, state, step):
            calls.append(("before", step))

        def wants_metrics(self, step):
            return step % 2 == 0

        def after_step(self, state, metrics):
            calls.append(("after", state.step, metrics is not None))

        def should_stop(self, state):
            return state.step == 4

        def on_end(self, state):
            calls.append(("end", state.step))

    model, objective, optimizer = _setup()
    state = fit(TrainState(model, objective, optimizer), _batches(0), 10, [Every2()])
    assert state.step == 4
    assert calls == [("before", 1), ("after", 1, False), ("before", 2), ("after", 2, True), ("before", 3),
                     ("after", 3, False), ("before", 4), ("after", 4, True), ("end", 4)]


def test_lr_schedule_warms_up_then_decays():
    assert [lr_factor(s, warmup_steps=4) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert lr_factor(200, warmup_steps=10, decay_every=100, decay_rate=0.5) == 0.25
    assert lr_factor(150, decay_every=100) == pytest.approx(0.5**1.5)  # continuous, as Slot Attention's
    cfg = load_config(["optim.lr=1e-3", "optim.warmup_steps=2"]).optim
    model = torch.nn.Linear(2, 2)
    optimizer, schedule = make_optimizer(model.parameters(), cfg)
    seen = []
    for _ in range(3):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert seen == pytest.approx([5e-4, 1e-3, 1e-3])


def test_grad_clip_bounds_the_update():
    model, objective, optimizer = _setup()
    m = train_step(model, objective, optimizer, torch.rand(4, 3, 32, 32), grad_clip=1e-3)
    assert float(m["grad_norm"]) > 1e-3  # the reported norm is the one before clipping
    total = torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters() if p.grad is not None))
    assert total.item() == pytest.approx(1e-3, rel=1e-3)


def test_bf16_step_runs_on_cpu():
    model, objective, optimizer = _setup()
    m = train_step(model, objective, optimizer, torch.rand(2, 3, 32, 32), precision="bf16")
    assert all(torch.isfinite(v) for v in m.values())


def test_unknown_precision_is_rejected():
    model, objective, optimizer = _setup()
    with pytest.raises(ValueError, match="fp8"):
        train_step(model, objective, optimizer, torch.rand(2, 3, 32, 32), precision="fp8")


def _run(shards, run_url, steps, checkpoint_folder=None):
    cfg = load_config(TINY + [f"data.url={shards}", f"optim.steps={steps}", "run.log_every=1"])
    return train_rank(cfg, run_url, rank=0, world=1, device=torch.device("cpu"),
                      publish=publish_to_run_folder(run_url), checkpoint_folder=checkpoint_folder,
                      progress=lambda event: None)


def test_the_worker_rank_runner_checkpoints_and_resumes_exactly(shards, tmp_path):
    """`train_rank` (what every Ray worker runs) without Ray: 6 steps straight against 4
    steps, then 2 more resumed from the step-4 checkpoint."""
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    _run(shards, straight, 6)
    _run(shards, resumed, 4)
    state = _run(shards, resumed, 6, checkpoint_folder=f"{resumed}/checkpoint_00000004")
    assert state.step == 6
    history = lambda run: {r["step"]: r for r in map(json.loads, open(f"{run}/metrics.jsonl"))}  # noqa: E731
    a, b = history(straight), history(resumed)
    assert sorted(b) == list(range(1, 7))
    for step in (5, 6):
        assert b[step]["loss"] == a[step]["loss"] and b[step]["beta"] == a[step]["beta"], step
    saved, meta = load_checkpoint(f"{resumed}/checkpoint_00000006")
    assert meta["step"] == 6 and set(saved) >= {"model", "optimizer", "schedule", "objective"}
    assert "elbo" in meta["eval"] and (tmp_path / "resumed" / "finished.json").exists()
    assert (tmp_path / "resumed" / "figures" / "decomposition_00000006.png").exists()


def test_heldout_scores_sit_beside_the_trivial_answers():
    from genesis_dist.metrics.trivial import trivial_answer_scores
    from genesis_dist.training.loop import evaluate_batch, heldout_metric_names

    model, _, _ = _setup()
    images = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    labels = torch.zeros(6, 32, 32, dtype=torch.long)
    labels[:, 4:12, 4:12] = 1
    labels[3:, 20:28, 20:28] = 2  # three images with one object, three with two
    scores = evaluate_batch(model, images, labels)
    assert set(scores) == set(heldout_metric_names(has_masks=True, has_attention=True))
    assert scores["one_slot_ari_fg"] == pytest.approx(0.5)  # 1 on one-object images, 0 on the others
    assert scores["one_slot_msc_fg"] == pytest.approx(trivial_answer_scores(labels)["one_slot"]["msc_fg"])
    assert scores["fg_bg_ari"] == pytest.approx(trivial_answer_scores(labels)["fg_bg"]["ari"])
    assert scores["colour_ari_fg"] == pytest.approx(trivial_answer_scores(labels, images)["colour"]["ari_fg"])
    assert set(evaluate_batch(model, images)) == {"images", "err", "kl", "elbo"}
    assert scores["images"] == 6


KEEP_FREED_PROGRAM = """
import resource, sys, torch
from genesis_dist.training.loop import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def faults_of_a_step():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = torch.ones(64 * 2**20 // 4)  # 64 MiB, over glibc's largest mmap threshold (32 MiB)
    del block
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(min(faults_of_a_step() for _ in range(6)))
"""


def test_keep_freed_memory_reuses_a_freed_block_without_page_faults():
    """A 64 MiB block allocated and freed six times: glibc's default maps it afresh every time
    (16,384 page faults each), after keep_freed_memory the freed heap block is reused (the
    fewest faults of the six: none)."""
    import subprocess
    import sys

    def faults(mode):
        out = subprocess.run([sys.executable, "-c", KEEP_FREED_PROGRAM, mode], capture_output=True, text=True,
                             check=True)
        return int(out.stdout.split()[-1])

    assert faults("default") > 10_000
    assert faults("keep") < 1_000
