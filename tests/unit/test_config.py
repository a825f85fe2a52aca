from __future__ import annotations

from pathlib import Path

import pytest
import torch

from discover_ray.config import ConfigError, load_config
from discover_ray.encoders.labels import label_concept_scores

REPO = Path(__file__).resolve().parents[2]


def test_example_configs_validate(monkeypatch, tmp_path):
    monkeypatch.setenv("DISCOVER_SHARED", str(tmp_path))
    cifar = load_config(REPO / "jobs/configs/cifar10_resnet20.yaml")
    assert cifar.probe.source == str(tmp_path / "data/cifar10/test.parquet")  # ${VAR:-default} expanded
    assert cifar.models[0].layers == ["layer1", "layer2", "layer3", "linear"]
    real = load_config(REPO / "jobs/configs/imagenet_vit_b16.yaml")
    assert real.concepts[0].model == "ViT-B-16" and real.store.startswith("s3://")
    assert cifar.identity() != real.identity()
    with pytest.raises(ConfigError, match="CVN_CHECKPOINT"):  # the trained checkpoint must be named
        load_config(REPO / "jobs/configs/cifar10_resnet20_cvn2.yaml")
    monkeypatch.setenv("CVN_CHECKPOINT", str(tmp_path / "epoch_0003/model.safetensors"))
    cvn = load_config(REPO / "jobs/configs/cifar10_resnet20_cvn2.yaml")
    assert cvn.models[0].name == "cifar_resnet20_cvn2" and cvn.record.competition == "sample"
    dnd = load_config(REPO / "jobs/configs/imagenet_resnet50_dnd.yaml")
    assert dnd.backends.captioner.kind == "blip" and dnd.backends.summarizer.api_key_env == "LLM_API_KEY"
    assert dnd.backends.generator.model == "CompVis/stable-diffusion-v1-4" and dnd.verify.images == 10
    le = load_config(REPO / "jobs/configs/cifar10_resnet20_le.yaml")
    assert le.reduce.methods == ["soft_wpmi", "linear_explanation"] and le.simulate is not None
    assert le.simulating() is le.simulate and le.splits.fractions == (0.7, 0.1, 0.2)


def test_simulate_section_checks_its_names():
    base = {"probe": {"source": "/data/p"}, "models": [{"name": "cifar_resnet20", "layers": ["linear"]}],
            "concepts": [{"kind": "labels"}], "reduce": {"methods": ["soft_wpmi", "linear_explanation"]}}
    assert load_config(base).simulating() is not None  # LE alone brings the default simulation
    assert load_config({**base, "reduce": {"methods": ["soft_wpmi"]}}).simulating() is None
    with pytest.raises(ConfigError, match="simulate.methods"):
        load_config({**base, "simulate": {"methods": ["cos"]}})
    with pytest.raises(ConfigError, match="fractions"):
        load_config({**base, "simulate": {"splits": {"fractions": [0.5, 0.2, 0.2]}}})
    with pytest.raises(ConfigError, match="scorings"):
        load_config({**base, "simulate": {"scorings": ["auc"]}})
    with pytest.raises(ConfigError, match="linear_explanation"):
        load_config({**base, "reduce": {"methods": ["linear_explanation"], "params": {"linear_explanation": {"width": 0}}}})


def test_identity_ignores_where_how_wide_and_where_the_inputs_are():
    base = {"probe": {"source": "/data/p"}, "models": [{"name": "cifar_resnet20", "layers": ["linear"]}],
            "concepts": [{"kind": "labels"}]}
    a = load_config(base)
    b = load_config({**base, "store": "s3://x/y", "name": "other", "ray": {"address": "ray://h:10001", "actors": 4}})
    moved = load_config({**base, "probe": {"source": "/elsewhere/p"},
                         "models": [{"name": "cifar_resnet20", "layers": ["linear"], "checkpoint": "/w.pt"}]})
    c = load_config({**base, "record": {"conv_pool": "max"}})
    d = load_config({**base, "reduce": {"params": {"soft_wpmi": {"top_k": 50}}}})
    e = load_config({**base, "record": {"pixel_cache": False}, "reduce": {"concept_shard": 7}})
    assert a.identity() == b.identity() == moved.identity() == e.identity()
    assert len({str(x.identity()) for x in (a, c, d)}) == 3


