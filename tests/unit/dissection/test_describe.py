"""Describe-and-Dissect and verification through in-process dissections: a colour-detecting target whose units
are known, the world's renderer as generator, a retrieval captioner, and an OpenAI-compatible server on
loopback as summariser; the cache, replay, the call budget and every kind of fault."""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from typing import Literal

import pytest
from PIL import Image
from rich.console import Console

from discover_ray import build_report, dissect, load_config, load_run, read_labels, read_verification, world
from discover_ray.backends.base import BackendConfig, BackendError, Captioner, Generator, register_backend
from discover_ray.backends.cache import CallCache, ReplayMiss
from discover_ray.errors import ConfigError
from discover_ray.methods.describe_and_dissect import DescribeFailed
from discover_ray.schema import Descriptions
from discover_ray.store import Store
from tests.tiny_llm import LoopbackChatServer

QUIET = Console(quiet=True)


class BrokenGeneratorConfig(BackendConfig):
    kind: Literal["test_broken"] = "test_broken"
    fails_on: str = "blue"


@register_backend
class BrokenGenerator(Generator):
    """A generator plugin that raises on concepts naming ``fails_on`` and draws the rest with the world."""

    kind = "test_broken"
    Config = BrokenGeneratorConfig

    def generate(self, prompt: str, seeds: Sequence[int]) -> list[Image.Image] | None:
        if self.config.fails_on in prompt:
            raise BackendError(f"test_broken generator: cannot draw {prompt!r}")
        from discover_ray.backends.world_generator import WorldGenerator, WorldGeneratorConfig

        return WorldGenerator(WorldGeneratorConfig(), self.context).generate(prompt, seeds)


class SilentCaptionerConfig(BackendConfig):
    kind: Literal["test_silent"] = "test_silent"


@register_backend
class SilentCaptioner(Captioner):
    """A captioner plugin that answers with empty captions (as a captioner may for an image it cannot read)."""

    kind = "test_silent"
    Config = SilentCaptionerConfig

    def caption(self, images: Sequence[Image.Image]) -> list[str]:
        return ["" for _ in images]


@pytest.fixture(scope="module")
def world_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("world")
    world.write_parquet(folder / "probe.parquet", world.generate(45, seed=5))
    (folder / "captions.txt").write_text("\n".join(world.caption_bank()) + "\n")
    return folder


def summary_reply(messages: list[dict]) -> str:
    """An LLM that simplifies a caption to its colour and shape, and summarises by the most common colour."""
    text = messages[-1]["content"]
    if "Descriptions:" in text:
        listed = text.split("Descriptions: ", 1)[1]
        counts = {c: listed.count(c) for c in world.COLOURS}
        return "Label: " + max(counts, key=lambda c: (counts[c], c))
    caption = text.rsplit("Description: ", 1)[1]
    return " ".join(w for w in caption.split() if w in world.COLOURS or w in world.SHAPES)


def config(files, store, summarizer=None, generator=None, captioner=None, params=None, **changes):
    raw = {
        "store": str(store), "probe": {"source": str(files / "probe.parquet"), "shard_size": 45},
        "models": [{"name": "colours", "builder": "tests.world_models:colour_detector", "image_size": 32,
                    "layers": ["relu", "fc"]}],
        "concepts": [{"kind": "labels", "name": "families", "classes": False,
                      "columns": {"colour": "{value}", "shape": "{value}"}},
                     {"kind": "clip", "model": "TinyCLIP-ViT-32", "concepts": str(files / "captions.txt"),
                      "batch_size": 64}],
        "record": {"batch_size": 45},
        "reduce": {"methods": ["soft_wpmi", "describe_and_dissect"], "top_k": 3,
                   "params": {"soft_wpmi": {"top_k": 20}, "describe_and_dissect": {"crop_size": 48, "top_images": 4, "caption_images": 4,
                                                       "summaries": 2, "images_per_candidate": 4, "beta": 2,
                                                       "top_generated": 6, **(params or {})}}},
        "backends": {"captioner": captioner or {"kind": "clip_retrieval", "model": "TinyCLIP-ViT-32",
                                                "captions": str(files / "captions.txt")},
                     "summarizer": summarizer or {"kind": "none"}, "generator": generator or {"kind": "world"}},
        "verify": {"images": 12, "control": 40},
        "ray": {"progress": False},
    }
    return load_config({**raw, **changes})


