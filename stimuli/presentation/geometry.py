"""Where stimulus pixels land on the screen: the numpy reference of what the display shows.

Screen coordinates: x to the right, y down, origin at the top-left pixel; arrays are indexed
`[y, x]`. A stimulus frame `[H, W]` is mirrored as the profile says (the optics mirror it
back), scaled by an integer factor with nearest-neighbour repetition so that every stimulus
pixel is a sharp `scale x scale` block, and pasted with its top-left corner at the profile's
offset (or centred) on a background-filled canvas `[Hs, Ws]`. The photodiode patch, when
enabled, is a square in one screen corner: white (255) on even stimulus frames, black (0) on
odd ones, at raw output levels (no luminance correction: a photodiode wants full contrast).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stimuli.errors import InputError
from stimuli.presentation.luminance import profile_lut
from stimuli.presentation.rig_profile import RigProfile

PHOTODIODE_ON = 255
PHOTODIODE_OFF = 0


@dataclass(frozen=True)
class Rect:
    """A screen rectangle: top-left `(x, y)` and size `(w, h)` in screen pixels."""

    x: int
    y: int
    w: int
    h: int

    @property
    def slices(self) -> tuple[slice, slice]:
        """`(rows, cols)` slices indexing this rectangle in a `[Hs, Ws]` array."""
        return slice(self.y, self.y + self.h), slice(self.x, self.x + self.w)

    def overlaps(self, other: Rect) -> bool:
        return (self.x < other.x + other.w and other.x < self.x + self.w
                and self.y < other.y + other.h and other.y < self.y + self.h)


def stimulus_rect(profile: RigProfile, height: int, width: int) -> Rect:
    """Screen rectangle of a `[height, width]` stimulus; it must lie inside the screen."""
    if height < 1 or width < 1:
        raise InputError(f"stimulus must be at least 1x1, got {height}x{width}")
    w, h = width * profile.scale, height * profile.scale
    hs, ws = profile.screen_shape
    if profile.offset_x_px is None:
        x, y = (ws - w) // 2, (hs - h) // 2
    else:
        x, y = profile.offset_x_px, profile.offset_y_px
    rect = Rect(x, y, w, h)
    if x < 0 or y < 0 or x + w > ws or y + h > hs:
        raise InputError(
            # Width x height throughout, as the profile's width_px and height_px and X11 say it.
            f"a {width}x{height} px stimulus (width x height) at scale {profile.scale} is {w}x{h} screen px "
            f"at ({x}, {y}) and does not fit the {ws}x{hs} screen of rig {profile.name!r}; "
            "lower the scale, move the offset or use a smaller stimulus")
    patch = photodiode_rect(profile)
    if patch is not None and patch.overlaps(rect):
        raise InputError(
            f"the photodiode patch {patch} overlaps the stimulus rectangle {rect} on rig "
            f"{profile.name!r}: the retina would see it; move the patch or the stimulus")
    return rect


def photodiode_rect(profile: RigProfile) -> Rect | None:
    """Screen rectangle of the photodiode patch, or None when it is disabled."""
    if not profile.photodiode_enabled:
        return None
    s = profile.photodiode_size_px
    hs, ws = profile.screen_shape
    x = 0 if profile.photodiode_corner.endswith("left") else ws - s
    y = 0 if profile.photodiode_corner.startswith("top") else hs - s
    return Rect(x, y, s, s)


def photodiode_level(frame_index: int) -> int:
    """Patch level shown with stimulus frame `frame_index` (alternates, white first)."""
    return PHOTODIODE_ON if frame_index % 2 == 0 else PHOTODIODE_OFF


def orient(frame: np.ndarray, profile: RigProfile) -> np.ndarray:
    """Mirror a frame `[..., H, W]` as the rig's optical path needs."""
    if profile.flip_horizontal:
        frame = frame[..., :, ::-1]
    if profile.flip_vertical:
        frame = frame[..., ::-1, :]
    return frame


def upscale(frame: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour integer upscaling `[..., H, W] -> [..., H*scale, W*scale]`."""
    if scale == 1:
        return frame
    return np.repeat(np.repeat(frame, scale, axis=-2), scale, axis=-1)


def place(levels: np.ndarray, profile: RigProfile, background_level: int,
          frame_index: int | None = 0) -> np.ndarray:
    """Screen image `[Hs, Ws]` uint8 of one frame already in output levels `[H, W]`.

    `frame_index` sets the photodiode patch (None leaves the patch out).
    """
    levels = np.asarray(levels)
    if levels.ndim != 2 or levels.dtype != np.uint8:
        raise InputError(f"frame must be [H, W] uint8, got {list(levels.shape)} {levels.dtype}")
    rect = stimulus_rect(profile, *levels.shape)
    screen = np.full(profile.screen_shape, background_level, dtype=np.uint8)
    screen[rect.slices] = upscale(orient(levels, profile), profile.scale)
    patch = photodiode_rect(profile)
    if patch is not None and frame_index is not None:
        screen[patch.slices] = photodiode_level(frame_index)
    return screen


def expected_screen(frame: np.ndarray, profile: RigProfile, frame_index: int | None = 0) -> np.ndarray:
    """What the screen must show for a designed frame `[H, W]` uint8: `[Hs, Ws]` uint8.

    Applies the profile's luminance correction to the frame and the background, then the
    geometry (mirroring, scaling, offset) and the photodiode patch of `frame_index`.
    """
    frame = np.asarray(frame)
    if frame.dtype != np.uint8:
        raise InputError(f"frame must be uint8 grey levels, got {frame.dtype}")
    lut = profile_lut(profile)
    return place(lut[frame], profile, int(lut[profile.background]), frame_index)
