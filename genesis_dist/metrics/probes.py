"""Linear-ish probes of what a representation knows (GENESIS ShapeStacks probes, Sec. 4):
an MLP with one hidden layer of 512 ELUs trained on frozen features with labels."""
from __future__ import annotations

import torch
from torch import nn


def probe_accuracy(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    epochs: int = 100,
    batch_size: int = 128,
    lr: float = 1e-4,
    hidden: int = 512,
    seed: int = 0,
) -> float:
    """Train an MLP probe on `(train_features [N, D], train_labels [N])` and return its
    accuracy (fraction in [0, 1]) on `(test_features [M, D], test_labels [M])`.

    Labels are any integers (e.g. heights 2–6): the classes are the distinct values seen
    in train and test labels. Training: `epochs` passes over shuffled minibatches of
    `batch_size`, Adam with learning rate `lr`, cross-entropy. Runs on the features'
    device; `seed` fixes initialisation and shuffling.
    """
    if train_features.dim() != 2 or test_features.dim() != 2 or train_features.shape[1] != test_features.shape[1]:
        raise ValueError(f"features must be [N, D] and [M, D]; got {tuple(train_features.shape)}, {tuple(test_features.shape)}")
    if train_labels.shape != train_features.shape[:1] or test_labels.shape != test_features.shape[:1]:
        raise ValueError("need one label per feature row")
    device = train_features.device
    classes, labels = torch.unique(torch.cat([train_labels, test_labels]).to(device), return_inverse=True)
    train_y, test_y = labels[: len(train_labels)], labels[len(train_labels):]
    train_x, test_x = train_features.float(), test_features.float().to(device)

    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # seeded initialisation without moving the caller's RNG
        torch.manual_seed(seed)
        probe = nn.Sequential(nn.Linear(train_x.shape[1], hidden), nn.ELU(), nn.Linear(hidden, len(classes)))
    probe.to(device)
    optimiser = torch.optim.Adam(probe.parameters(), lr=lr)
    for _ in range(epochs):
        order = torch.randperm(len(train_x), generator=generator).to(device)
        for batch in order.split(batch_size):
            loss = nn.functional.cross_entropy(probe(train_x[batch]), train_y[batch])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
    with torch.no_grad():
        return float((probe(test_x).argmax(dim=1) == test_y).double().mean())
