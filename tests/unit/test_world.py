"""The generated world: seeded, balanced, captions and truth that agree with the drawn families, and its
Parquet form as a probe / training set."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from discover_ray import world
from discover_ray.config import ProbeConfig
from discover_ray.evaluate.ground_truth import agreement, best_truth_concepts


def test_captions_and_truth_name_the_families_each_image_was_drawn_with():
    data = world.generate(36, seed=2)
    vocabulary = world.concept_vocabulary()
    assert len(vocabulary) == 9 + 3 + 3 + 3 + 2 + 2 and len(set(vocabulary)) == len(vocabulary)
    truth = world.truth_matrix(data)
    assert torch.equal(truth.sum(dim=1), torch.full((36,), 6.0))  # a class and one value of each of 5 families
    variants = world.caption_variants(data)
    for i, caption in enumerate(world.captions(data)):
        values = {f: world.FAMILIES[f][int(data.family(f)[i])] for f in world.FAMILIES}
        assert caption == (f"a {values['size']} {values['colour']} {values['pattern']} {values['shape']} "
                           f"on a {values['background']} background")
        name = world.class_names()[int(data.labels[i])]
        assert variants[i][0] == caption and all(name in v for v in variants[i][1:])
        true = {vocabulary[j] for j in torch.nonzero(truth[i]).flatten().tolist()}
        assert true == {name, *(world.concept_name(f, v) for f, v in values.items())}
    for family in world.FAMILIES:  # every value occurs
        assert set(data.family(family).tolist()) == set(range(len(world.FAMILIES[family])))


def test_patterns_change_the_pixels_inside_the_shape_only():
    data = world.generate(90, seed=0)
    plain = data.patterns == world.PATTERNS.index("plain")
    striped = data.patterns == world.PATTERNS.index("striped")
    # a striped shape has two fill shades, a plain one has one: more distinct colours in the image
    def shades(i: int) -> int:
        pixels = (data.images[i].permute(1, 2, 0).reshape(-1, 3) * 255).round().to(torch.int32)
        return len({tuple(p) for p in pixels.tolist() if max(p) - min(p) > 100})  # saturated shape pixels
    assert np.mean([shades(i) for i in torch.nonzero(striped).flatten()[:10]]) >= \
        np.mean([shades(i) for i in torch.nonzero(plain).flatten()[:10]])


def test_the_world_as_parquet_opens_as_a_probe_set_with_captions(tmp_path):
    data = world.generate(27, seed=1)
    path = world.write_parquet(tmp_path / "world.parquet", data)
    probe = ProbeConfig(source=str(path), text_column="captions").open()
    assert len(probe) == 27 and probe.classes == world.class_names()
    first = probe.images[0]
    assert first.image_id == "world/000000" and first.label == int(data.labels[0])
    assert first.texts == tuple(world.caption_variants(data)[0])
    single = ProbeConfig(source=str(path), text_column="caption").open()
    assert single.images[5].texts == (world.captions(data)[5],)
    with pytest.raises(ValueError, match="no caption column 'nope'"):
        ProbeConfig(source=str(path), text_column="nope").open()


def test_ground_truth_finds_the_concept_a_unit_tracks():
    data = world.generate(180, seed=5)
    truth = world.truth_matrix(data).numpy()
    names = world.concept_vocabulary()
    rng = np.random.default_rng(0)
    planted = [names.index("red"), names.index("striped"), names.index("blue triangle"), names.index("large")]
    units = truth[:, planted] * 2 + rng.normal(0, 0.3, (180, len(planted)))
    best = best_truth_concepts(units, truth)
    assert best.tolist() == planted
    assert agreement(["red", "striped", "circle", "large"], names, best) == 0.75
    assert best_truth_concepts(np.ones((180, 1)), truth).tolist() == [0]  # a constant unit correlates with nothing


def test_discover_world_writes_the_splits_once(tmp_path):
    from typer.testing import CliRunner

    from discover_ray.cli import app

    out = tmp_path / "world"
    printed = CliRunner().invoke(app, ["world", str(out), "--train", "18", "--val", "9", "--probe", "9"])
    assert printed.exit_code == 0, printed.output
    assert sorted(p.name for p in out.iterdir()) == ["captions.txt", "concepts.txt", "probe.parquet", "train.parquet",
                                                     "val.parquet"]
    assert (out / "concepts.txt").read_text().split("\n")[:-1] == list(world.concept_vocabulary())
    before = (out / "train.parquet").stat().st_mtime_ns
    world.write_world(out, train=18, val=9, probe=9)
    assert (out / "train.parquet").stat().st_mtime_ns == before  # kept, not rewritten


def test_phrases_of_the_grammar_are_drawn_and_others_are_refused():
    drawn = world.draw_phrase("a small red striped circle on a dark background", 12, seed=4)
    assert drawn is not None and len(drawn) == 12
    assert set(drawn.labels.tolist()) == {world.class_names().index("red circle")}
    assert set(drawn.sizes.tolist()) == {0} and set(drawn.patterns.tolist()) == {1} and set(drawn.backgrounds.tolist()) == {0}
    loose = world.draw_phrase("triangles", 30, seed=4)
    assert set(loose.shapes.tolist()) == {2} and len(set(loose.colours.tolist())) > 1  # the rest varies
    assert world.draw_phrase("a purple circle", 3) is None and world.draw_phrase("red blue square", 3) is None
    assert world.draw_phrase("", 3) is None
    again = world.draw_phrase("triangles", 30, seed=4)
    assert torch.equal(again.images, loose.images)  # seeded
    assert world.parse_phrase("green square") == {"colour": "green", "shape": "square"}
