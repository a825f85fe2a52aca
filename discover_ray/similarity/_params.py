"""Method names and their default hyperparameters (methods.md §1.2).

Parameters are pydantic models so that a misspelt or out-of-range parameter fails with a message that
names it, instead of being silently ignored.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CosParams(_Params):
    """Cosine similarity of neuron and concept columns over the image axis (no centring)."""

    eps: float = Field(1e-12, gt=0, description="norm floor; a dead column scores 0 instead of NaN")


class Cos3Params(_Params):
    """Cosine of the centred, element-wise cubed columns."""

    min_norm: float = Field(1e-3, gt=0)


class WpmiParams(_Params):
    """Weighted pointwise mutual information over each neuron's top_k images."""

    top_k: int = Field(28, ge=1)
    a: float = Field(2.0, gt=0, description="softmax sharpness applied to the concept scores")
    lam: float = Field(0.6, description="weight of the concept prior log p(t_m)")
    min_prob: float = Field(1e-7, gt=0)


class SoftWpmiParams(_Params):
    """Soft-WPMI: WPMI with rank-dependent inclusion probabilities (CLIP-Dissect's default)."""

    top_k: int = Field(100, ge=1)
    a: float = Field(10.0, gt=0, description="softmax sharpness applied to the concept scores")
    lam: float = 1.0
    min_prob: float = Field(1e-7, gt=0)
    p_start: float = Field(0.998, gt=0, le=1)
    p_end: float = Field(0.97, gt=0, le=1)


class RankReorderParams(_Params):
    """Rank-reorder: how well a concept's ranking of a neuron's top images reproduces its activations."""

    p: float = Field(3.0, gt=0, description="exponent of the reordering error")
    top_fraction: float = Field(0.05, gt=0, le=1)
    scale_p: float = Field(0.5, ge=0, description="exponent of the mean-concept-score normaliser")
    n_permutations: int = Field(5, ge=1, description="random permutations in the error baseline")
    seed: int = Field(0, description="seed of the baseline permutations (the reference leaves it unseeded)")
    min_mean_score: float = Field(
        1e-6, gt=0, description="floor of the mean concept score, so a non-positive mean ranks last, not NaN"
    )


PARAMS: dict[str, type[_Params]] = {
    "cos": CosParams,
    "cos3": Cos3Params,
    "rank_reorder": RankReorderParams,
    "wpmi": WpmiParams,
    "soft_wpmi": SoftWpmiParams,
}

METHODS: tuple[str, ...] = tuple(PARAMS)


def resolve_params(method: str, params: dict[str, Any]) -> _Params:
    """Validate ``params`` for ``method``, filling in the defaults; raise a clear ``ValueError`` otherwise."""
    if method not in PARAMS:
        raise ValueError(f"unknown similarity method {method!r}; choose one of {', '.join(METHODS)}")
    model = PARAMS[method]
    try:
        return model(**params)
    except ValidationError as err:
        fields = ", ".join(model.model_fields)
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '?'}: {e['msg']}" for e in err.errors())
        raise ValueError(f"bad parameters for similarity method {method!r}: {problems} (valid: {fields})") from None
