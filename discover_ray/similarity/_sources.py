"""Where the image–concept scores P[N, M] come from: a given matrix, or L2-normalised embeddings.

Kernels only ever ask for column blocks ``P[rows, start:stop]``, so an embedding source never builds
the whole N×M matrix, and a given matrix is sliced and moved to the compute device block by block.
"""

from __future__ import annotations

import torch
from torch import Tensor


class ConceptScores:
    """P[N, M] given directly; blocks are fresh copies on ``device``/``dtype``, the input is never modified."""

    def __init__(self, scores: Tensor, device: torch.device, dtype: torch.dtype, rows: Tensor | None = None):
        self.scores = scores
        self.device = device
        self.dtype = dtype
        self._rows = rows

    @property
    def n_rows(self) -> int:
        return self.scores.shape[0] if self._rows is None else self._rows.numel()

    @property
    def n_concepts(self) -> int:
        return self.scores.shape[1]

    def block_into(self, out: Tensor, start: int, stop: int, row_start: int = 0) -> Tensor:
        """Write ``P[rows[row_start:row_start + len(out)], start:stop]`` into ``out`` (one pass, no temporary)."""
        columns = self.scores[:, start:stop]
        row_stop = row_start + out.shape[0]
        if self._rows is None:
            return out.copy_(columns[row_start:row_stop])  # converts dtype and device as it copies: no temporary
        if columns.dtype == out.dtype and columns.device == out.device:
            return torch.index_select(columns, 0, self._rows[row_start:row_stop], out=out)
        return out.copy_(self.block(start, stop, row_start, row_stop, writable=False))

    def is_view_of_rows(self) -> bool:
        """Whether blocks can be read where they lie (all rows, compute device and dtype)."""
        return self._rows is None and self.scores.device == self.device and self.scores.dtype == self.dtype

    def restrict(self, rows: Tensor) -> ConceptScores:
        """The same scores seen only at image ``rows`` (indices into the full image axis)."""
        return ConceptScores(self.scores, self.device, self.dtype, rows)

    def block(
        self, start: int, stop: int, row_start: int = 0, row_stop: int | None = None, writable: bool = True
    ) -> Tensor:
        """``P[rows[row_start:row_stop], start:stop]`` on the compute device.

        Kernels modify blocks in place, so by default a block never aliases the caller's tensor;
        ``writable=False`` allows a view for read-only use.
        """
        columns = self.scores[:, start:stop]
        if self._rows is None:
            return columns[row_start:row_stop].to(device=self.device, dtype=self.dtype, copy=writable)
        part = columns.index_select(0, self._rows[row_start:row_stop].to(columns.device))
        return part.to(device=self.device, dtype=self.dtype)


class EmbeddingScores:
    """P = I Cᵀ for row-normalised image embeddings I[N, d] and concept embeddings C[M, d]."""

    def __init__(self, image_emb: Tensor, concept_emb: Tensor, device: torch.device, dtype: torch.dtype):
        self.image_emb = _normalise(image_emb.to(device=device, dtype=dtype))
        self.concept_emb = _normalise(concept_emb.to(device=device, dtype=dtype))
        self.device = device
        self.dtype = dtype
        self._gram: Tensor | None = None

    @property
    def n_rows(self) -> int:
        return self.image_emb.shape[0]

    @property
    def n_concepts(self) -> int:
        return self.concept_emb.shape[0]

    def restrict(self, rows: Tensor) -> EmbeddingScores:
        view = object.__new__(EmbeddingScores)
        view.image_emb = self.image_emb.index_select(0, rows.to(self.device))
        view.concept_emb, view.device, view.dtype = self.concept_emb, self.device, self.dtype
        view._gram = None  # a different row set has a different Gram matrix
        return view

    def block(
        self, start: int, stop: int, row_start: int = 0, row_stop: int | None = None, writable: bool = True
    ) -> Tensor:
        return self.image_emb[row_start:row_stop] @ self.concept_emb[start:stop].T

    def block_into(self, out: Tensor, start: int, stop: int, row_start: int = 0) -> Tensor:
        rows = self.image_emb[row_start : row_start + out.shape[0]]
        return torch.matmul(rows, self.concept_emb[start:stop].T, out=out)

    def column_norms(self, start: int, stop: int) -> Tensor:
        """‖P[:, m]‖₂ over all images without forming P: sqrt(c_m ᵀ (IᵀI) c_m), the Gram matrix built once."""
        if self._gram is None:
            self._gram = self.image_emb.T @ self.image_emb
        chunk = self.concept_emb[start:stop]
        return ((chunk @ self._gram) * chunk).sum(dim=1).clamp_min(0).sqrt()


def _normalise(x: Tensor) -> Tensor:
    """Rows scaled to unit L2 norm; rows already unit-norm (to rounding) are used as they are, uncopied."""
    norms = x.norm(dim=1, keepdim=True)
    if bool(((norms - 1).abs() <= 8 * torch.finfo(x.dtype).eps).all()):
        return x
    return x / norms.clamp_min(torch.finfo(x.dtype).tiny)
