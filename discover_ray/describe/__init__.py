"""Describe-and-Dissect (open-vocabulary descriptions of neurons) and what it is made of: attention crops,
the language step's prompts and rules, candidate selection, and the target model shown new images.

The library never imports Ray: the DESCRIBE stage runs ``describe_units`` on chunks of a layer's units."""

from discover_ray.describe.dnd import (
    CandidateResult,
    Captioned,
    DescribeSettings,
    UnitDescription,
    describe_units,
    seed_for,
)
from discover_ray.describe.select import Selection, select_candidates

__all__ = ["Captioned", "CandidateResult", "DescribeSettings", "Selection", "UnitDescription", "describe_units",
           "seed_for", "select_candidates"]
