"""A recording of the simulated retina in the paper's setting (`insilico simulate` writes one).

Two natural movies from disjoint photo sets (`mov1` to train on, `mov2` to test on, repeated
for a noise ceiling) and a white-noise segment whose spike-triggered averages fill `/cells/rf`.
The file records the simulator's seed and size so that the same retina can be rebuilt to
check any later claim against the truth (`insilico verify --sim SEED`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from rich.progress import Progress

from rig_bridge.retina.simulated import SimulatedRetina
from stimuli.errors import InputError
from stimuli.families import checkerboard_noise
from stimuli.natural import disjoint_photo_sets, natural_movie
from stimuli.recording import RecordingWriter
from stimuli.recording.sta import receptive_field_maps
from stimuli.stimulus import Stimulus

PIXEL_SIZE_UM = 25.0


@dataclass(frozen=True)
class SimulationConfig:
    n_cells: int = 90
    seed: int = 0
    size: int = 64
    frame_rate: float = 30.0
    train_seconds: float = 120.0
    test_seconds: float = 30.0
    test_repeats: int = 5
    noise_seconds: float = 120.0
    noise_check_px: int = 4  # STAs of 4-px checks recover the true filters best (docs/benchmarks.md)
    rms_contrast: float = 0.2
    # The population: relative share of each cell type (type name -> weight; empty: the
    # simulator's default mix, ~60 % linear) and a factor on every receptive field's size.
    type_weights: tuple[tuple[str, float], ...] = ()
    rf_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.n_cells < 1:
            raise InputError(f"n_cells must be >= 1, got {self.n_cells}")
        if self.size < 16:
            raise InputError(f"size must be >= 16 pixels, got {self.size}")
        if self.frame_rate <= 0:
            raise InputError(f"frame_rate must be > 0, got {self.frame_rate}")
        if self.test_repeats < 2:
            raise InputError(f"test_repeats must be >= 2 for a noise ceiling, got {self.test_repeats}")
        for name in ("train_seconds", "test_seconds", "noise_seconds"):
            if getattr(self, name) * self.frame_rate < 1:
                raise InputError(f"{name} gives no frames at {self.frame_rate:g} Hz")

    def frames(self, seconds: float) -> int:
        return max(1, round(seconds * self.frame_rate))


FAMILY_TYPES = ("on_sustained", "off_sustained", "on_transient", "off_transient", "on_off", "subunit",
                "contrast_adapting")


def retina_family(n_members: int, seed: int = 0) -> list[SimulationConfig]:
    """`n_members` simulated recordings drawn at random, for claims that must hold beyond one retina.

    Each member draws its screen (32 to 64 px), cell count (30 to 120), cell-type mix (a
    Dirichlet draw over the seven types), receptive-field scale (0.7 to 1.4), RMS contrast (0.12
    to 0.32), training length (60 to 300 s), test repeats (3 to 10) and seed from one generator,
    so the family is fixed by `seed` and no member is chosen by hand.
    """
    rng = np.random.default_rng([seed, 0x5EED])
    members = []
    for _ in range(n_members):
        weights = rng.dirichlet(np.full(len(FAMILY_TYPES), 1.5))
        members.append(SimulationConfig(
            size=int(rng.choice([32, 40, 48, 56, 64])), n_cells=int(rng.integers(30, 121)),
            type_weights=tuple((t, round(float(w), 3)) for t, w in zip(FAMILY_TYPES, weights, strict=True)),
            rf_scale=round(float(rng.uniform(0.7, 1.4)), 2), rms_contrast=round(float(rng.uniform(0.12, 0.32)), 3),
            train_seconds=float(10 * rng.integers(6, 31)), test_seconds=20.0,
            test_repeats=int(rng.integers(3, 11)), noise_seconds=90.0, seed=int(rng.integers(1, 1_000_000)),
        ))
    return members


def build_retina(seed: int, n_cells: int, size: int, frame_rate: float,
                 type_weights: tuple[tuple[str, float], ...] = (), rf_scale: float = 1.0) -> SimulatedRetina:
    """The ground truth behind a simulated recording (rebuilt from the file's `sim_*` attrs)."""
    return SimulatedRetina.create(n_cells=n_cells, height=size, width=size, frame_rate=frame_rate, seed=seed,
                                  type_weights=dict(type_weights) or None, rf_scale=rf_scale)


def retina_of_recording(attrs: dict[str, object]) -> SimulatedRetina:
    """Rebuild the simulated retina that produced a recording, from its root attributes.

    Files written before the population could vary have no `sim_type_weights` / `sim_rf_scale`:
    they hold the default population.
    """
    try:
        weights = json.loads(str(attrs.get("sim_type_weights", "[]")))
        return build_retina(int(attrs["sim_seed"]), int(attrs["sim_n_cells"]), int(attrs["sim_size"]),
                            float(attrs["frame_rate"]), tuple((str(k), float(v)) for k, v in weights),
                            float(attrs.get("sim_rf_scale", 1.0)))
    except KeyError as err:
        raise InputError(f"not a simulated recording: attribute @{err.args[0]} is missing") from None


def simulate_stimuli(config: SimulationConfig) -> dict[str, Stimulus]:
    train_photos, test_photos = disjoint_photo_sets(config.seed)
    size, fps = config.size, config.frame_rate
    return {
        "mov1": natural_movie(config.frames(config.train_seconds), size, size, train_photos,
                              frame_rate=fps, rms_contrast=config.rms_contrast, seed=config.seed),
        "mov2": natural_movie(config.frames(config.test_seconds), size, size, test_photos,
                              frame_rate=fps, rms_contrast=config.rms_contrast, seed=config.seed + 1),
        "noise": checkerboard_noise(config.frames(config.noise_seconds), size, size,
                                    check_size=config.noise_check_px, frame_rate=fps, seed=config.seed + 2),
    }


def simulate_recording(out: str | Path, config: SimulationConfig | None = None, *,
                       progress: Progress | None = None) -> Path:
    """Write a recording-v1 file of the simulated retina; returns its path.

    `progress`: a running display to report the five steps on (the command line passes one).
    """
    config = config or SimulationConfig()
    retina = build_retina(config.seed, config.n_cells, config.size, config.frame_rate,
                          config.type_weights, config.rf_scale)
    rng = np.random.default_rng(config.seed)
    repeats = {"mov1": 1, "mov2": config.test_repeats, "noise": 1}
    attrs = {f"sim_{k}": v for k, v in asdict(config).items() if k != "type_weights"}
    attrs["sim_type_weights"] = json.dumps([list(kv) for kv in config.type_weights])
    attrs["simulator"] = "rig_bridge.retina.SimulatedRetina"
    bar = progress or Progress(disable=True)
    task = bar.add_task("simulate", total=5, status="stimuli")
    stims = simulate_stimuli(config)
    attrs["stimulus_params"] = json.dumps({k: dict(s.params) for k, s in stims.items()})
    bar.update(task, advance=1, status="spikes")
    with RecordingWriter(out, frame_rate=config.frame_rate, height=config.size, width=config.size,
                         cell_ids=retina.cell_ids, n_repeats=config.test_repeats,
                         pixel_size_um=PIXEL_SIZE_UM, attrs=attrs) as writer:
        noise_counts = None
        for name, stim in stims.items():
            # Each segment starts from a grey screen: the rate is the same on every repeat.
            rate = retina.rate(stim.as_float())
            counts = np.stack([rng.poisson(rate) for _ in range(repeats[name])]).astype(np.float32)
            writer.append_segment(name, stim.frames, counts)
            if name == "noise":
                noise_counts = counts[0]
            bar.update(task, advance=1, status=name)
        writer.set_rf(receptive_field_maps(stims["noise"].as_float(), noise_counts).maps)
        writer.set_cell_types(retina.cell_types)
        bar.update(task, advance=1, status="done")
    return Path(out)
