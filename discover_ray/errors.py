"""User errors: one family, so the CLI and the jobs print them as one clear line (exit 2).

Anything raised that is not a ``DiscoverError`` is a bug and shows its traceback. Each class also derives
from the built-in exception a Python caller would expect (``ValueError`` for bad values, ``KeyError`` for
unknown names, ``FileNotFoundError`` for missing inputs), so ``except ValueError`` keeps working.
"""

from __future__ import annotations

__all__ = [
    "CheckpointMismatch",
    "ClusterStalled",
    "ConfigError",
    "DatasetError",
    "DiscoverError",
    "ExplainInputError",
    "IncompatibleRuns",
    "InputChanged",
    "InputNotFound",
    "NonFiniteActivations",
    "ProbeError",
    "ReportFolderError",
    "RunInProgress",
    "RunNotFound",
    "StageCrashed",
    "TransientReadError",
    "UnknownName",
    "WeightsUnavailableError",
]


class DiscoverError(Exception):
    """Bad input or a state of the store the user can fix; the message says what and how."""

    def __str__(self) -> str:  # KeyError would quote its message
        return str(self.args[0]) if self.args else self.__class__.__name__


class ConfigError(DiscoverError, ValueError):
    """The config cannot be used; the message names the field and what is wrong."""


class ProbeError(DiscoverError, ValueError):
    """The probe set cannot be used as given; the message says why and what to change."""


class CheckpointMismatch(DiscoverError, ValueError):
    """The checkpoint's tensors do not fit the model's parameters."""


class WeightsUnavailableError(DiscoverError, RuntimeError):
    """Pretrained weights were asked for but cannot be had here (offline, not cached)."""


class UnknownName(DiscoverError, KeyError, ValueError):
    """A layer, method, model, concept source or image that does not exist; the message lists the valid ones."""


class InputNotFound(DiscoverError, FileNotFoundError):
    """A file the job reads (checkpoint, concept file, probe source) is not there."""


class InputChanged(DiscoverError, RuntimeError):
    """An input changed while a run was using it."""


class RunNotFound(DiscoverError, FileNotFoundError):
    """No finished run of that id in the store."""


class DatasetError(DiscoverError, RuntimeError):
    """A dataset of the store is incomplete or is not the one a run record names."""


class IncompatibleRuns(DiscoverError, ValueError):
    """Two runs that cannot be compared (other probe sets, other layers)."""


class ReportFolderError(DiscoverError, FileExistsError):
    """The report's destination holds files the report did not write."""


class ExplainInputError(DiscoverError, ValueError):
    """Activations, concept values or a split that an explanation method cannot use (NaN, empty, misaligned)."""


class TransientReadError(DiscoverError, RuntimeError):
    """An input could not be read because of a passing fault (throttling, a 5xx answer, a reset connection), even
    after retries: the task fails so that it runs again, instead of counting the input as bad."""


class NonFiniteActivations(DiscoverError, ValueError):
    """A model produced NaN or infinite activations; the message names the model, layer, units and images."""


class ClusterStalled(DiscoverError, RuntimeError):
    """A stage made no progress for ``ray.no_progress_timeout_s`` (a node was lost and nothing can take its
    work, or the cluster is too small for what the stage reserves); the message says what the cluster has."""


class StageCrashed(DiscoverError, RuntimeError):
    """A chunk or a task kept killing the worker that ran it (``ray.max_retries`` retries used up); the message
    names the stage, the chunk's shard and images or the task, and how many times it crashed."""


class RunInProgress(DiscoverError, RuntimeError):
    """Another job holds the run's lease (the same run is being computed now); the message names it and what to do."""
