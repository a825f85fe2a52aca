"""Run records: typed (pydantic), written per attempt, promoted on success; read back without Ray."""

from discover_ray.runs.attempts import Attempt
from discover_ray.runs.read import (
    list_runs,
    load_attempts,
    load_run,
    read_labels,
    read_simulation,
    read_verification,
    referenced_datasets,
)
from discover_ray.runs.record import (
    CompetitionInfo,
    FailedImage,
    Identification,
    LabelEntry,
    ModelInfo,
    ProbeInfo,
    RunRecord,
    SimulationEntry,
    SplitInfo,
    StageEvent,
    VerificationEntry,
    versions,
)

__all__ = [
    "Attempt", "CompetitionInfo", "FailedImage", "Identification", "LabelEntry", "ModelInfo", "ProbeInfo", "RunRecord",
    "SimulationEntry", "SplitInfo", "StageEvent", "VerificationEntry", "list_runs", "load_attempts", "load_run",
    "read_labels", "read_simulation", "read_verification", "referenced_datasets", "versions",
]