def labels_of(result, layer, method="describe_and_dissect"):
    (entry, table), = [(e, t) for e, t in read_labels(result.store, result.run_id, layer, method=method)
                       if method == "describe_and_dissect" or e.source == "families"]
    return entry, table


def test_describe_and_verify_end_to_end_and_a_rerun_makes_no_backend_call(world_files, tmp_path):
    store = Store(str(tmp_path / "runs"))
    result = dissect(config(world_files, store.root), executor="local", console=QUIET)
    entry, table = labels_of(result, "fc")
    assert isinstance(table, Descriptions) and entry.table == "descriptions"
    ranked = table.ranked()
    assert set(ranked) == {"u00000", "u00001", "u00002"}  # unit 3 is dead
    assert table.failures() == {"u00003": ("dead", pytest.approx(table.failures()["u00003"][1]))}
    assert "no activating image" in table.failures()["u00003"][1]
    for unit, candidates in ranked.items():
        assert 1 <= len(candidates) and candidates == sorted(candidates, key=lambda c: -c[1])
        rows = table.rows()[unit]
        assert rows[0]["captioned"] and all(c["caption"] in world.caption_bank() for c in rows[0]["captioned"])
        assert all(len(r["images"]) == 4 for r in rows if r["drawn"])
        for image in rows[0]["images"]:  # the generated images are kept, in the call cache
            assert Image.open(io.BytesIO(CallCache(store).read(image))).size == (32, 32)
    # crops on the conv layer: some captioned images are crops of the top images
    _, relu = labels_of(result, "relu")
    assert any(c["box"] for rows in relu.rows().values() for c in rows[0]["captioned"])

    record = load_run(store, result.run_id)
    verified = {(v.layer, v.method, v.source): v for v in record.verification}
    assert set(verified) == {(layer, m, s) for layer in ("relu", "fc") for m, s in
                             (("soft_wpmi", "families"), ("soft_wpmi", "clip:TinyCLIP-ViT-32"),
                              ("describe_and_dissect", ""))}
    truth = verified[("fc", "soft_wpmi", "families")]
    _, soft = labels_of(result, "fc", "soft_wpmi")
    assert [soft.top()[u][0] for u in ("u00000", "u00001", "u00002")] == ["red", "green", "blue"]
    # a third of the control images show the unit's own colour, so a perfect label's AUC is 1 − ⅓·½ ≈ 0.83
    assert truth.auc_mean > 0.8 and truth.auc_shuffled_mean < 0.5 and truth.scored == 3  # the dead unit: no score
    assert read_verification(store, record, labels_of(result, "fc", "soft_wpmi")[0])["u00003"] is None
    assert record.backends["captioner"]["kind"] == "clip_retrieval" and record.backends["generator"]["kind"] == "world"
    assert record.backends["verify_generator"]["params"] == {"size": 32}
    described = verified[("fc", "describe_and_dissect", "")]
    assert described.auc_mean is not None and 0 <= described.auc_mean <= 1

    marker = store.committed(entry.dataset).marker()
    assert marker["calls"] > 0 and marker["dead"] == 1 and marker["failed"] == 0
    assert set(marker["backends"]) == {"captioner", "generator"}  # kind none: no summariser is built
    assert marker["backends"]["generator"]["kind"] == "world"

    # the report: DnD's top 3 with scores, its captioned and generated images, each labelling's verification AUC
    report = build_report(store, result.run_id, out=tmp_path / "report")
    page = next(p for p in report.layers if "fc" in p)
    html = (report.folder / page).read_text()
    assert html.count('class="described"') == 4
    assert html.count('class="thumbs captioned"') == 3 and html.count('class="thumbs generated"') == 3
    assert "<h2>Verification</h2>" in html and "verification AUC: soft_wpmi · families" in html
    assert "dead: no activating image" in html
    for src in re.findall(r'src="\.\./(img/[^"]+)"', html):
        assert (report.folder / src).is_file()
    assert any("img/gen-" in src for src in re.findall(r'src="\.\./(img/[^"]+)"', html))

    # the CLI: DnD's top 3 per unit, the units it could not describe, and each labelling's verification AUC
    from typer.testing import CliRunner

    from discover_ray.cli import app

    printed = CliRunner().invoke(app, ["labels", result.run_id, "--layer", "fc", "--store", store.root], terminal_width=200)
    assert printed.exit_code == 0, printed.output
    assert "label 1" in printed.output and "labels 2–3" in printed.output and "AUC" in printed.output
    assert "u00003: dead: no activating image" in printed.output
    assert ranked["u00000"][0][0][:20] in printed.output

    # the work items are chunks of units, then chunks of (unit, candidate) pairs: how they are cut changes nothing
    events = [e for e in result.record.stages if e.stage == "DESCRIBE" and e.title.startswith("colours/fc")]
    assert events[0].counts["tasks"] == 2  # one chunk of the 4 units, one of their pairs
    finer = dissect(config(world_files, store.root, params={"unit_chunk": 1, "draw_chunk": 1}), executor="local",
                    console=QUIET)
    finer_entry, finer_table = labels_of(finer, "fc")
    assert finer_table.ranked() == ranked and store.committed(finer_entry.dataset).marker()["calls"] == 0
    finer_events = [e for e in finer.record.stages if e.stage == "DESCRIBE" and e.title.startswith("colours/fc")]
    assert finer_events[0].counts["tasks"] == 4 + sum(len(c) for c in ranked.values())

    # a changed selection parameter recomputes DESCRIBE, from the cache alone
    again = dissect(config(world_files, store.root, params={"top_generated": 5}), executor="local", console=QUIET)
    entry2, _ = labels_of(again, "fc")
    assert store.committed(entry2.dataset).marker()["calls"] == 0
    assert store.committed(entry2.dataset).marker()["cache_hits"] > 0
    # and replay answers it without any call (or fails on a miss)
    replayed = config(world_files, store.root, params={"top_generated": 4})
    replayed = load_config({**replayed.model_dump(mode="json"), "backends": {
        **replayed.backends.model_dump(mode="json"), "replay": True}})
    assert dissect(replayed, executor="local", console=QUIET).run_id


