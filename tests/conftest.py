"""Shared test set-up: offline, deterministic, small."""

from __future__ import annotations

import os

# Tests never reach a model hub (set before transformers is imported anywhere).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def without_torch() -> str:
    """Python source to run first in a subprocess: the heavy packages refuse to import, as on the
    rig computer. (Setting sys.modules['torch'] = None is not the same: scipy then believes torch
    is loaded.)"""
    return (
        "import importlib.abc, sys\n"
        "class NotInstalled(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'transformers', 'captum', 'optuna'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, NotInstalled())\n"
    )


@pytest.fixture(scope="session")
def tiny_recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small simulated recording: 12 cells on 32 x 32 px; mov1, mov2 (5 repeats), noise."""
    from rig_bridge.retina.recording import SimulationConfig, simulate_recording

    path = tmp_path_factory.mktemp("data") / "tiny.h5"
    config = SimulationConfig(n_cells=12, size=32, train_seconds=20, test_seconds=6, noise_seconds=20)
    return simulate_recording(path, config)


@pytest.fixture(scope="session")
def feature_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("features")


@pytest.fixture(scope="session")
def tiny_twin_dir(tiny_recording: Path, feature_cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Vi-ST twin (cpu preset, tiny random DINOv2) briefly trained on `tiny_recording`."""
    from vist_model.features import FeatureCache
    from vist_model.fit_twin import TwinSpec, train_twin
    from vist_model.train import TrainConfig

    out = tmp_path_factory.mktemp("runs") / "tiny"
    train_twin(tiny_recording, ["mov1"], out, spec=TwinSpec(kind="vist", preset="cpu", backbone="tiny"),
               config=TrainConfig(epochs=2, warmup_epochs=1), device="cpu",
               cache=FeatureCache(feature_cache_dir))
    return out


@pytest.fixture()
def serve_sim_rig(tmp_path: Path) -> Iterator[Callable[..., str]]:
    """Start simulated rigs (`rig_bridge.cli serve --backend sim`, 32 x 32 px) for one test.

    `serve_sim_rig(cells=12, seed=0)` starts one and returns its address; each is stopped after the test.
    """
    from rig_bridge.transport import free_port

    procs: list[subprocess.Popen] = []

    def start(cells: int, seed: int) -> str:
        port = free_port()
        cmd = [sys.executable, "-m", "rig_bridge.cli", "serve", "--backend", "sim", "--insecure", "--port",
               str(port), "--store", str(tmp_path / f"store{len(procs)}"), "--sim-cells", str(cells),
               "--sim-size", "32", "--sim-seed", str(seed)]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        return f"tcp://127.0.0.1:{port}"

    try:
        yield start
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)
