"""Describe-and-Dissect (open-vocabulary descriptions of neurons) and what it is made of: attention crops,
the language step's prompts and rules, candidate selection, and the target model shown new images.

The library never imports Ray: the DESCRIBE stage runs ``propose`` on chunks of a layer's units, ``draw`` on
chunks of their (unit, candidate) pairs, and ``choose``."""

from discover_ray.describe.dnd import (
    CandidateResult,
    Captioned,
    DescribeSettings,
    Drawing,
    Proposal,
    UnitDescription,
    candidate_pairs,
    choose,
    describe_units,
    draw,
    propose,
    seed_for,
)
from discover_ray.describe.select import Selection, select_candidates

__all__ = ["Captioned", "CandidateResult", "DescribeSettings", "Drawing", "Proposal", "Selection", "UnitDescription",
           "candidate_pairs", "choose", "describe_units", "draw", "propose", "seed_for", "select_candidates"]
