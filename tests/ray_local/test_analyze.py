"""Reading dissections back: per-example active neurons, sparsity, and comparing two checkpoints."""

from __future__ import annotations

import pytest
from rich.console import Console
from typer.testing import CliRunner

from discover_ray import compare_runs, dissect, explain_image, layer_sparsity, load_config, world
from discover_ray.cli import app
from tests.ray_local.conftest import DeitRuns, tiny_config

QUIET = Console(quiet=True)


def test_every_example_of_an_lwta_layer_lists_one_neuron_per_block(deit_runs: DeitRuns, world_folder):
    root, run = deit_runs.root, deit_runs.cvn
    images = sorted(str(p.relative_to(world_folder)) for p in world_folder.rglob("*.png"))
    for image_id in images[:5]:
        result = explain_image(root, run, image_id, "blocks.1.mlp.act", method="soft_wpmi")
        assert result.block_size == 16 and result.units == 768
        assert result.count == 48 and result.fraction == pytest.approx(1 / 16)
        assert sorted(result.table["block"].to_pylist()) == list(range(48))
        activations = result.table["activation"].to_pylist()
        assert activations == sorted(activations, reverse=True) and all(a != 0 for a in activations)
        assert set(result.table["concept"].to_pylist()) <= set(world.class_names())
    with pytest.raises(KeyError, match="not in the probe set"):
        explain_image(root, run, "no/such/image", "blocks.1.mlp.act")
    printed = CliRunner().invoke(app, ["explain-image", run, "--image", images[0], "--layer", "blocks.1.mlp.act",
                                       "--store", str(root), "--method", "soft_wpmi"])
    assert printed.exit_code == 0 and "48 of 768 units active" in " ".join(printed.output.split())


def test_sparsity_of_an_lwta_layer_is_one_over_u(deit_runs: DeitRuns):
    root, run = deit_runs.root, deit_runs.cvn
    stats = {row.layer: row for row in layer_sparsity(root, run)}
    lwta = stats["blocks.1.mlp.act"]
    assert lwta.block_size == 16 and lwta.pooled.mean == pytest.approx(1 / 16) and lwta.pooled.std == pytest.approx(0.0)
    assert lwta.pooled.examples == 72 and lwta.per_position.mean == pytest.approx(1 / 16)  # every token, not only CLS
    assert stats["head"].pooled.mean > 0.9 and stats["head"].per_position is None  # no competition in the classifier


def test_a_conv_lwta_layer_is_one_over_u_at_every_position(world_folder, tmp_path):
    """Pooling a conv LWTA map over space mixes the positions' winners; at each position exactly 1/U win."""
    model = {**tiny_config("x", "y")["models"][0], "name": "tiny_cnn_cvn2",
             "kwargs": {"n_classes": len(world.class_names()), "competitors": 2}}
    raw = tiny_config(world_folder, tmp_path / "runs", models=[model], concepts=[{"kind": "labels"}])
    run = dissect(load_config(raw), executor="local", console=QUIET).run_id
    relu2 = next(row for row in layer_sparsity(tmp_path / "runs", run) if row.layer == "relu2")
    assert relu2.block_size == 2 and relu2.per_position.mean == pytest.approx(0.5) and relu2.per_position.std < 1e-6
    assert relu2.pooled.mean > 0.6  # the spatial mean of the pooled units: most channels win somewhere
    printed = CliRunner().invoke(app, ["sparsity", run, "--store", str(tmp_path / "runs")], env={"COLUMNS": "200"})
    assert printed.exit_code == 0 and "0.5000 ± 0.0000" in " ".join(printed.output.split())


def test_comparing_two_checkpoints_gives_label_stability_per_layer(deit_runs: DeitRuns):
    root, run_a, run_b = deit_runs.root, deit_runs.cvn, deit_runs.cvn_seed1
    same = compare_runs(root, run_a, run_a, method="soft_wpmi")
    assert {c.layer for c in same} == {"blocks.1.mlp.act", "head"} and all(c.stability == 1.0 for c in same)
    other = {c.layer: c for c in compare_runs(root, run_a, run_b, method="soft_wpmi")}
    assert other["blocks.1.mlp.act"].units == 768 and 0 <= other["blocks.1.mlp.act"].stability < 1
    changes = other["blocks.1.mlp.act"].changes.to_pylist()
    moved = [r for r in changes if r["concept_a"] != r["concept_b"]]
    assert changes[: len(moved)] == moved  # the changed units come first, least overlap first
    assert [r["shared_top_k"] for r in moved] == sorted(r["shared_top_k"] for r in moved)

    runner = CliRunner()
    printed = runner.invoke(app, ["compare", run_a, run_b, "--store", str(root), "--method", "soft_wpmi"])
    text = " ".join(printed.output.split())  # the table may wrap on a narrow terminal
    assert printed.exit_code == 0 and "768" in text and "head" in text and "→" in text
    printed = runner.invoke(app, ["sparsity", run_a, "--store", str(root)])
    assert printed.exit_code == 0 and "0.0625 ± 0.0000" in " ".join(printed.output.split())


def test_final_layer_evaluation_records_the_paired_text_cosine(world_folder, tmp_path):
    """A classifier dissected with a CLIP concept set that holds the class names: identification and the
    paired cosine between each unit's top concept and its class, in the encoder's text space."""
    import numpy as np

    from discover_ray import load_run, read_labels
    from discover_ray.evaluate import paired_embedding_cosine
    from discover_ray.schema import read_embeddings
    from discover_ray.store import Store

    concepts = tmp_path / "classes.txt"
    concepts.write_text("\n".join(world.class_names()) + "\n")
    raw = tiny_config(world_folder, tmp_path / "runs",
                      concepts=[{"kind": "clip", "model": "TinyCLIP-ViT-32", "concepts": str(concepts), "batch_size": 16}])
    raw["models"][0]["layers"] = ["fc"]
    result = dissect(load_config(raw), executor="local", console=QUIET)
    store = Store(str(tmp_path / "runs"))
    run = load_run(store, result.run_id)
    (ident,) = [i for i in run.identification if i.method == "cos"]
    (entry, labels), = read_labels(store, result.run_id, "fc", method="cos")
    (texts,) = [p for p in run.outputs if p.startswith(f"embeddings/{entry.encoder_id}/concepts/{entry.concept_set_id}/")]
    names, emb = read_embeddings(store.committed(texts).read())
    truth = [names.index(name) for name in load_config(raw).probe.open().classes]  # unit i is the probe's class i
    top = labels.table.filter(labels.table["rank"].to_numpy() == 0).sort_by("unit")
    expected = paired_embedding_cosine(emb, top["concept_index"].to_numpy(), truth)
    assert ident.units == 9 and ident.text_cosine == pytest.approx(expected, rel=1e-6)
    assert np.isfinite(emb).all()
