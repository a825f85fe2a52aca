"""Bad inputs fail early with a message that names the problem and the fix, and leave earlier outputs intact."""

from __future__ import annotations

import functools
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from rich.console import Console

from discover_ray import dissect, load_config, world
from discover_ray.demo import tiny_cnn
from discover_ray.errors import (
    CheckpointMismatch,
    ConfigError,
    DiscoverError,
    NonFiniteActivations,
    ProbeError,
    WeightsUnavailableError,
)
from discover_ray.store import Store
from tests.ray_local.conftest import activations, snapshot, tiny_config
from tests.unit.test_bad_input import png_bomb

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


@functools.cache
def bomb() -> bytes:
    return png_bomb(12000, 12000)


def bomb_probe(tmp_path, world_folder):
    """20 images and a 140 KB PNG that declares 12000 x 12000 pixels."""
    probe = corrupt_probe(tmp_path / "bomb", world_folder)
    (probe / "cat" / "broken.png").unlink()
    (probe / "cat" / "bomb.png").write_bytes(bomb())
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
            {"models": _model(layers=["relu2", "../relu2"])}, ConfigError, "layer '../relu2' cannot be part of a store path"),
        "layer name that climbs out of the store": (
            {"models": _model(layers=["relu2", "../../etc"])}, ConfigError, "layer '../../etc' cannot be part of a store path"),
        "model alias that is a path": (
            {"models": _model(alias="../x")}, ConfigError, "alias '../x' cannot be part of a store path"),
        "decompression bomb over budget": (
            {"probe": {"source": str(bomb_probe(tmp_path, world_folder)), "shard_size": 16}},
            ProbeError, r"could not be decoded.*bomb.png \(too large: the image is 12000x12000.*probe.max_pixels"),
        "missing concept file": (
            {"concepts": [{"kind": "clip", "model": "TinyCLIP-ViT-32", "concepts": str(tmp_path / "none.txt")}]},
            FileNotFoundError, "concept file .*none.txt.* not found"),
        "checkpoint that does not fit": (
            {"models": _model(checkpoint=str(checkpoint))}, CheckpointMismatch, "does not fit the model.*fc.weight"),
    }


@pytest.mark.parametrize("case", ["missing layer", "corrupt images over budget", "empty probe set",
                                  "unknown tag offline", "unknown tag", "checkpoint that does not fit",
                                  "layer name that is not a path segment", "layer name that climbs out of the store",
                                  "model alias that is a path", "decompression bomb over budget",
                                  "missing concept file"])
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow's, before our error
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


def nan_cnn(n_classes: int = 9) -> torch.nn.Module:
    """The tiny CNN with one broken output: unit 2 of ``fc`` is NaN for every image (NaN weights)."""
    model = tiny_cnn(n_classes)
    with torch.no_grad():
        model.fc.weight[2] = float("nan")
    return model


def test_nan_activations_fail_record_naming_model_layer_and_unit_and_commit_nothing(world_folder, tmp_path):
    store = tmp_path / "runs"
    model = _model(builder="tests.ray_local.test_bad_input:nan_cnn", alias="broken")
    raw = tiny_config(world_folder, store, models=model, concepts=[{"kind": "labels"}])
    for _ in range(2):  # a re-run fails the same way, not later in REDUCE
        with pytest.raises(NonFiniteActivations) as raised:
            dissect(load_config(raw), executor="local", console=QUIET)
        message = str(raised.value)
        assert "model 'broken'" in message and "NaN activations in layer 'fc'" in message
        assert "first units ['u00002']" in message and "1 of 9 units" in message
        assert "images ['" in message and "checkpoint" in message and "fp16" in message
    committed = [p.relative_to(store) for p in store.rglob("_SUCCESS.json") if "activations" in p.parts]
    assert committed == []  # neither fc nor relu2 (the same shard) was committed
    assert not list((store / "activations").rglob("part-*.parquet"))  # not even a part


def test_ids_with_newlines_tabs_and_unicode_run_through_record_and_reduce(world_folder, tmp_path):
    paths = sorted(world_folder.rglob("*.png"))[:24]
    classes = world.class_names()
    ids = [f"{p.parent.name}\n{i:02d}\tü 画像 ✓" for i, p in enumerate(paths)]
    manifest = tmp_path / "manifest.parquet"
    pq.write_table(pa.table({"uri": [str(p) for p in paths], "id": ids,
                             "label": [classes.index(p.parent.name) for p in paths],
                             "label_name": [p.parent.name for p in paths]}), manifest)
    probe = {"source": str(manifest), "id_column": "id", "label_column": "label", "label_name_column": "label_name",
             "shard_size": 16}
    raw = tiny_config(manifest, tmp_path / "runs", probe=probe, concepts=[{"kind": "labels"}])
    result = dissect(load_config(raw), executor="local", console=QUIET)
    record = result.record
    assert {e.layer for e in record.labels} == {"relu2", "fc"} and not record.failed_images
    recorded = activations(Store(result.store), record, "fc").read(columns=["image_id"])["image_id"].to_pylist()
    assert recorded == sorted(ids)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_a_decompression_bomb_within_the_budget_is_a_named_failed_image(world_folder, tmp_path):
    probe = {"source": str(bomb_probe(tmp_path, world_folder)), "shard_size": 16, "failure_budget": 0.1}
    raw = tiny_config(world_folder, tmp_path / "runs", probe=probe, concepts=[{"kind": "labels"}])
    record = dissect(load_config(raw), executor="local", console=QUIET).record
    [failed] = record.failed_images
    assert failed.image_id == "cat/bomb.png" and failed.reason.startswith("too large: the image is 12000x12000")
