"""Loading Hugging Face models (transformers, diffusers) the same way for every backend, failing fast offline.

A model is named by a local directory (what clusters without network use: a ``save_pretrained`` or
``hf download --local-dir`` folder) or by a hub id. A hub id is read from the local cache first; only when it
is not there, and the machine is not marked offline (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``), is it
downloaded. Before downloading, one short request asks the hub whether it is reachable: huggingface_hub 2.4
retries a failed metadata request five times with backoff (about 23 s on a machine whose DNS fails at once,
whatever ``HF_HUB_ETAG_TIMEOUT`` says, and its timeout constants are read when it is imported), so without the
probe a worker with no network would hang before saying so. Every failure is a ``WeightsUnavailableError``
that says which model and how to make it available.

Heavy libraries are imported inside the functions, so importing this module costs nothing.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from discover_ray.backends.base import BackendConfig
from discover_ray.errors import WeightsUnavailableError

if TYPE_CHECKING:
    import torch

__all__ = ["PROBE_TIMEOUT_S", "accelerate_kwargs", "dtype_name", "is_offline", "load_pretrained", "torch_dtype"]

T = TypeVar("T")

#: Seconds the reachability probe waits for the hub (``HF_HUB_ETAG_TIMEOUT`` when set, read at each call).
PROBE_TIMEOUT_S = 5.0

_TRUE = {"1", "on", "yes", "true"}


def is_offline() -> bool:
    """Whether hub downloads are forbidden: ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` set now, or set when
    huggingface_hub was imported (it then refuses every request itself)."""
    if any(os.environ.get(var, "").strip().lower() in _TRUE for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return True
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers and diffusers
        return False
    return bool(constants.HF_HUB_OFFLINE)


def _probe_timeout() -> float:
    try:
        return float(os.environ.get("HF_HUB_ETAG_TIMEOUT") or PROBE_TIMEOUT_S)
    except ValueError:
        return PROBE_TIMEOUT_S


def _hub_unreachable(name: str, revision: str | None) -> str | None:
    """Why ``name`` cannot be downloaded now (one request, no retries, bounded in time), or None if it can."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    timeout = _probe_timeout()
    outcome: list[BaseException | None] = []

    def probe() -> None:
        try:
            HfApi().model_info(name, revision=revision, timeout=timeout)
            outcome.append(None)
        except BaseException as err:  # noqa: BLE001 - reported to the caller below
            outcome.append(err)

    # A thread, because name resolution is not bounded by the request's timeout on every system.
    worker = threading.Thread(target=probe, name="hub-probe", daemon=True)
    worker.start()
    worker.join(timeout + 1.0)
    if not outcome:
        return f"the hub did not answer within {timeout:g} s"
    err = outcome[0]
    if err is None:
        return None
    if isinstance(err, GatedRepoError):
        return "it is a gated repository this machine has no access to (log in with `hf auth login`)"
    if isinstance(err, RevisionNotFoundError):
        return f"the hub has no revision {revision!r} of it"
    if isinstance(err, RepositoryNotFoundError):
        return "the hub has no such repository (or it is private)"
    return f"the hub cannot be reached ({type(err).__name__}: {_short(err)})"


def _short(err: BaseException, limit: int = 300) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _how_to_fix(name: str, revision: str | None) -> str:
    rev = f" --revision {revision}" if revision else ""
    return (
        f"where there is network, download it (`hf download {name}{rev} --local-dir DIR`, or "
        f"`huggingface-cli download {name}{rev} --local-dir DIR`) and set `model:` to that local directory, "
        f"or pre-fill this machine's Hugging Face cache (HF_HOME)"
    )


def _looks_like_path(name: str) -> bool:
    """A name that can only mean a directory (a hub id is ``name`` or ``owner/name``)."""
    return name.startswith((".", "/", "~", "\\")) or name.count("/") > 1 or os.sep != "/" and os.sep in name


def load_pretrained(loader: Callable[..., T], name: str, revision: str | None, what: str, **kwargs: Any) -> T:
    """``loader(name, **kwargs)`` (a class's ``from_pretrained`` when ``loader`` has one) from a local directory,
    the HF cache, or, when not cached and not offline, a download; a ``WeightsUnavailableError`` otherwise.

    ``what`` names the model in messages ("captioner model", "generator pipeline"). ``revision`` applies to hub
    ids only (a local directory is what it is).
    """
    load: Callable[..., T] = getattr(loader, "from_pretrained", loader)
    at = f" at revision {revision!r}" if revision else ""
    folder = Path(name).expanduser()
    if folder.is_dir():
        try:
            return load(str(folder), **kwargs)
        except Exception as err:  # noqa: BLE001 - any failure to read the folder is the user's to fix
            raise WeightsUnavailableError(
                f"the {what} in the local directory {str(folder)!r} cannot be loaded ({type(err).__name__}: "
                f"{_short(err)}); it must be a save_pretrained / `hf download --local-dir` folder of that model"
            ) from err
    if _looks_like_path(name):
        raise WeightsUnavailableError(
            f"the {what} directory {name!r} does not exist; set `model:` to an existing local directory or a hub id"
        )
    try:
        return load(name, revision=revision, local_files_only=True, **kwargs)
    except Exception as err:  # noqa: BLE001 - not cached (OSError), or cached but unreadable: both end below
        cached_error: BaseException = err
    if is_offline():
        raise WeightsUnavailableError(
            f"the {what} {name!r}{at} is not in the local Hugging Face cache and this machine is offline "
            f"(HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE; {type(cached_error).__name__}: {_short(cached_error)}); "
            f"{_how_to_fix(name, revision)}"
        ) from cached_error
    reason = _hub_unreachable(name, revision)
    if reason is not None:
        raise WeightsUnavailableError(
            f"the {what} {name!r}{at} is not in the local Hugging Face cache and cannot be downloaded: {reason}; "
            f"{_how_to_fix(name, revision)}"
        ) from cached_error
    try:
        return load(name, revision=revision, **kwargs)
    except Exception as err:  # noqa: BLE001
        raise WeightsUnavailableError(
            f"the {what} {name!r}{at} could not be downloaded and loaded ({type(err).__name__}: {_short(err)}); "
            f"{_how_to_fix(name, revision)}"
        ) from err


def check_available(name: str, revision: str | None, what: str) -> None:
    """Raise ``WeightsUnavailableError`` within seconds, before any work, when ``name`` can be had neither from a
    local directory, nor from the Hugging Face cache, nor by a download from here (the same rules as
    ``load_pretrained``, without loading anything)."""
    at = f" at revision {revision!r}" if revision else ""
    if Path(name).expanduser().is_dir():
        return
    if _looks_like_path(name):
        raise WeightsUnavailableError(
            f"the {what} directory {name!r} does not exist; set `model:` to an existing local directory or a hub id")
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(name, revision=revision, local_files_only=True)
        return
    except Exception as err:  # noqa: BLE001 - not cached: decided below
        cached_error: BaseException = err
    if is_offline():
        raise WeightsUnavailableError(
            f"the {what} {name!r}{at} is not in the local Hugging Face cache and this machine is offline "
            f"(HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE); {_how_to_fix(name, revision)}") from cached_error
    reason = _hub_unreachable(name, revision)
    if reason is not None:
        raise WeightsUnavailableError(
            f"the {what} {name!r}{at} is not in the local Hugging Face cache and cannot be downloaded: {reason}; "
            f"{_how_to_fix(name, revision)}") from cached_error


class HubModelConfig(BackendConfig):
    """A backend section whose ``model`` is a Hugging Face model (a local directory or a hub id): checked on the
    driver, before any work, with ``check_available``."""

    what: ClassVar[str] = "model"

    def check(self) -> None:
        check_available(self.model or "", self.revision, self.what)


def torch_dtype(name: str, device: str) -> torch.dtype:
    """The dtype to load a model in: ``name`` ("float32", "float16", "bfloat16"), except that float16 on a CPU
    becomes float32. float16 is a GPU choice (half the memory, tensor cores); on a CPU its kernels are slower
    than float32's, some operators lack them in older torch releases, and it only loses precision. (bfloat16 is
    kept: CPUs have kernels for it.) Backends report the *effective* dtype in their identity, so results computed
    in float32 are never cached under a float16 key, nor float16 results under a float32 one."""
    import torch

    if name not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"unsupported dtype {name!r}; use float32, float16 or bfloat16")
    dtype = getattr(torch, name)
    if dtype is torch.float16 and torch.device(device).type == "cpu":
        return torch.float32
    return dtype


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` → ``"float32"`` (the form configs and identities use)."""
    return str(dtype).removeprefix("torch.")


def accelerate_kwargs() -> dict[str, Any]:
    """``low_cpu_mem_usage=False`` where accelerate is not installed (diffusers would otherwise warn at every
    load and fall back to it anyway); nothing where it is (the faster, leaner default)."""
    return {} if importlib.util.find_spec("accelerate") is not None else {"low_cpu_mem_usage": False}
