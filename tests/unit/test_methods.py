"""The method registry: built-in methods, what a method declares, and errors that list what is registered."""

from __future__ import annotations

from typing import ClassVar

import pytest
from pydantic import BaseModel

from discover_ray.errors import ConfigError, UnknownName
from discover_ray.methods import Method, get_method, method_names, register_method
from discover_ray.similarity import METHODS


class NoParams(BaseModel):
    pass


def test_the_clip_dissect_functions_are_registered_methods():
    assert set(METHODS) <= set(method_names())
    soft = get_method("soft_wpmi")
    assert soft.needs == {"activations", "concept_scores"} and soft.writes == "labels" and soft.per_concept_source
    assert soft.params({}).top_k == 100  # CLIP-Dissect's default
    with pytest.raises(ConfigError, match="bad parameters for method 'soft_wpmi': topk.*valid: top_k"):
        soft.params({"topk": 3})
    with pytest.raises(UnknownName, match="unknown method 'nope'; registered methods: cos"):
        get_method("nope")


def test_a_method_declares_only_what_the_pipeline_provides():
    with pytest.raises(ValueError, match="needs \\['telepathy'\\]"):

        @register_method
        class Bad(Method):
            name: ClassVar[str] = "bad"
            Params = NoParams
            needs = frozenset({"activations", "telepathy"})

    with pytest.raises(ValueError, match="writes 'poems', not a table"):

        @register_method
        class Worse(Method):
            name: ClassVar[str] = "worse"
            Params = NoParams
            writes = "poems"

    assert "bad" not in method_names() and "worse" not in method_names()
