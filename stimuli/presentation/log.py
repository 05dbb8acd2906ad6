"""What happened during a presentation: when each frame appeared, which were late, what was shown."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stimuli.errors import InputError
from stimuli.presentation.geometry import Rect

# A refresh interval longer than this many periods means the display missed a refresh
# (PsychoPy's own convention for dropped frames).
DROP_THRESHOLD = 1.2


@dataclass(frozen=True, eq=False)
class PresentationLog:
    """Flip log of one `Presenter.present` call with `T` stimulus frames of `N` refreshes each.

    Times are seconds on PsychoPy's clock (`psychopy.logging.defaultClock`, the clock that
    `win.flip()` reports), relative to `clock_origin`, the flip that showed frame 0.

    - `frame_index` `[T]` int64: stimulus frame shown at each entry (0..T-1, in order).
    - `flip_time` `[T]` float64: when each frame appeared (its first flip).
    - `refresh_time` `[T*N]` float64: every flip, frame after frame.
    - `end_time`: the closing flip that took the last frame off the screen.
    - `dropped` `[T]` bool: a refresh interval ending at one of the frame's flips exceeded
      `DROP_THRESHOLD` refresh periods (the frame appeared late or stayed up too long).
    - `photodiode` `[T]` uint8 or None: patch level read from the captured screen.
    - `captured` uint8 or None: the back buffer just before each frame's first flip, the whole
      screen `[T, Hs, Ws]` (`capture_region="screen"`) or the stimulus rectangle
      `[T, H*scale, W*scale]` (`"stimulus"`).
    - `stimulus_rect`: where the stimulus lies on the screen, to crop `captured`.
    """

    frame_index: np.ndarray
    flip_time: np.ndarray
    refresh_time: np.ndarray
    dropped: np.ndarray
    refresh_rate_hz: float
    frame_rate_hz: float
    n_refreshes_per_frame: int
    clock_origin: float
    end_time: float
    stimulus_rect: Rect
    paced: bool
    photodiode: np.ndarray | None = None
    captured: np.ndarray | None = None
    capture_region: str | None = None

    @property
    def n_frames(self) -> int:
        return int(self.frame_index.shape[0])

    @property
    def n_dropped(self) -> int:
        return int(self.dropped.sum())

    def captured_stimulus(self) -> np.ndarray:
        """Captured frames cropped to the stimulus rectangle `[T, H*scale, W*scale]` uint8."""
        if self.captured is None:
            raise InputError("this presentation was not captured (present(..., capture=True))")
        if self.capture_region == "stimulus":
            return self.captured
        rows, cols = self.stimulus_rect.slices
        return self.captured[:, rows, cols]


def find_dropped(refresh_time_abs: np.ndarray, lead_in_time: float, n_per_frame: int,
                 refresh_rate_hz: float) -> np.ndarray:
    """`[T]` bool: frames with a flip interval over `DROP_THRESHOLD` refresh periods.

    `refresh_time_abs` `[T*N]` are absolute flip times; `lead_in_time` is the flip before
    frame 0, so frame 0's own appearance is checked too.
    """
    times = np.concatenate([[lead_in_time], refresh_time_abs])
    late = np.diff(times) > DROP_THRESHOLD / refresh_rate_hz  # [T*N], interval ending at flip k
    return late.reshape(-1, n_per_frame).any(axis=1)
