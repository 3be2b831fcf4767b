"""The MLP probe learns a separable labelling and stays at chance on random labels."""
import torch

from genesis_dist.metrics import probe_accuracy


def separable_set(generator: torch.Generator, n: int, dim: int = 16, classes: tuple = (2, 3, 4, 5, 6)):
    """Gaussian clusters around well-separated class centres; labels are the class values."""
    centres = 3.0 * torch.randn(len(classes), dim, generator=generator)
    index = torch.randint(0, len(classes), (n,), generator=generator)
    features = centres[index] + torch.randn(n, dim, generator=generator)
    return features, torch.tensor(classes)[index]


def test_probe_learns_separable_labels():
    generator = torch.Generator().manual_seed(0)
    features, labels = separable_set(generator, 1500)
    accuracy = probe_accuracy(features[:1000], labels[:1000], features[1000:], labels[1000:], epochs=20)
    assert accuracy > 0.9


def test_probe_memorises_random_labels_but_is_at_chance_on_held_out_ones():
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(1128, 256, generator=generator)
    labels = torch.randint(0, 2, (1128,), generator=generator)
    train_x, train_y, test_x, test_y = features[:128], labels[:128], features[128:], labels[128:]
    assert probe_accuracy(train_x, train_y, train_x, train_y) > 0.9
    assert abs(probe_accuracy(train_x, train_y, test_x, test_y) - 0.5) < 0.05  # 1000 labels: chance ± ~3 s.e.


def test_probe_is_seeded_and_leaves_global_rng_alone():
    generator = torch.Generator().manual_seed(2)
    features, labels = separable_set(generator, 300, classes=(0, 1, 2))
    state = torch.random.get_rng_state()
    first = probe_accuracy(features[:200], labels[:200], features[200:], labels[200:], epochs=2, seed=5)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert probe_accuracy(features[:200], labels[:200], features[200:], labels[200:], epochs=2, seed=5) == first