def test_replay_with_an_empty_cache_fails_naming_the_call(world_files, tmp_path):
    raw = config(world_files, tmp_path / "runs").model_dump(mode="json")
    raw["backends"]["replay"] = True
    with pytest.raises(ReplayMiss, match="replay: no cached result for clip_retrieval"):
        dissect(load_config(raw), executor="local", console=QUIET)


def test_the_summariser_on_loopback_gives_the_labels_and_a_second_run_sends_it_nothing(world_files, tmp_path,
                                                                                        monkeypatch):
    monkeypatch.setenv("LOOPBACK_KEY", "sk-test-secret-4242")
    with LoopbackChatServer(summary_reply) as server:
        summarizer = {"kind": "openai", "model": "loopback-llm", "base_url": server.base_url,
                      "api_key_env": "LOOPBACK_KEY", "retries": 0}
        cfg = config(world_files, tmp_path / "runs", summarizer=summarizer)
        result = dissect(cfg, executor="local", console=QUIET)
        asked = len(server.requests)
        _, table = labels_of(result, "fc")
        tops = table.top()
        assert asked > 0 and all(r["model"] == "loopback-llm" and r["temperature"] == 0.3 for r in server.requests)
        assert {tops[u][0] for u in tops} <= set(world.COLOURS)  # the replies (after the ':' rule) are the labels
        assert all(summary in world.COLOURS for rows in table.rows().values() for summary in rows[0]["summaries"])
        # the same run again, and the same work under another key: no request reaches the server
        dissect(cfg, executor="local", console=QUIET)
        dissect(config(world_files, tmp_path / "runs", summarizer=summarizer, params={"top_generated": 5}),
                executor="local", console=QUIET)
        assert len(server.requests) == asked
        assert set(server.seen_authorization) == {"Bearer sk-test-secret-4242"}  # the key went to the server...
    written = [p for p in (tmp_path / "runs").rglob("*") if p.is_file() and p.suffix in (".json", ".parquet", ".bin")]
    assert written and not any(b"sk-test-secret-4242" in p.read_bytes() for p in written)  # ...and nowhere else


