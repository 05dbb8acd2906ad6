"""Per-cell attribution reports of a twin with Captum: `insilico attribute`.

Names are imported lazily so that `insilico.attribution.cli` (imported by the command line
at start-up) does not pull in torch and Captum before the command runs.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "METHODS": "config", "AttributionConfig": "config",
    "Clip": "clips", "random_clips": "clips", "select_clips": "clips",
    "ClipAttribution": "methods", "attribute_clip": "methods",
    "TestMovie": "pipeline", "attribute_cells": "pipeline", "attribute_twin": "pipeline",
    "load_test_movie": "pipeline",
    "CellAttribution": "result",
    "EffectiveRF": "summaries", "effective_rf": "summaries", "map_correlation": "summaries",
    "rank_similarity": "summaries", "spatial_map": "summaries", "temporal_profile": "summaries",
    "randomised_network": "sanity",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
