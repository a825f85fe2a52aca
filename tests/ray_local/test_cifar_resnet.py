"""The shared pretrained ResNet-20 on CIFAR-10: soft-WPMI over label concepts names every output unit's class,
and the run's report renders in Chromium with its thumbnails."""

from __future__ import annotations

import pytest
from rich.console import Console

from discover_ray import build_report, dissect, load_config, read_labels

pytestmark = pytest.mark.usefixtures("ray_cluster")
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(scope="module")
def resnet20_run(tmp_path_factory):
    from tests.conftest import shared_dir

    shared = shared_dir()
    if not shared.is_dir():
        pytest.skip(f"shared data folder {shared} is absent (set DISCOVER_SHARED)")
    config = load_config({
        "store": str(tmp_path_factory.mktemp("resnet20") / "runs"),
        "probe": {"source": str(shared / "data/cifar10/test.parquet"), "sample": 2000, "seed": 0, "shard_size": 1000},
        "models": [{
            "name": "cifar_resnet20",
            "checkpoint": str(shared / "models/cifar10-resnet/resnet20-12fca82f.th"),
            "layers": ["layer3", "linear"],
        }, {  # its CVN twin, from the same weights file
            "name": "cifar_resnet20_cvn2",
            "checkpoint": str(shared / "models/cifar10-resnet/resnet20-12fca82f.th"),
            "layers": ["linear"],
        }],
        "concepts": [{"kind": "labels"}],
        "reduce": {"methods": ["soft_wpmi"]},
        "ray": {"progress": False},
    })
    console = Console(record=True, width=200)
    result = dissect(config, console=console)
    return config, result, console.export_text()


def test_resnet20_linear_units_are_their_classes(resnet20_run):
    config, result, printed = resnet20_run
    assert "neuron identification cifar_resnet20/linear (soft_wpmi, labels): top-1 100%" in printed
    ident = next(i for i in result.identification if i.model == "cifar_resnet20")
    assert ident.top1 == 1.0 and ident.units == 10
    (_, table), = read_labels(config.store, result.run_id, "linear", model="cifar_resnet20")
    top = {row["unit"]: row["concept"] for row in table.to_pylist() if row["rank"] == 0}
    assert top == {f"u{i:05d}": name for i, name in enumerate(CLASSES)}


def test_the_cvn_twin_of_the_same_weights_is_another_model_in_the_same_pass(resnet20_run):
    _, result, _ = resnet20_run
    models = result.record.models
    relu, cvn = models["cifar_resnet20"], models["cifar_resnet20_cvn2"]
    assert relu.weights_sha256 == cvn.weights_sha256 == relu.checkpoint_id  # the file's sha256
    assert cvn.checkpoint_id != relu.checkpoint_id  # its outputs are stored apart from the ReLU network's
    decode, first, second = (s for s in result.record.stages if s.stage in ("DECODE", "RECORD"))
    assert first.counts["pass"] == second.counts["pass"] == ["DECODE", "RECORD", "RECORD"]  # one pass, decoded once
    assert decode.counts["shards"] == 2 and first.counts["pixels"]["shards_decoded"] == 2


@pytest.mark.browser
def test_resnet20_report_shows_its_thumbnails_in_chromium(resnet20_run, chromium, tmp_path):
    from selenium.webdriver.support.ui import WebDriverWait

    config, result, _ = resnet20_run
    report = build_report(config.store, result.run_id, out=tmp_path / "report", examples=4, top_images=8)
    linear = next(p for p in report.layers if "linear" in p)
    chromium.get((report.folder / linear).resolve().as_uri())
    WebDriverWait(chromium, 20).until(lambda d: d.execute_script("return document.readyState") == "complete")
    chromium.execute_script("document.querySelectorAll('.card').forEach(c => c.scrollIntoView())")
    WebDriverWait(chromium, 20).until(  # lazy thumbnails load asynchronously once scrolled into view
        lambda d: d.execute_script("return Array.from(document.querySelectorAll('.thumbs img')).every(i => i.complete)"))
    state = chromium.execute_script(
        "const cards = Array.from(document.querySelectorAll('.card'));"
        "return cards.map(c => [c.querySelector('.label').firstChild.textContent.trim(),"
        "  Array.from(c.querySelectorAll('.thumbs img')).map(i => i.complete && i.naturalWidth === 32)])")
    assert sorted(label for label, _ in state) == CLASSES  # one card per class unit, labelled with its class
    assert all(len(shown) == 8 and all(shown) for _, shown in state)  # 8 CIFAR thumbnails (32 px) decoded per card
    chromium.execute_script("window.scrollTo(0, 0)")
    shot = tmp_path / "resnet20_linear.png"
    chromium.save_screenshot(str(shot))
    print(f"screenshot: {shot}")


def test_resnet20_layer3_linear_explanations_simulate_better_than_single_labels(tmp_path):
    """LE(Label) over the 10 classes and CIFAR-10's two superclasses, against soft-WPMI's single label, scored by
    simulation on the held-out test images of the split (correlation, and ablation through ``linear``)."""
    from tests.conftest import shared_dir

    shared = shared_dir()
    if not shared.is_dir():
        pytest.skip(f"shared data folder {shared} is absent (set DISCOVER_SHARED)")
    config = load_config({
        "store": str(tmp_path / "runs"),
        "probe": {"source": str(shared / "data/cifar10/test.parquet"), "sample": 1500, "seed": 1, "shard_size": 750},
        "models": [{"name": "cifar_resnet20", "checkpoint": str(shared / "models/cifar10-resnet/resnet20-12fca82f.th"),
                    "layers": ["layer3"]}],
        "concepts": [{"kind": "labels", "superclasses": "cifar10_superclasses"}],
        "reduce": {"methods": ["soft_wpmi", "linear_explanation"]},
        "simulate": {},
        "ray": {"progress": False},
    })
    result = dissect(config, executor="local", console=Console(quiet=True))
    scores = {(s.method, s.scoring): s for s in result.record.simulation}
    le, single = scores["linear_explanation", "correlation"], scores["soft_wpmi", "correlation"]
    assert le.units == single.units == 64 and le.dead_units == 0
    assert le.correlation_mean > single.correlation_mean + 0.1, (le, single)
    assert scores["linear_explanation", "ablation_optim"].correlation_mean > scores["soft_wpmi", "ablation_optim"].correlation_mean
    (entry, table), = read_labels(config.store, result.run_id, "layer3", method="linear_explanation")
    concepts = {c for terms in table.ranked().values() for c, _ in terms}
    assert concepts & {"animal", "vehicle"}  # the superclasses explain some units
