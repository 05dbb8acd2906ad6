"""Shared test set-up: offline, deterministic, small."""

from __future__ import annotations

import os

# Tests never reach a model hub (set before transformers is imported anywhere).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
