"""One import point for every parametric stimulus family, keyed by ``Stimulus.name``.

``FAMILIES[stimulus.name](**stimulus.params)`` regenerates a family stimulus from its
recorded recipe (the chirp records extra, derived keys and is regenerated from
``height``, ``width`` and ``frame_rate`` only).
"""

from __future__ import annotations

from collections.abc import Callable
from types import MappingProxyType

from stimuli.bars import moving_bar
from stimuli.chirp import chirp
from stimuli.flashes import full_field_flash
from stimuli.gratings import drifting_grating
from stimuli.noise import checkerboard_noise
from stimuli.spots import spot
from stimuli.stimulus import Stimulus

FAMILIES: MappingProxyType[str, Callable[..., Stimulus]] = MappingProxyType(
    {
        "checkerboard_noise": checkerboard_noise,
        "full_field_flash": full_field_flash,
        "chirp": chirp,
        "drifting_grating": drifting_grating,
        "moving_bar": moving_bar,
        "spot": spot,
    }
)

__all__ = [
    "FAMILIES",
    "checkerboard_noise",
    "chirp",
    "drifting_grating",
    "full_field_flash",
    "moving_bar",
    "spot",
]
