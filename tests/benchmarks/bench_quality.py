"""Description quality where the truth is known: the world loop's dissections scored against the world.

Runs (or reuses) the product loop of ``discover_ray.demo.loop`` under ``--root`` — a tiny CLIP trained on the
world's captions, a small CNN and a tiny ViT trained on its colour × shape classes, each with its CVN
twin — and scores every dissection, for both concept sources (the probe's labels with colour and shape
superclasses, and the tiny CLIP over the world's 22-concept vocabulary) and every similarity method:

(a) final-layer neuron identification: output unit i labelled with class i (top-1);
(b) hidden units: agreement of each unit's top-1 label with the concept the ground truth says explains
    it best (largest correlation with the concept's presence, ``evaluate.ground_truth``), beside the
    chance rate 1/M of a random label from the same M concepts;
(c) CVN vs baseline: the same figures for each CVN and its non-competitive twin, side by side;
(d) Linear Explanations: each unit's support (its weighted concepts) scored against the truth: the share of
    units whose support holds the truth's best concept, beside the chance of a random support of the same
    length; and every labelling's simulation correlation on the test images of the run's split;
(e) Describe-and-Dissect (open vocabulary): on the final layer, the share of units whose label 1 names both
    words of the unit's class; on hidden layers, the share whose label 1 names every word of the concept the
    truth says explains the unit best; and every labelling's verification AUC (CoSy, the world's renderer
    drawing each label) with the shuffled-label baseline.

Prints one JSON object and a Markdown table (for the README).

    python tests/benchmarks/bench_quality.py                    # ./discover-demo, as `make demo` leaves it
    python tests/benchmarks/bench_quality.py --root /tmp/q --seed 1
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from discover_ray import Store, load_run, world  # noqa: E402
from discover_ray.analyze import read_activations  # noqa: E402
from discover_ray.demo.loop import TARGETS, TWINS, LoopSizes, run_loop  # noqa: E402
from discover_ray.evaluate.ground_truth import agreement, best_truth_concepts  # noqa: E402
from discover_ray.runs.read import READERS  # noqa: E402


def world_truth(sizes: LoopSizes, seed: int):
    """The probe set's truth matrix [images, concepts] and the world's concept vocabulary."""
    probe = world.generate(sizes.probe, seed=seed * 10 + 2)
    return world.truth_matrix(probe).numpy(), list(world.concept_vocabulary())


def score(result, sizes: LoopSizes, seed: int) -> list[dict]:
    store = Store(result.store)
    truth, vocabulary = world_truth(sizes, seed)
    rows = []
    for name, target in result.targets.items():
        run = load_run(store, target["run_id"])
        identification = {(i.source, i.method): i.top1 for i in run.identification}
        simulated = {(s.layer, s.source, s.method): s.correlation_mean for s in run.simulation if s.scoring == "correlation"}
        classifier = TARGETS[name]["layers"][-1]
        for entry in run.labels:
            if entry.layer == classifier or entry.table == "descriptions":
                continue
            recorded = read_activations(store, run, entry.model, entry.layer)
            order = [int(i.rsplit("/", 1)[1]) for i in recorded.image_ids]  # world/000123 → row 123
            table = READERS[entry.table](store.committed(entry.dataset).read())
            concepts = (vocabulary if entry.source.startswith("clip")
                        else [c for c in vocabulary if c not in world.class_names()] if entry.source == "families"
                        else list(world.class_names()) + list(world.COLOURS) + list(world.SHAPES))
            columns = [vocabulary.index(c) for c in concepts]
            best = best_truth_concepts(recorded.values, truth[order][:, columns])
            if entry.table == "explanations":  # a support holds the truth's best concept
                supports = [[c for c, _ in table.ranked().get(u, [])] for u in recorded.units]
                hits = [concepts[int(b)] in support for support, b in zip(supports, best, strict=True)]
                hidden, chance = sum(hits) / len(hits), sum(len(s) for s in supports) / len(supports) / len(concepts)
            else:
                top = table.top()
                hidden = agreement([top.get(u, (None, 0))[0] for u in recorded.units], concepts, best)
                chance = 1 / len(concepts)
            rows.append({
                "model": name, "source": entry.source.split(":")[0], "method": entry.method, "layer": entry.layer,
                "units": len(recorded.units), "val_top1": target["val_top1"],
                "hidden_agreement": hidden, "chance": chance,
                "final_top1": identification.get((entry.source, entry.method)),
                "simulation_correlation": simulated.get((entry.layer, entry.source, entry.method)),
            })
    return rows


def describe_rows(result, sizes: LoopSizes, seed: int) -> list[dict]:
    """(e): Describe-and-Dissect's label 1 against the world's truth, and the verification of every labelling."""
    store = Store(result.store)
    truth, vocabulary = world_truth(sizes, seed)
    rows = []
    for name, target in result.targets.items():
        run = load_run(store, target["run_id"])
        classifier = TARGETS[name]["layers"][-1]
        for entry in (e for e in run.labels if e.table == "descriptions"):
            table = READERS[entry.table](store.committed(entry.dataset).read())
            top = table.top()
            recorded = read_activations(store, run, entry.model, entry.layer)
            if entry.layer == classifier:
                wanted = [world.class_names()[i].split() for i in range(len(recorded.units))]
            else:
                order = [int(i.rsplit("/", 1)[1]) for i in recorded.image_ids]
                best = best_truth_concepts(recorded.values, truth[order])
                wanted = [vocabulary[int(b)].split() for b in best]
            named = [all(w in top.get(u, ("", 0))[0].split() for w in words) for u, words in zip(recorded.units, wanted,
                                                                                                  strict=True)]
            rows.append({"model": name, "layer": entry.layer, "units": len(recorded.units), "described": len(top),
                         "label1_names_truth": sum(named), "share": sum(named) / len(named)})
        for v in run.verification:
            rows.append({"model": name, "layer": v.layer, "verified": v.method, "source": v.source,
                         "auc": v.auc_mean, "auc_shuffled": v.auc_shuffled_mean, "mad": v.mad_mean, "units": v.scored})
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| model | concepts | method | final-layer top-1 | hidden layer | units | agreement with truth | chance "
             "| test simulation r |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        final = "–" if r["final_top1"] is None else f"{r['final_top1']:.0%}"
        sim = "–" if r["simulation_correlation"] is None else f"{r['simulation_correlation']:.3f}"
        lines.append(f"| {r['model']} | {r['source']} | {r['method']} | {final} | {r['layer']} | "
                     f"{r['units']} | {r['hidden_agreement']:.1%} | {r['chance']:.1%} | {sim} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="./discover-demo")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sizes = LoopSizes()
    from rich.console import Console

    result = run_loop(args.root, seed=args.seed, sizes=sizes, console=Console(stderr=True, quiet=True))
    rows = score(result, sizes, args.seed)
    pairs = []
    for cvn, twin in TWINS.items():
        for r in (r for r in rows if r["model"] == cvn):
            base = next(b for b in rows if b["model"] == twin and b["source"] == r["source"] and b["method"] == r["method"]
                        and b["layer"] == r["layer"])
            pairs.append({"cvn": cvn, "twin": twin, "source": r["source"], "method": r["method"], "layer": r["layer"],
                          "final_top1": [r["final_top1"], base["final_top1"]],
                          "hidden_agreement": [r["hidden_agreement"], base["hidden_agreement"]]})
    print(json.dumps({"seed": args.seed, "zero_shot": result.zero_shot,
                      "val_top1": {k: v["val_top1"] for k, v in result.targets.items()},
                      "rows": rows, "cvn_vs_twin": pairs, "describe_and_dissect": describe_rows(result, sizes, args.seed)},
                     indent=1))
    print(markdown(rows))


if __name__ == "__main__":
    main()
