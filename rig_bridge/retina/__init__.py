"""The simulated retina: the ground truth (numpy/scipy only, no torch) that stands in for a real one.

It stands in for the rig so the closed loop runs on a laptop and every claim of the toolkit
(twin accuracy, designed stimuli, attributions) can be checked against the truth::

    retina = SimulatedRetina.create(n_cells=90, height=64, width=64, frame_rate=30.0, seed=0)
    rates = retina.rate(video)                     # [T, N] expected counts per frame bin
    counts = retina.spikes(video, np.random.default_rng(1))   # [T, N] uint16
    best = true_optimal_stimulus(retina, retina.index_of(42), 15, rms_contrast=0.2)

Videos are float luminance ``[T, H, W]`` in [0, 1] around grey 0.5 (uint8 / 255).

Modules: ``cells`` (types, specs, filters), ``population`` (mosaics, ids), ``circuit``
(compiled causal computation), ``calibration`` (gains), ``spiking`` (counts), ``movies``
(natural-like test movies), ``optimum`` (true optimal stimuli), ``simulated``
(:class:`SimulatedRetina`), ``recording`` (a recording-v1 file of it: `insilico simulate`, and
the retina rebuilt from a file's `sim_*` attributes), ``backend`` (the retina as the rig's `sim`
backend, with its spikes on the rig clock).
"""

from rig_bridge.retina.cells import (
    LINEAR_TYPES,
    CellSpec,
    CellType,
    ContrastGainControl,
    SubunitPool,
)
from rig_bridge.retina.movies import smooth_random_movie
from rig_bridge.retina.optimum import drive, response_at_end, true_optimal_stimulus
from rig_bridge.retina.population import DEMO_CELL_ID
from rig_bridge.retina.simulated import RetinaStream, SimulatedRetina

__all__ = [
    "DEMO_CELL_ID",
    "LINEAR_TYPES",
    "CellSpec",
    "CellType",
    "ContrastGainControl",
    "RetinaStream",
    "SimulatedRetina",
    "SubunitPool",
    "drive",
    "response_at_end",
    "smooth_random_movie",
    "true_optimal_stimulus",
]