@pytest.mark.parametrize("mode", ["down", "garbage", "error"])
def test_a_failing_llm_fails_its_units_within_the_budget_and_nothing_cached_is_corrupted(world_files, tmp_path, mode):
    with LoopbackChatServer(summary_reply, mode="ok" if mode == "down" else mode) as server:
        if mode == "down":
            server.stop()
        summarizer = {"kind": "openai", "model": "m", "base_url": server.base_url, "api_key_env": None, "retries": 1,
                      "backoff": 0.01, "timeout": 2}
        strict = config(world_files, tmp_path / "runs", summarizer=summarizer)
        with pytest.raises(DescribeFailed, match=r"units failed, more than the failure budget .*summarising"):
            dissect(strict, executor="local", console=QUIET)
        lenient = config(world_files, tmp_path / "runs", summarizer=summarizer, params={"failure_budget": 1.0})
        result = dissect(lenient, executor="local", console=QUIET)
    _, table = labels_of(result, "fc")
    failures = table.failures()
    assert table.ranked() == {} and set(failures) == {"u00000", "u00001", "u00002", "u00003"}
    assert all(status == "failed" and "summarising" in why for u, (status, why) in failures.items() if u != "u00003")
    assert load_run(result.store, result.run_id).status == "succeeded"
    entries, bad = CallCache(result.store).check()
    assert entries > 0 and bad == []  # every cached entry is intact
    # the server is back: a retry describes the failed units, the captions from the cache
    with LoopbackChatServer(summary_reply) as server:
        summarizer = {"kind": "openai", "model": "m", "base_url": server.base_url, "api_key_env": None}
        retried = dissect(config(world_files, tmp_path / "runs", summarizer=summarizer,
                                 params={"failure_budget": 1.0, "retry": 1}), executor="local", console=QUIET)
    entry, table = labels_of(retried, "fc")
    assert set(table.ranked()) == {"u00000", "u00001", "u00002"}
    assert Store(retried.store).committed(entry.dataset).marker()["cache_hits"] > 0


def test_a_generator_that_raises_and_a_captioner_with_empty_captions_fail_only_their_units(world_files, tmp_path):
    cfg = config(world_files, tmp_path / "runs", generator={"kind": "test_broken", "fails_on": "blue"},
                 params={"failure_budget": 1.0, "layers": ["fc"]})
    result = dissect(cfg, executor="local", console=QUIET)
    _, table = labels_of(result, "fc")
    failures = table.failures()
    broken = {u for u, (status, why) in failures.items() if status == "failed"}
    assert broken and all("generating" in failures[u][1] and "blue" in failures[u][1] for u in broken)
    assert set(table.ranked()) == {"u00000", "u00001", "u00002"} - broken  # the others were described
    verified = {v.source: v for v in load_run(result.store, result.run_id).verification
                if v.layer == "fc" and v.method == "soft_wpmi"}
    assert "blue" in verified["families"].failed and verified["families"].scored == 2  # red and green still scored
    silent = config(world_files, tmp_path / "runs", captioner={"kind": "test_silent"},
                    params={"failure_budget": 1.0, "layers": ["fc"]})
    _, table = labels_of(dissect(silent, executor="local", console=QUIET), "fc")
    assert {why for u, (_, why) in table.failures().items() if u != "u00003"} == {"every caption was empty"}


