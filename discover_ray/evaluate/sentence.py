"""sentence-transformers text encoder (all-mpnet-base-v2 by default), an optional extra."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

DEFAULT_SENTENCE_MODEL = "sentence-transformers/all-mpnet-base-v2"


class SentenceEncoder:
    """Wraps ``SentenceTransformer``; a model name or a local folder with its weights."""

    def __init__(self, model: str = DEFAULT_SENTENCE_MODEL, device: str = "cpu"):
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise ImportError(
                "the mpnet text cosine needs sentence-transformers: pip install 'discover-ray[text]'"
            ) from None
        try:
            self.model = SentenceTransformer(model, device=device, local_files_only=_offline(model))
        except OSError as err:
            raise RuntimeError(
                f"cannot load sentence-transformers model {model!r}: its weights are not available here ({err}). "
                "Download it where there is network (SentenceTransformer(name).save(folder)) and pass the folder."
            ) from None

    def encode_text(self, texts: Sequence[str]) -> Tensor:
        return torch.as_tensor(self.model.encode(list(texts), convert_to_numpy=True, normalize_embeddings=True))


def _offline(model: str) -> bool:
    from discover_ray.encoders.hub import hub_reachable

    return not hub_reachable() and not model.startswith(("/", "."))
