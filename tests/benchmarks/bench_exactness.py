"""Exactness of top_concepts (float32, the default) against the slow per-neuron float64 oracle.

Structured data with planted neuron↔concept pairs (tests/unit/similarity/planted.py): every neuron fires
on the images that contain its concept. Reports, per method, the fraction of neurons whose top-1
concept equals the oracle's, the largest score error as a fraction of the oracle's score range, and
the fraction of planted concepts recovered. Prints one JSON document.

    python tests/benchmarks/bench_exactness.py
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from discover_ray.similarity import METHODS, top_concepts  # noqa: E402
from tests.unit.similarity import oracle  # noqa: E402
from tests.unit.similarity.planted import planted_problem  # noqa: E402

# The rank-reorder oracle sorts every (neuron, concept) column in Python: a smaller problem keeps it minutes.
SIZES = {
    "default": {"n_images": 4000, "n_concepts": 1500, "n_neurons": 1200, "dim": 128},
    "rank_reorder": {"n_images": 2000, "n_concepts": 300, "n_neurons": 200, "dim": 64},
}


def main() -> None:
    report = {"benchmark": "similarity exactness vs float64 oracle", "results": {}}
    for method in METHODS:
        size = SIZES.get(method, SIZES["default"])
        data = planted_problem(**size, seed=1)
        start = time.perf_counter()
        expected = oracle.ORACLES[method](data.activations.double().numpy(), data.scores.double().numpy())
        oracle_s = time.perf_counter() - start
        values, index = top_concepts(
            method, data.activations, image_emb=data.image_emb, concept_emb=data.concept_emb, k=1
        )
        top1 = index[:, 0].numpy()
        score_range = float(expected.max() - expected.min())
        report["results"][method] = {
            **size,
            "top1_equals_oracle": float((top1 == expected.argmax(axis=1)).mean()),
            "max_top1_score_error_over_range": float(np.abs(values[:, 0].double().numpy() - expected.max(axis=1)).max())
            / score_range,
            "planted_recovered": float((index[:, 0] == data.planted).float().mean()),
            "oracle_seconds": round(oracle_s, 1),
        }
        print(json.dumps({method: report["results"][method]}), file=sys.stderr, flush=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
