"""The in-process executor: every stage in this process, without Ray (unit tests, ``--local``, debugging).

It runs exactly the loaders, heads and task functions the Ray executor runs, on the same fixed chunks,
so the outputs are the same bit for bit; only the parallelism differs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import torch

from discover_ray.pipeline.chunks import LoadThen, ModelPass, ShardAssembler
from discover_ray.pipeline.stage import ShardOutput

__all__ = ["LocalExecutor"]


class LocalExecutor:
    name = "local"

    def __init__(self, threads: int | None = None):
        self.threads = threads or os.cpu_count() or 1

    def run_pass(self, model_pass: ModelPass, assembler: ShardAssembler,
                 on_images: Callable[[int], None]) -> Iterator[ShardOutput]:
        previous = torch.get_num_threads()
        try:
            worker = LoadThen(model_pass.source(), model_pass.heads, self.threads)
            chunks = (worker({k: _one(v) for k, v in row.items()}) for row in model_pass.rows())
            yield from assembler.run(chunks, on_images)
        finally:
            torch.set_num_threads(previous)

    def run_tasks(self, fn: Callable[[Any, Any], Any], payload: Any, payload_key: tuple[str, ...],
                  tasks: list[Any], resident: str | None = None) -> list[Any]:
        return [fn(payload, task) for task in tasks]  # this process is the resident worker

    def close(self) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        return {"executor": self.name, "threads": self.threads}


def _one(value: int) -> Any:
    """A chunk row as the one-row batch Ray Data would hand an actor."""
    import numpy as np

    return np.array([value])
