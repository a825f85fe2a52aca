from __future__ import annotations

import torch

from discover_ray import world
from discover_ray.demo import run_demo


def test_world_is_seeded_and_balanced():
    a, b = world.generate(18, seed=4), world.generate(18, seed=4)
    assert torch.equal(a.images, b.images)
    assert not torch.equal(a.images, world.generate(18, seed=5).images)
    assert torch.bincount(a.labels).tolist() == [2] * 9
    names, scores = world.label_concepts(a)
    assert scores.shape == (18, 15) and torch.equal(scores.sum(dim=1), torch.full((18,), 3.0))
    assert names[int(a.labels[4])] == f"{list(world.COLOURS)[int(a.colours[4])]} {world.SHAPES[int(a.shapes[4])]}"


def test_demo_identifies_every_output_unit_deterministically():
    first = run_demo(seed=0)
    assert first.probe_accuracy > 0.9
    assert first.identification.top1 == 1.0
    second = run_demo(seed=0)
    assert [layer.concepts for layer in first.layers] == [layer.concepts for layer in second.layers]
