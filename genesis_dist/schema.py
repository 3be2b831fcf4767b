"""The configuration schema: dataclasses with every key, its type and its default, and
nothing else (no OmegaConf: a torch-only machine can build a model from `ModelConfig`).
`genesis_dist/config.py` composes and validates configs against it; the YAML files under
`configs/` state the papers' values.

`ModelConfig`'s defaults are GENESIS-V2's published architecture (also GENESIS's, whose
keys share them); the other models' values are in their `configs/model/NAME.yaml`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

MODEL_NAMES = ("genesis_v2", "genesis", "genesis_s", "monet", "slot_attention", "bd_vae", "dc_vae")


@dataclass
class ModelConfig:
    name: str = "genesis_v2"
    img_size: int = 64
    num_slots: int = 7
    latent_dim: int = 64
    component_latent_dim: int = 16  # GENESIS z^c
    kernel: str = "gaussian"  # GENESIS-V2 IC-SBP kernel
    embedding_dim: int = 8
    feature_dim: int = 128
    encoder_filters: int = 64
    head_filters: int = 64
    decoder_filters: int = 64
    mlp_hidden: int = 128
    prior_hidden: int = 256
    pixel_std: float = 0.7
    mask_loss: bool = False
    stop_pixels: Optional[float] = None  # flexible number of slots at test time
    num_iterations: int = 3  # Slot Attention's attention iterations


@dataclass
class ObjectiveConfig:
    name: str = "geco"  # geco | elbo | mse (Slot Attention's)
    goal: float = 0.5655  # GECO goal per pixel and channel
    step_size: Optional[float] = None  # λ; None: 1e-5 · 64² / (H·W)
    alpha: float = 0.99
    speedup: float = 10.0
    beta_init: float = 1.0
    beta_min: float = 1e-10
    beta_max: float = 1e10
    beta: float = 1.0  # fixed β of the elbo objective


@dataclass
class CurriculumConfig:
    """Schedules over training steps (training/curriculum.py); off by default (the papers'
    fixed settings)."""

    pixel_std_from: Optional[float] = None  # set: σ_x starts here, geometric to model.pixel_std over pixel_std_steps; objective.goal is stated at this σ and keeps its RMSE
    pixel_std_steps: List[int] = field(default_factory=lambda: [0, 0])  # [start, end] of the σ anneal
    mask_guidance: float = 0.0  # GENESIS-V2: weight of KL(stopgrad(attention masks) ‖ decoder masks), nats, not scaled by β
    mask_guidance_steps: List[int] = field(default_factory=lambda: [0, 0])  # held until the first, linear to 0 at the second; [0, 0]: throughout
    colour_hint: float = 0.0  # GENESIS-V2: weight of the colour-affinity loss on the IC-SBP embedding (models/genesis_v2.py), not scaled by β
    colour_hint_scale: float = 2.0  # colour distance scale s of its target: similarity(s²‖x_i − x_j‖²), images in [0, 1]
    colour_hint_steps: List[int] = field(default_factory=lambda: [0, 0])  # held until the first, linear to 0 at the second; [0, 0]: throughout


@dataclass
class OptimConfig:
    lr: float = 1e-4
    warmup_steps: int = 0  # linear learning-rate warm-up
    decay_every: Optional[int] = None  # multiply the learning rate by decay_rate every so many steps
    decay_rate: float = 0.5
    batch_size: int = 32  # images per worker and step (the papers' 32 on one GPU); the global batch is × workers
    global_batch_size: Optional[int] = None  # set: a fixed global batch, split evenly (batch_size is then ignored)
    lr_scaling: str = "none"  # none | linear | sqrt: scale lr by (global batch / lr_reference_batch)^1 or ^½
    lr_reference_batch: int = 32  # the global batch `lr` was tuned for
    steps: int = 500_000
    grad_clip: Optional[float] = None  # max global gradient norm
    precision: str = "auto"  # auto (bf16 autocast on GPUs, fp32 on CPUs) | fp32 | bf16 | fp16
    channels_last: bool = True  # NHWC activations: faster convolutions on CPU (oneDNN) and GPU
    compile: bool = False  # torch.compile the model (GPUs; compiling costs ~30 s on a CPU and did not pay there)


@dataclass
class DataConfig:
    name: str = "multi_dsprites"
    url: str = "data/multi_dsprites"  # any fsspec URL: local path, s3://, gs://
    train_split: str = "train"
    eval_split: str = "test"
    num_workers: Optional[int] = None  # DataLoader workers per training worker; None: the node's cores per training worker, less one
    shuffle_buffer: int = 1000
    generate_if_missing: bool = False  # make a small Multi-dSprites set locally
    generate_train: int = 2000
    generate_test: int = 200
    storage_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ScalingConfig:
    num_workers: Any = 1  # training workers (one per GPU): N, or [MIN, MAX] for elastic training (see worker_range)
    resize_interval_s: float = 60.0  # elastic: how often Ray Train looks for room to grow the worker group
    use_gpu: Optional[bool] = None  # None: use GPUs when the cluster has them
    cpus_per_worker: float = 1.0
    # Further Ray resources each training worker reserves, e.g. {accelerator_type:A10G: 0.001} to
    # pin workers to a node type, or the rehearsal's {rehearsal_gpu: 1} (tools/local_cluster.py);
    # CPUs and GPUs are cpus_per_worker and use_gpu.
    resources_per_worker: dict[str, float] = field(default_factory=dict)
    sync_batchnorm: bool = True  # BatchNorm statistics over all workers' batches (GENESIS) when > 1 worker


@dataclass
class RunConfig:
    name: str = ""  # empty: {model}-{data}[-{experiment}]
    storage_path: str = "runs"  # local path or s3:// URL
    seed: int = 0
    deterministic: bool = True
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    log_every: int = 50
    log_sample_keys: bool = False  # debug: each rank writes the sample keys of every step to {run}/sample_keys/
    image_every: int = 1000
    eval_images: int = 64
    max_failures: int = 2


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    run: RunConfig = field(default_factory=RunConfig)


@dataclass
class EvalConfig:
    """`python -m genesis_dist.evaluate`: the evaluation actor pool (configs/eval.yaml)."""

    run: str = ""  # run folder URL: {run.storage_path}/{run.name}
    watch: bool = False  # keep polling for new checkpoints until the run writes finished.json
    poll_seconds: float = 30.0
    actors: int = 2
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    batch_size: int = 64
    fid_samples: int = 10_000  # model samples vs as many test images (papers: 10,000)
    segmentation_images: int = 320  # papers: 320 test images
    elbo_images: Optional[int] = None  # test images for ELBO / err / KL; None: the whole test split
    stop_pixels: Optional[float] = None  # flexible number of slots (GENESIS-V2)
    seed: int = 0  # posterior and prior noise, the same for every checkpoint
    start_timeout_s: float = 600.0  # an actor that has not started by then (no resources) is an error
    checkpoint_timeout_s: float = 3600.0  # an evaluation running longer is killed and reported failed
    stats_cache: str = "~/.cache/genesis_dist/fid"  # test-set FID statistics, keyed by manifest sha256
    storage_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class SweepConfig:
    """`python -m genesis_dist.tune`: how a sweep runs (the `sweep:` section of
    `configs/tune/NAME.yaml`, `sweep.key=value` overrides)."""

    name: str = ""  # sweep folder under run.storage_path; empty: tune-{space}-{run name}
    metric: str = "eval_ari_fg"  # what the scheduler and best.yaml rank trials by
    mode: str = "max"  # max | min
    scheduler: str = "asha"  # asha | fifo (every trial runs to the end)
    grace_period: int = 1  # reports (checkpoints) a trial makes before ASHA may stop it
    reduction_factor: int = 2  # ASHA keeps the best 1/reduction_factor at each rung
    num_samples: int = 1  # how often the grid is repeated (random choices drawn anew)
    max_concurrent_trials: Optional[int] = None  # None: as many as the cluster's CPUs / GPUs fit
    driver_cpus: float = 0.05  # each trial's driver (Tune sees only this; its workers reserve their own)
