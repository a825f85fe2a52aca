"""Deterministic top-k: ties are broken by the lowest index, like ``torch.max``'s first-index rule.

``torch.topk`` leaves the order of equal values unspecified, so results could differ between chunkings,
devices and releases. Everything in this package selects through these two functions instead.
"""

from __future__ import annotations

import torch
from torch import Tensor


def topk_lowest_index(x: Tensor, k: int, *, block_elements: int = 1 << 22) -> tuple[Tensor, Tensor]:
    """Top ``k`` of each row of ``x`` (2-D), sorted by value descending, then by index ascending.

    Rows are processed in blocks of about ``block_elements`` entries to bound the temporary masks.
    """
    rows, width = x.shape
    if k > width:
        raise ValueError(f"cannot take the top {k} of {width} entries")
    step = max(1, block_elements // max(width, 1))
    if rows > step:  # written into the outputs block by block: no list of parts to concatenate (twice the result)
        values = torch.empty((rows, k), dtype=x.dtype, device=x.device)
        index = torch.empty((rows, k), dtype=torch.long, device=x.device)
        for r in range(0, rows, step):
            values[r : r + step], index[r : r + step] = topk_lowest_index(
                x[r : r + step], k, block_elements=block_elements
            )
        return values, index
    if k == 0:
        return x[:, :0], torch.empty((rows, 0), dtype=torch.long, device=x.device)
    x = x.contiguous()
    if k < width:
        fast = _topk_without_boundary_ties(x, k)
        if fast is not None:
            return fast
    threshold = x.topk(k, dim=1).values[:, -1:]
    above = x > threshold
    tied = x == threshold
    slots_for_ties = k - above.sum(dim=1, keepdim=True, dtype=torch.int32)
    keep = above | (tied & (tied.cumsum(dim=1, dtype=torch.int32) <= slots_for_ties))
    index = keep.nonzero()[:, 1].view(rows, k)  # row-major, so ascending index within a row
    values = x.gather(1, index)
    order = values.sort(dim=1, descending=True, stable=True).indices
    return values.gather(1, order), index.gather(1, order)


def _topk_without_boundary_ties(x: Tensor, k: int) -> tuple[Tensor, Tensor] | None:
    """``torch.topk`` reordered by (value desc, index asc), valid when no row's k-th value ties the next.

    Then the selected set is unambiguous and only its order needs the index tie-break. Returns None
    when some row has such a boundary tie.
    """
    values, index = x.topk(k + 1, dim=1)
    if bool((values[:, k - 1] == values[:, k]).any()):
        return None
    index, by_index = index[:, :k].sort(dim=1)
    values = values[:, :k].gather(1, by_index)
    order = values.sort(dim=1, descending=True, stable=True).indices
    return values.gather(1, order), index.gather(1, order)


def merge_topk(values: Tensor, index: Tensor, new_values: Tensor, new_index: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Merge two per-row top-k lists; every index in ``new_index`` must exceed every index in ``index``."""
    all_values = torch.cat([values, new_values], dim=1)
    all_index = torch.cat([index, new_index], dim=1)
    order = all_values.sort(dim=1, descending=True, stable=True).indices[:, :k]
    return all_values.gather(1, order), all_index.gather(1, order)


def top_images(activations: Tensor, n: int) -> Tensor:
    """Indices ``[K, n]`` of each neuron's ``n`` most activating images, highest first, ties by image index."""
    return topk_lowest_index(activations.T, n)[1]
