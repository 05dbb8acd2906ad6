"""The index file that marks a shared-core run folder; its own module so `twin` and `multi` share it."""

from __future__ import annotations

from pathlib import Path

CORE_INDEX = "core.json"
"""The file of a shared-core run folder that names its recordings (beside one folder per recording)."""


def is_shared_core(path: str | Path) -> bool:
    """Whether `path` is a shared-core run folder (it holds `core.json`)."""
    return (Path(path) / CORE_INDEX).is_file()
