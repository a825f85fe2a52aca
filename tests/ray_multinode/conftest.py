"""Generated probe images for the multi-node scenarios."""

from __future__ import annotations

from pathlib import Path

import pytest

from discover_ray import world


@pytest.fixture(scope="session")
def probe_64(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """64 generated shape images as PNGs, one folder per class: 4 shards of 16."""
    return world.write_folder(tmp_path_factory.mktemp("world64") / "probe", world.generate(64, seed=5))
