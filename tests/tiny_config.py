"""Overrides for a tiny GENESIS-V2 (32 px, K=3, 8 filters) that trains in seconds on a CPU:
shared by the tests that run real Ray Train jobs."""

TINY = [
    "model.img_size=32", "model.num_slots=3", "model.encoder_filters=8", "model.head_filters=8",
    "model.decoder_filters=8", "model.mlp_hidden=16", "model.feature_dim=16", "model.latent_dim=8",
    "model.prior_hidden=16", "optim.batch_size=8", "optim.lr=1e-3", "run.log_every=1",
    "run.checkpoint_every=2", "run.image_every=1000", "run.eval_images=8", "data.num_workers=0",
    "data.shuffle_buffer=16", "scaling.cpus_per_worker=1",
]
