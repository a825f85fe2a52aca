"""Bad inputs fail early with a message that names the problem and the fix, and leave earlier outputs intact."""

from __future__ import annotations

import time

import pytest
import torch
from rich.console import Console

from discover_ray import dissect, load_config
from discover_ray.demo import tiny_cnn
from discover_ray.errors import CheckpointMismatch, DiscoverError, ProbeError, WeightsUnavailableError
from tests.ray_local.conftest import snapshot, tiny_config

QUIET = Console(quiet=True)


@pytest.fixture(scope="module")
def earlier(world_folder, tmp_path_factory):
    """A store that already holds a finished dissection."""
    store = tmp_path_factory.mktemp("earlier") / "runs"
    dissect(load_config(tiny_config(world_folder, store, concepts=[{"kind": "labels"}])), executor="local", console=QUIET)
    return store


def _model(**changes):
    return [{**tiny_config("x", "y")["models"][0], **changes}]


def corrupt_probe(tmp_path, world_folder):
    probe = tmp_path / "probe"
    for path in sorted(world_folder.rglob("*.png"))[:20]:
        (probe / path.parent.name).mkdir(parents=True, exist_ok=True)
        (probe / path.parent.name / path.name).write_bytes(path.read_bytes())
    (probe / "cat").mkdir(exist_ok=True)
    (probe / "cat" / "broken.png").write_bytes(b"\x89PNG truncated")
    return probe


def cases(tmp_path, world_folder):
    checkpoint = tmp_path / "other.pt"
    torch.save(tiny_cnn(4).state_dict(), checkpoint)  # 4 outputs: does not fit a 9-class model
    (tmp_path / "empty").mkdir()
    return {
        "missing layer": (
            {"models": _model(layers=["relu2", "relu9"])}, KeyError, "no layer 'relu9'; closest: .*relu2"),
        "corrupt images over budget": (
            {"probe": {"source": str(corrupt_probe(tmp_path, world_folder)), "shard_size": 16}},
            ProbeError, "could not be decoded.*broken.png.*failure_budget"),
        "empty probe set": ({"probe": {"source": str(tmp_path / "empty")}}, ProbeError, "holds no images"),
        "unknown tag offline": (
            {"concepts": [{"kind": "clip", "model": "ViT-B-16", "pretrained": "openai", "concepts": "cifar10"}]},
            WeightsUnavailableError, "ViT-B-16/openai.*unreachable.*local or s3:// checkpoint"),
        "unknown tag": (
            {"concepts": [{"kind": "clip", "model": "ViT-B-16", "pretrained": "no-such-tag", "concepts": "cifar10"}]},
            ValueError, "neither an open_clip tag of ViT-B-16"),
        "layer name that is not a path segment": (
            {"models": _model(layers=["relu2", "../relu2"])}, KeyError, "no layer '../relu2'"),
        "missing concept file": (
            {"concepts": [{"kind": "clip", "model": "TinyCLIP-ViT-32", "concepts": str(tmp_path / "none.txt")}]},
            FileNotFoundError, "concept file .*none.txt.* not found"),
        "checkpoint that does not fit": (
            {"models": _model(checkpoint=str(checkpoint))}, CheckpointMismatch, "does not fit the model.*fc.weight"),
    }


@pytest.mark.parametrize("case", ["missing layer", "corrupt images over budget", "empty probe set",
                                  "unknown tag offline", "unknown tag", "checkpoint that does not fit",
                                  "layer name that is not a path segment", "missing concept file"])
def test_bad_input_fails_clearly_and_keeps_earlier_outputs(case, earlier, world_folder, tmp_path):
    changes, error, message = cases(tmp_path, world_folder)[case]
    before = snapshot(earlier)
    raw = tiny_config(world_folder, earlier, **{"concepts": [{"kind": "labels"}], **changes})
    started = time.perf_counter()
    with pytest.raises(error, match=message) as raised:
        dissect(load_config(raw), executor="local", console=QUIET)
    assert isinstance(raised.value, DiscoverError)  # a user error: the CLI prints it as one line (exit 2)
    assert time.perf_counter() - started < 30  # fails within seconds, not after a download retry loop
    after = snapshot(earlier)
    assert {name: after.get(name) for name in before} == before  # nothing earlier was removed or changed
