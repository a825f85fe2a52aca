"""Linear Explanations in a dissection: label and attribute-column concepts, seeded splits, SIMULATE with
correlation and ablation scoring, the CLI, a re-run that recomputes nothing, and bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from rich.console import Console
from torch import nn
from typer.testing import CliRunner

from discover_ray import Store, dissect, load_config, load_run, read_labels, world
from discover_ray.cli import app
from discover_ray.errors import ConfigError, ExplainInputError
from discover_ray.schema import Explanations
from tests.ray_local.conftest import snapshot

FAMILIES = {"colour": "{value}", "shape": "{value}", "pattern": "{value}", "size": "{value}",
            "background": "{value} background"}
RESNET = {"name": "cifar_resnet20", "kwargs": {"num_classes": 9}, "layers": ["layer2", "layer3"]}


def dead_net(n_classes: int) -> nn.Sequential:
    """A net whose ``dead`` layer is 0 on every image (a ReLU after a very negative bias)."""
    conv = nn.Conv2d(3, 4, 3)
    nn.init.constant_(conv.bias, -1e4)
    return nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, n_classes))


@pytest.fixture(scope="module")
def world_parquet(tmp_path_factory) -> Path:
    return world.write_parquet(tmp_path_factory.mktemp("le") / "probe.parquet", world.generate(360, seed=5))


def le_config(probe: Path, store: Path, **changes) -> dict:
    config = {
        "name": "le", "store": str(store), "probe": {"source": str(probe), "shard_size": 120},
        "models": [RESNET],
        "concepts": [
            {"kind": "labels", "superclasses": {c: [k for k in world.class_names() if k.startswith(c + " ")]
                                                for c in world.COLOURS}},
            {"kind": "labels", "name": "families", "classes": False, "columns": FAMILIES},
        ],
        "reduce": {"methods": ["soft_wpmi", "linear_explanation"], "top_k": 3},
        "record": {"batch_size": 60},
        "ray": {"progress": False},
    }
    config.update(changes)
    return config


@pytest.fixture(scope="module")
def le_run(world_parquet, tmp_path_factory):
    store = tmp_path_factory.mktemp("le-store")
    config = load_config(le_config(world_parquet, store))
    console = Console(record=True, width=240)
    torch.manual_seed(0)
    result = dissect(config, executor="local", console=console)
    return config, result, console.export_text()


def test_attribute_columns_are_one_concept_per_value(le_run):
    config, result, _ = le_run
    entry, table = next((e, t) for e, t in read_labels(config.store, result.run_id, "layer3", method="linear_explanation")
                        if e.source == "families")
    assert entry.table == "explanations" and isinstance(table, Explanations)
    used = {c for terms in table.ranked().values() for c, _ in terms}
    assert used and used <= set(world.concept_vocabulary()) - set(world.class_names())


def test_the_split_is_recorded_and_explanations_fit_on_train_and_val_only(le_run):
    _, result, _ = le_run
    splits = result.record.splits
    assert splits is not None and splits.counts == {"train": 252, "val": 36, "test": 72}
    assert (splits.seed, splits.fractions, splits.column) == (0, [0.7, 0.1, 0.2], None)


def test_every_labelling_is_simulated_and_ablation_runs_where_the_layer_feeds_the_head(le_run):
    _, result, printed = le_run
    record = result.record
    assert record.models["cifar_resnet20"].heads == {"layer3": "linear"}
    scored = {(s.layer, s.source, s.method, s.scoring) for s in record.simulation}
    for layer in ("layer2", "layer3"):
        for source in ("labels", "families"):
            for method in ("soft_wpmi", "linear_explanation"):
                assert (layer, source, method, "correlation") in scored
                assert ((layer, source, method, "ablation_optim") in scored) == (layer == "layer3")
                assert ((layer, source, method, "ablation_norm") in scored) == (layer == "layer3")
    for s in record.simulation:
        assert s.units == 64 if s.layer == "layer3" else s.units == 32
        assert s.simulator == s.source and s.correlation_mean is not None
        assert -1 <= s.correlation_mean <= 1 or s.scoring != "correlation"  # ablation: below 0 is worse than the mean
    assert "simulation correlation cifar_resnet20/layer3 (labels): soft_wpmi" in printed


def test_a_rerun_recomputes_nothing_and_writes_the_same_bytes(le_run):
    config, result, _ = le_run
    before = snapshot(config.store)
    again = dissect(config, executor="local", console=Console(quiet=True))
    assert again.run_id == result.run_id and [s.stage for s in again.recomputed] == ["PREPARE"]
    assert snapshot(config.store) == before
    assert again.record.simulation == result.record.simulation


def test_cli_prints_weighted_explanations_with_their_correlations(le_run):
    config, result, _ = le_run
    out = CliRunner().invoke(app, ["labels", result.run_id, "--layer", "layer3", "--method", "linear_explanation",
                                   "--store", config.store, "--units", "0"])
    assert out.exit_code == 0, out.output
    assert "·" in out.output and "val r" in out.output and "test r" in out.output
    run = load_run(Store(config.store), result.run_id)
    entry = next(e for e in run.labels if e.method == "linear_explanation" and e.layer == "layer3")
    assert entry.table == "explanations"


def test_an_unknown_simulator_source_is_a_config_error(world_parquet, tmp_path):
    with pytest.raises(ConfigError, match="simulate.simulator 'siglip' is not a concept source"):
        load_config(le_config(world_parquet, tmp_path, simulate={"simulator": "siglip"}))


def test_a_split_with_no_validation_image_fails_naming_it_and_loses_nothing(le_run, world_parquet):
    config, result, _ = le_run
    bad = load_config(le_config(world_parquet, Path(config.store), simulate={"splits": {"fractions": [0.9, 0.0, 0.1]}}))
    before = snapshot(config.store)
    with pytest.raises(ExplainInputError, match="val split holds no image"):
        dissect(bad, executor="local", console=Console(quiet=True))
    after = snapshot(config.store)
    assert all(after[path] == digest for path, digest in before.items())  # nothing already written changed
    assert load_run(Store(config.store), result.run_id).status == "succeeded"


def test_a_layer_of_dead_units_is_recorded_as_dead(world_parquet, tmp_path):
    raw = le_config(world_parquet, tmp_path, models=[{
        "name": "dead", "builder": "tests.ray_local.test_linear_explanation:dead_net", "kwargs": {"n_classes": 9},
        "image_size": 32, "layers": ["1"]}], reduce={"methods": ["linear_explanation"]})
    result = dissect(load_config(raw), executor="local", console=Console(quiet=True))
    (_, table), *_ = read_labels(raw["store"], result.run_id, "1")
    assert all(dead for _, _, _, dead in table.by_unit().values()) and len(table.units) == 4
    assert table.describe("u00000") == "dead (constant activation)"
    sims = [s for s in result.record.simulation if s.scoring == "correlation"]
    assert sims and all(s.dead_units == 4 and s.correlation_mean is None for s in sims)


def test_calibrate_fits_a_clip_source_from_the_cli(world_parquet, tmp_path):
    import yaml

    config = le_config(world_parquet, tmp_path / "runs", concepts=[
        {"kind": "labels"}, {"kind": "clip", "model": "TinyCLIP-ViT-32", "concepts": "cifar10", "batch_size": 60}])
    path = tmp_path / "le.yaml"
    path.write_text(yaml.safe_dump(config))
    out = CliRunner().invoke(app, ["calibrate", str(path), "--method", "grid"])
    assert out.exit_code == 0, out.output
    assert "clip:TinyCLIP-ViT-32: a = " in out.output and "calibration: {a: " in out.output
    # LE over a CLIP source without a calibration is refused before any work, saying how to get one
    with pytest.raises(ConfigError, match="discover calibrate"):
        dissect(load_config(config), executor="local", console=Console(quiet=True))


def test_the_report_shows_explanations_and_every_methods_simulation_side_by_side(le_run, tmp_path):
    from discover_ray import build_report

    config, result, _ = le_run
    report = build_report(config.store, result.run_id, out=tmp_path / "report", examples=0)
    page = (report.folder / next(p for p in report.layers if "layer3" in p)).read_text()
    table = page[page.index('<table class="simulation">'):page.index("</table>", page.index('<table class="simulation">'))]
    assert "<th>soft_wpmi</th><th>linear_explanation</th>" in table
    assert table.count("<tr>") == 1 + 2 * 3  # header + (labels, families) × (correlation, ablation_optim, ablation_norm)
    assert page.count('class="explanation"') == 64 * 2 and "test r " in page and "·" in page


def test_on_ray_explain_and_simulate_write_the_same_bytes_as_in_process(le_run, world_parquet, tmp_path, ray_cluster):
    config, result, _ = le_run
    on_ray = load_config(le_config(world_parquet, tmp_path / "ray"))
    ray_result = dissect(on_ray, console=Console(quiet=True))
    assert ray_result.run_id == result.run_id
    stages = {s.stage for s in ray_result.record.stages}
    assert {"EXPLAIN", "SIMULATE", "REDUCE"} <= stages
    assert _same_outputs(on_ray.store, config.store)
    assert ray_result.record.simulation == result.record.simulation


def _same_outputs(a: str, b: str) -> bool:
    """Every label, explanation and score dataset of store a is in b, byte for byte (b holds other runs too)."""
    left, right = snapshot(a), snapshot(b)
    wanted = [p for p in left if p.startswith(("labels/", "simulation/"))]
    return bool(wanted) and all(left[p] == right.get(p) for p in wanted)


def test_a_simulator_other_than_the_explainer_scores_every_labelling(world_parquet, tmp_path):
    classes_only = {"kind": "labels", "name": "classes"}
    raw = le_config(world_parquet, tmp_path, models=[{**RESNET, "layers": ["layer3"]}],
                    concepts=[le_config(world_parquet, tmp_path)["concepts"][0], classes_only],
                    reduce={"methods": ["linear_explanation"]}, simulate={"simulator": "labels", "scorings": ["correlation"]})
    result = dissect(load_config(raw), executor="local", console=Console(quiet=True))
    assert {(s.source, s.simulator) for s in result.record.simulation} == {("labels", "labels"), ("classes", "labels")}
    with_families = le_config(world_parquet, tmp_path, simulate={"simulator": "labels"})
    with pytest.raises(ConfigError, match=r"simulator .labels. lacks 10 concept"):
        dissect(load_config(with_families), executor="local", console=Console(quiet=True))