def test_stored_form_keeps_variables_and_drops_url_credentials(monkeypatch):
    monkeypatch.setenv("PROBE_ROOT", "/secret/place")
    monkeypatch.setenv("TOKEN", "s3cr3t")
    config = load_config({
        "probe": {"source": "${PROBE_ROOT}/probe.parquet"},
        "models": [{"name": "cifar_resnet20", "layers": ["linear"], "checkpoint": "https://user:pw@host/w.pt?sig=abc"}],
        "concepts": [{"kind": "labels"}],
        "store": "s3://bucket/runs?token=${TOKEN}",
    })
    assert config.probe.source == "/secret/place/probe.parquet"  # expanded for the run itself
    stored = config.stored()
    assert stored["probe"]["source"] == "${PROBE_ROOT}/probe.parquet"
    assert stored["models"][0]["checkpoint"] == "https://host/w.pt"
    assert stored["store"] == "s3://bucket/runs"
    assert "s3cr3t" not in str(stored) and "pw" not in str(stored) and "sig=abc" not in str(stored)
    assert stored["reduce"]["methods"] == ["soft_wpmi"]  # defaults are filled in


def test_unique_names_and_layers():
    base = {"probe": {"source": "/data/p"}, "models": [{"name": "cifar_resnet20", "layers": ["linear"]}]}
    with pytest.raises(ConfigError, match="both called 'labels'"):
        load_config({**base, "concepts": [{"kind": "labels"}, {"kind": "labels", "superclasses": "cifar100_superclasses"}]})
    load_config({**base, "concepts": [{"kind": "labels"}, {"kind": "labels", "name": "coarse"}]})
    with pytest.raises(ConfigError, match="listed more than once"):
        load_config({**base, "concepts": [{"kind": "labels"}],
                     "models": [{"name": "cifar_resnet20", "layers": ["linear", "linear"]}]})


@pytest.mark.parametrize(
    "change, message",
    [
        ({"reduce": {"methods": ["softwpmi"]}}, "unknown method 'softwpmi'; registered methods: cos, cos3"),
        ({"reduce": {"params": {"soft_wpmi": {"topk": 3}}}}, "topk"),
        ({"probe": {"source": "/p", "shard": 3}}, "probe.shard: Extra inputs"),
        ({"concepts": [{"kind": "words"}]}, "unknown concept source kind 'words'; choose from clip, labels"),
        ({"concepts": [{"kind": "clip", "concepts": "cifar10"}]}, "concepts.0.model: Field required"),
        ({"models": []}, "models"),
        ({"probe": {"source": "${NOT_SET_ANYWHERE}"}}, "NOT_SET_ANYWHERE is not set"),
    ],
)
def test_bad_configs_name_the_field(change, message):
    base = {"probe": {"source": "/data/p"}, "models": [{"name": "cifar_resnet20", "layers": ["linear"]}],
            "concepts": [{"kind": "labels"}]}
    with pytest.raises((ConfigError, ValueError), match=message):
        load_config({**base, **change})


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_label_concepts_one_hot_and_superclasses():
    concepts, scores = label_concept_scores(
        [0, 2, 1, 2], ("cat", "dog", "car"), {"animal": ["cat", "dog"], "vehicle": ["car"]}
    )
    assert concepts.concepts == ("cat", "dog", "car", "animal", "vehicle")
    assert torch.equal(scores, torch.tensor([[1, 0, 0, 1, 0], [0, 0, 1, 0, 1], [0, 1, 0, 1, 0], [0, 0, 1, 0, 1.0]]))
    with pytest.raises(ValueError, match="have no label"):
        label_concept_scores([0, None], ("cat", "dog"))
    with pytest.raises(ValueError, match="not classes of the probe set"):
        label_concept_scores([0], ("cat", "dog"), {"pets": ["cat", "hamster"]})
