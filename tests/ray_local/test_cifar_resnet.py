"""The shared pretrained ResNet-20 on CIFAR-10: soft-WPMI over label concepts names every output unit's class."""

from __future__ import annotations

import pytest
from rich.console import Console

from discover_ray.config import load_config
from discover_ray.runs import read_labels
from discover_ray.stages import dissect

pytestmark = pytest.mark.usefixtures("ray_cluster")


def test_resnet20_linear_units_are_their_classes(shared, tmp_path):
    config = load_config({
        "store": str(tmp_path / "runs"),
        "probe": {"source": str(shared / "data/cifar10/test.parquet"), "sample": 2000, "seed": 0, "shard_size": 1000},
        "models": [{
            "name": "cifar_resnet20",
            "checkpoint": str(shared / "models/cifar10-resnet/resnet20-12fca82f.th"),
            "layers": ["layer3", "linear"],
        }],
        "concepts": [{"kind": "labels"}],
        "reduce": {"methods": ["soft_wpmi"]},
        "ray": {"progress": False},
    })
    console = Console(record=True, width=200)
    result = dissect(config, console=console)
    printed = console.export_text()
    assert "neuron identification cifar_resnet20/linear (soft_wpmi, labels): top-1 100%" in printed
    (ident,) = result.identification
    assert ident["top1"] == 1.0 and ident["units"] == 10
    (_, table), = read_labels(config.store, result.run_id, "linear")
    top = {row["unit"]: row["concept"] for row in table.to_pylist() if row["rank"] == 0}
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert top == {f"u{i:05d}": name for i, name in enumerate(classes)}
