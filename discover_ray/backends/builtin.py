"""The backend kinds that ship with discover-ray (importing a module registers its kind; none of them imports a
heavy library before it is built)."""

from discover_ray.backends import (  # noqa: F401
    blip,
    clip_retrieval,
    diffusers_sd,
    hf_chat,
    no_summary,
    openai_chat,
    world_generator,
)
