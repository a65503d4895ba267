"""Seeded noise: CPU generators per image, batch = single, variation seeds, random seed resolution."""

import random

import torch

from webui.engine.sampling.noise import ImageRNG, resolve_seed, slerp


def test_noise_is_torch_cpu_randn_of_the_seed():
    rng = ImageRNG((4, 8, 8), [1234])
    assert torch.equal(rng.first()[0], torch.randn((4, 8, 8), generator=torch.Generator().manual_seed(1234)))


def test_batch_member_equals_its_seed_alone_including_later_draws():
    batch, alone = ImageRNG((4, 8, 6), [10, 11, 12]), ImageRNG((4, 8, 6), [12])
    assert torch.equal(batch.first()[2], alone.first()[0])
    for _ in range(3):
        assert torch.equal(batch.next()[2], alone.next()[0])


def test_variation_strength_endpoints():
    plain = ImageRNG((4, 8, 8), [5]).first()
    sub = ImageRNG((4, 8, 8), [9]).first()
    assert torch.equal(ImageRNG((4, 8, 8), [5], [9], 0.0).first(), plain)
    assert torch.allclose(ImageRNG((4, 8, 8), [5], [9], 1.0).first(), sub, atol=1e-5)
    mid = ImageRNG((4, 8, 8), [5], [9], 0.5).first()
    assert not torch.allclose(mid, plain) and not torch.allclose(mid, sub)
    assert abs(mid.std().item() - 1.0) < 0.15  # slerp keeps the noise's scale (a lerp would shrink it)


def test_slerp_of_parallel_vectors_is_stable():
    a = torch.ones(4, 8, 8)
    assert torch.allclose(slerp(0.3, a, a), a)


def test_resolve_seed():
    assert resolve_seed(42) == 42
    seeds = {resolve_seed(-1, random.Random(i)) for i in range(20)}
    assert len(seeds) == 20 and all(0 <= s < 2**32 for s in seeds)
