"""Concept-activation sources: CLIP image/text encoders (and, with the dissection job, label concepts)."""
