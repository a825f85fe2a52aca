"""A new labelling method in one file, registered here and nowhere else, through both executors.

``toy_top_mean`` labels a unit with the concept whose scores are highest on average over the unit's
``top_n`` most activating images: a few lines on the method interface.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest
from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console

from discover_ray import Store, dissect, load_config, read_labels
from discover_ray.methods import LayerInputs, Method, MethodOutput, method_names, register_method
from discover_ray.schema import label_table, read_activations
from tests.ray_local.conftest import snapshot, tiny_config


class TopMeanParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    top_n: int = Field(5, ge=1)


def concept_matrix(inputs: LayerInputs) -> np.ndarray:
    scores = inputs.scores
    assert scores is not None
    if scores.scores is not None:
        return np.asarray(scores.scores, dtype=np.float64)
    return np.asarray(scores.image_emb, np.float64) @ np.asarray(scores.concept_emb, np.float64).T


@register_method
class TopMean(Method):
    name: ClassVar[str] = "toy_top_mean"
    Params = TopMeanParams
    needs = frozenset({"activations", "concept_scores"})
    writes = "labels"

    def run(self, task, inputs: LayerInputs, params: TopMeanParams) -> tuple[np.ndarray, np.ndarray]:
        top = np.argsort(-inputs.activations, axis=0, kind="stable")[: params.top_n]  # [top_n, K]
        means = concept_matrix(inputs)[top].mean(axis=0)  # [K, M]
        k = min(inputs.settings.top_k, means.shape[1])
        index = np.argsort(-means, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(means, index, axis=1), index

    def assemble(self, results, inputs: LayerInputs, params: TopMeanParams) -> MethodOutput:
        values, index = results[0]
        return MethodOutput(label_table(values, index, inputs.concepts.concepts, inputs.block_size))


@pytest.mark.usefixtures("ray_cluster")
def test_a_method_registered_in_one_file_runs_in_process_and_on_ray(world_folder, tmp_path):
    assert "toy_top_mean" in method_names()
    raw = tiny_config(world_folder, tmp_path / "ray", reduce={"methods": ["toy_top_mean", "cos"], "top_k": 2,
                                                             "params": {"toy_top_mean": {"top_n": 4}}})
    on_ray = dissect(load_config(raw), console=Console(quiet=True))
    local = dissect(load_config({**raw, "store": str(tmp_path / "local")}), executor="local", console=Console(quiet=True))
    assert snapshot(tmp_path / "ray") == snapshot(tmp_path / "local")
    (entry, labels), = [x for x in read_labels(tmp_path / "ray", on_ray.run_id, "fc", method="toy_top_mean")
                        if x[0].source == "labels"]
    assert labels.num_rows == 9 * 2 and entry.table == "labels" and local.run_id == on_ray.run_id

    # the oracle: the same rule, written out over the probe's one-hot labels
    acts = read_activations(Store(str(tmp_path / "ray")).committed(on_ray.record.models["tiny_cnn"].layers["fc"]).read())
    probe = load_config(raw).probe.open()
    onehot = np.eye(9)[[im.label for im in probe.images]]
    top = np.argsort(-acts.values, axis=0, kind="stable")[:4]
    expected = [probe.classes[i] for i in onehot[top].mean(axis=0).argmax(axis=1)]
    assert [concepts[0][0] for concepts in labels.ranked().values()] == expected

    with pytest.raises(Exception, match="bad parameters for method 'toy_top_mean': top_n"):
        load_config({**raw, "reduce": {"methods": ["toy_top_mean"], "params": {"toy_top_mean": {"top_n": 0}}}})
