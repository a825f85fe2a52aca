"""Reading dissections back: per-example active neurons, sparsity, and comparing two checkpoints."""

from __future__ import annotations

import pytest
from rich.console import Console
from typer.testing import CliRunner

from discover_ray import world
from discover_ray.analyze import compare_runs, explain_image, layer_sparsity
from discover_ray.cli import app
from discover_ray.config import load_config
from discover_ray.stages import dissect
from tests.ray_local.conftest import DeitRuns, tiny_config

pytestmark = pytest.mark.usefixtures("ray_cluster")
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
    stats = {layer: (block, s) for _, layer, block, s in layer_sparsity(root, run)}
    block, lwta = stats["blocks.1.mlp.act"]
    assert block == 16 and lwta.mean == pytest.approx(1 / 16) and lwta.std == pytest.approx(0.0) and lwta.examples == 72
    assert stats["head"][1].mean > 0.9  # a linear classifier's outputs are rarely exactly 0


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

    from discover_ray.evaluate import paired_embedding_cosine
    from discover_ray.runs import load_run, read_labels
    from discover_ray.store import Store

    concepts = tmp_path / "classes.txt"
    concepts.write_text("\n".join(world.class_names()) + "\n")
    raw = tiny_config(world_folder, tmp_path / "runs",
                      concepts=[{"kind": "clip", "model": "TinyCLIP-ViT-32", "concepts": str(concepts), "batch_size": 16}])
    raw["models"][0]["layers"] = ["fc"]
    result = dissect(load_config(raw), console=QUIET)
    store = Store(str(tmp_path / "runs"))
    (ident,) = [i for i in load_run(store, result.run_id)["identification"] if i["method"] == "cos"]
    (entry, labels), = read_labels(store, result.run_id, "fc", method="cos")
    texts = store.concept_embeddings(entry.encoder_id, entry.concept_set_id).read()
    emb = np.stack(texts["embedding"].to_numpy(zero_copy_only=False))
    names = texts["concept"].to_pylist()
    truth = [names.index(name) for name in load_config(raw).probe.open().classes]  # unit i is the probe's class i
    top = labels.filter(labels["rank"].to_numpy() == 0).sort_by("unit")
    expected = paired_embedding_cosine(emb, top["concept_index"].to_numpy(), truth)
    assert ident["units"] == 9 and ident["text_cosine"] == pytest.approx(expected, rel=1e-6)
