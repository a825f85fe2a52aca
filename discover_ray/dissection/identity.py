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

__all__ = ["RunIdentity", "file_fingerprint", "prepare_sources", "run_id_of", "run_identity", "submission_id"]


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


def file_fingerprint(uri: str) -> Any:
    """What a file (or every file of a folder) is, without reading it: its size and ETag (object stores:
    a hash of the content) or modification time; a name that is no file (a tag, a built-in set) as it is."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(uri)
    if not fs.exists(path):
        return uri
    if fs.isdir(path):
        found = fs.find(path, detail=True)
        return sorted((name[len(path):], _stat(info)) for name, info in found.items())
    return _stat(fs.info(path))


def _stat(info: dict[str, Any]) -> list[Any]:
    return [info.get("size"), info.get("ETag") or info.get("etag") or info.get("mtime") or str(info.get("LastModified"))]


def submission_id(config: DissectConfig) -> str:
    """The Ray job id of a dissection: its config's identity and what its input files are by size and
    ETag or modification time (read without downloading them, so submitting stays fast). A changed file
    at the same path is another job; the job itself names its run by the inputs' full content."""
    inputs = {
        "probe": file_fingerprint(config.probe.source),
        "checkpoints": [file_fingerprint(m.checkpoint) if m.checkpoint else None for m in config.models],
        "concepts": [[file_fingerprint(value) for value in (getattr(c, "pretrained", None), getattr(c, "concepts", None))
                      if isinstance(value, str)] for c in config.concepts],
    }
    return "dissect-" + config_hash({"config": config.identity(), "inputs": inputs})
