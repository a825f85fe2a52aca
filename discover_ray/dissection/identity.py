"""The run id: a content id of what a dissection computes, from its config and the content of its inputs.

Paths are not part of it, contents are: the probe set's id (every image's id, label and bytes), each
checkpoint's sha256, each concept set's and encoder's id. The same dissection of a moved file is the same
run; a new file at the same path is another run. Neither where it runs (``ray``, ``store``) nor its
display ``name`` count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from discover_ray.config import DissectConfig
from discover_ray.ids import file_sha256
from discover_ray.pipeline.chunks import ProbeHandle
from discover_ray.probe import ProbeSet
from discover_ray.sources import PreparedSource, SourceContext, get_source_kind
from discover_ray.store import Store, config_hash

__all__ = ["RunIdentity", "prepare_sources", "run_id_of", "run_identity"]


@dataclass(frozen=True)
class RunIdentity:
    run_id: str
    inputs: dict[str, Any]


def run_id_of(config: DissectConfig, inputs: dict[str, Any]) -> str:
    return config_hash({"config": config.identity(), "inputs": inputs})


def input_ids(probe_id: str, sources: list[PreparedSource], checkpoints: dict[str, str | None]) -> dict[str, Any]:
    return {"probe": probe_id, "checkpoints": checkpoints,
            "concepts": {s.name: s.input_ids() for s in sources}}


def prepare_sources(config: DissectConfig, store: Store, probe: ProbeSet, notes: list[str]) -> tuple[list[PreparedSource], SourceContext]:
    context = SourceContext(store, probe, probe.id, ProbeHandle.of(config.probe, probe), config.probe.shard_size, notes)
    return [get_source_kind(c.kind).prepare(c, context) for c in config.concepts], context


def run_identity(config: DissectConfig) -> RunIdentity:
    """The run id of ``config`` computed from its inputs alone (without building any model): what
    ``discover submit`` names a job by. Reads the probe set and hashes each checkpoint."""
    probe = config.probe.open()
    sources, _ = prepare_sources(config, Store(config.store), probe, [])
    checkpoints = {m.label: file_sha256(m.checkpoint) if m.checkpoint else None for m in config.models}
    inputs = input_ids(probe.id, sources, checkpoints)
    return RunIdentity(run_id_of(config, inputs), inputs)
