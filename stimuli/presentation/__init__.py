"""Presenting stimuli on the rig's display with PsychoPy, and the numpy reference of the screen.

Nothing here imports PsychoPy at import time: a window (and `psychopy.visual`) is only
created by `Presenter.open()`, so the package imports on a machine without a display.
"""

from stimuli.presentation.geometry import Rect, expected_screen, photodiode_rect, stimulus_rect
from stimuli.presentation.log import PresentationLog
from stimuli.presentation.luminance import apply_lut, gamma_lut, lut_from_measurement, profile_lut
from stimuli.presentation.presenter import NoDisplayError, Presenter
from stimuli.presentation.render_file import render_file
from stimuli.presentation.rig_profile import RigProfile, RigProfileError, load_profile

__all__ = [
    "NoDisplayError",
    "PresentationLog",
    "Presenter",
    "Rect",
    "RigProfile",
    "RigProfileError",
    "apply_lut",
    "expected_screen",
    "gamma_lut",
    "load_profile",
    "lut_from_measurement",
    "photodiode_rect",
    "profile_lut",
    "render_file",
    "stimulus_rect",
]
