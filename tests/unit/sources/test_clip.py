"""CLIP concept values: the published SigLIP constants are built in, a configured calibration wins."""

from __future__ import annotations

from discover_ray.sources.clip import ClipConcepts


def test_published_constants_and_a_configured_calibration():
    siglip = ClipConcepts(model="ViT-L-16-SigLIP-384", pretrained="webli", concepts="cifar10")
    assert siglip.calibrated() == (60, -0.09)
    assert ClipConcepts(model="ViT-SO400M-14-SigLIP-384", pretrained="webli", concepts="cifar10").calibrated() == (58, -0.13)
    assert ClipConcepts(model="TinyCLIP-ViT-32", concepts="cifar10").calibrated() is None
    mine = ClipConcepts(model="TinyCLIP-ViT-32", concepts="cifar10", calibration={"a": 5.0, "b": -0.6})
    assert mine.calibrated() == (5.0, -0.6) and mine.identity()["calibration"] == {"a": 5.0, "b": -0.6}