def test_a_call_budget_stops_the_calls_and_fails_the_units_it_leaves_undescribed(world_files, tmp_path):
    raw = config(world_files, tmp_path / "runs", params={"failure_budget": 1.0, "layers": ["fc"]}).model_dump(mode="json")
    raw["backends"]["calls"] = 2
    result = dissect(load_config(raw), executor="local", console=QUIET)
    _, table = labels_of(result, "fc")
    assert any("budget" in why for _, why in table.failures().values())


def test_bad_describe_configs_fail_before_any_work(world_files, tmp_path):
    with pytest.raises(ConfigError, match="describe_and_dissect needs backends.captioner"):
        raw = config(world_files, tmp_path).model_dump(mode="json")
        raw["backends"].pop("captioner")
        load_config(raw)
    with pytest.raises(ConfigError, match=r"backends.generator \(diffusers\): size"):
        config(world_files, tmp_path, generator={"kind": "diffusers", "size": 13})
    with pytest.raises(ConfigError, match="unknown generator kind 'dall-e'"):
        config(world_files, tmp_path, generator={"kind": "dall-e"})
    with pytest.raises(ConfigError, match="outside the layer's 4 units"):
        dissect(config(world_files, tmp_path / "runs", params={"units": "0..9"}), executor="local", console=QUIET)
    with pytest.raises(ConfigError, match="which no model records"):
        dissect(config(world_files, tmp_path / "runs", params={"layers": ["head"]}), executor="local", console=QUIET)
    no_clip = config(world_files, tmp_path / "runs").model_dump(mode="json")
    no_clip["concepts"] = no_clip["concepts"][:1]
    with pytest.raises(ConfigError, match="add a concept source of kind clip"):
        dissect(load_config(no_clip), executor="local", console=QUIET)


def test_the_hugging_face_backends_run_the_whole_method(world_files, tmp_path):
    from discover_ray.describe.prompts import candidates_from
    from tests.tiny_hf import save_tiny_blip, save_tiny_sd
    from tests.tiny_llm import save_tiny_causal_lm

    cfg = config(world_files, tmp_path / "runs",
                 captioner={"kind": "blip", "model": str(save_tiny_blip(tmp_path / "blip"))},
                 summarizer={"kind": "transformers", "model": str(save_tiny_causal_lm(tmp_path / "lm")),
                             "max_new_tokens": 6},
                 generator={"kind": "diffusers", "model": str(save_tiny_sd(tmp_path / "sd")), "steps": 2, "size": 32,
                            "dtype": "float32"},
                 params={"failure_budget": 0.0, "layers": ["fc"]}, verify=None)
    result = dissect(cfg, executor="local", console=QUIET)
    entry, table = labels_of(result, "fc")
    marker = Store(result.store).committed(entry.dataset).marker()
    assert {role: b["kind"] for role, b in marker["backends"].items()} == {
        "captioner": "blip", "summarizer": "transformers", "generator": "diffusers"}
    assert set(table.ranked()) == {"u00000", "u00001", "u00002"}
    for unit, candidates in table.ranked().items():
        rows = table.rows()[unit]
        assert {c for c, _ in candidates} == set(candidates_from(rows[0]["summaries"]))  # the LM's replies: the labels
        assert any(c["caption"] for c in rows[0]["captioned"])  # a random BLIP may also say nothing for an image


def test_a_pretrained_backend_that_cannot_be_had_offline_fails_at_once_naming_the_fix(world_files, tmp_path, monkeypatch):
    import time

    from discover_ray.errors import WeightsUnavailableError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    began = time.perf_counter()
    with pytest.raises(WeightsUnavailableError, match=r"Salesforce/blip-image-captioning-base.*local directory"):
        dissect(config(world_files, tmp_path / "runs", captioner={"kind": "blip"}), executor="local", console=QUIET)
    assert time.perf_counter() - began < 15
    assert not (tmp_path / "runs" / "runs").exists()  # failed before any record was written
